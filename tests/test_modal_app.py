"""The Modal app as Modal builds it (client 1.6.4, offline): the files the image ships, and what
each function's container sees. These run Modal's own objects, not `.local()` calls."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REMOTE = REPO / "src/tinycats/remote.py"
TIMEOUT = 300

IMPORT_REMOTE = f"""
import importlib.util, json, sys, warnings
warnings.simplefilter("ignore")
spec = importlib.util.spec_from_file_location("remote", {str(REMOTE)!r})
remote = importlib.util.module_from_spec(spec)
sys.modules["remote"] = remote
spec.loader.exec_module(remote)
from modal._utils.async_utils import synchronizer
"""

# Every Modal function of the app, with the environment its container gets from `env=` (the
# secrets built from a dict: Modal's `Secret.from_dict` keeps a loader of that dict) and what
# the function asks for: its volumes' names and its timeout.
FUNCTIONS = (
    IMPORT_REMOTE
    + """
def container_env(function):
    env = {}
    for secret in synchronizer._translate_in(function)._spec.secrets:
        env.update(secret._load_env_dict())
    return env

found = {}
for name in ("drive", "tensorboard"):
    function = getattr(remote, name)
    found[name] = {"env": container_env(function), "timeout": function.info().timeout}
for name in ("Runner", "Server"):
    service = synchronizer._translate_in(getattr(remote, name))._get_class_service_function()
    found[name] = {"env": container_env(service), "timeout": None}
print(json.dumps(found))
"""
)

# What a module-level setting of remote.py is in the process that imports it.
SETTINGS = (
    IMPORT_REMOTE
    + """
info = remote.Runner().fit.info()
print(json.dumps({
    "timeout": info.timeout,
    "retries": info.max_retries,
    "gpus": info.gpus,
    "volumes": {path: volume.name for path, volume in info.volumes.items()},
}))
"""
)


def python(code: str, env: dict[str, str]) -> dict:
    """Run ``code`` in a fresh interpreter whose TINYCATS_* settings are exactly ``env``'s."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TINYCATS_")}
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        cwd=REPO,
        env={**clean, **env},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


LAUNCH = {
    "TINYCATS_GPU": "H100:2",
    "TINYCATS_TIMEOUT": "3600",
    "TINYCATS_RETRIES": "20",
    "TINYCATS_OUTPUTS_VOLUME": "my-outputs",
    "TINYCATS_DATA_VOLUME": "my-data",
}


def test_every_container_sees_the_settings_of_the_launch_and_nothing_else() -> None:
    # The launching shell's settings, as `modal run` would read them...
    functions = python(FUNCTIONS, LAUNCH)
    launched = python(SETTINGS, LAUNCH)
    assert launched["timeout"] == 3600 and launched["retries"] == 20
    assert launched["volumes"] == {"/outputs": "my-outputs", "/data": "my-data"}
    # ...and each container, which imports remote.py again with only its function's `env=`.
    for name, function in functions.items():
        assert python(SETTINGS, function["env"]) == launched, name
    assert functions["drive"]["timeout"] == 24 * 3600


def mounted_files(image) -> dict[str, Path]:
    """Every file the image's mounts upload (container path → local path), found with Modal's
    own objects: the image's dependencies down to its `_Mount`s, and their entries' uploads."""
    from modal._utils.async_utils import synchronizer
    from modal.mount import _Mount

    files, stack = {}, [synchronizer._translate_in(image)]
    while stack:
        dep = stack.pop()
        if isinstance(dep, _Mount):
            for entry in dep._entries:
                files |= {str(remote): Path(local) for local, remote in entry.get_files_to_upload()}
        else:
            stack.extend(dep._deps())
    return files


@pytest.fixture(scope="module")
def image_files() -> dict[str, Path]:
    from importlib.util import module_from_spec, spec_from_file_location

    spec = spec_from_file_location("remote_for_image", REMOTE)
    module = module_from_spec(spec)
    spec.loader.exec_module(module)
    return mounted_files(module.image)


def test_the_image_ships_every_file_the_package_reads(image_files) -> None:
    package = REPO / "src/tinycats"
    needed = {
        f"/root/tinycats/{path.relative_to(package)}"
        for path in package.rglob("*")
        if path.suffix in (".py", ".html") and "__pycache__" not in path.parts
    }
    assert needed <= set(image_files), sorted(needed - set(image_files))
    assert "/root/configs/classifier.yaml" in image_files


def copy_image(files: dict[str, Path], root: Path) -> Path:
    """Lay exactly the image's files out under ``root`` as the container's /root."""
    for remote, local in files.items():
        target = root / Path(remote).relative_to("/root")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(local, target)
    return root


SERVE_FROM_IMAGE = """
import sys, tempfile
from pathlib import Path
import tinycats
assert Path(tinycats.__file__).is_relative_to(sys.argv[1]), tinycats.__file__
from fastapi.testclient import TestClient
from tinycats.commands.serve import load_store
from tinycats.commands.serve_api import build_app
from tinycats.commands.serve_models import Limits
store = load_store(Path(tempfile.mkdtemp()), "newest", "newest", Limits(), require_a_run=False)
page = TestClient(build_app(store)).get("/")
print(page.status_code, "<html" in page.text.lower())
"""


def test_the_serving_app_starts_from_the_image_files_alone(image_files, tmp_path) -> None:
    root = copy_image(image_files, tmp_path / "root")
    env = {**os.environ, "PYTHONPATH": str(root)}
    done = subprocess.run(
        [sys.executable, "-c", SERVE_FROM_IMAGE, str(root)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        cwd=root,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["200", "True"]


@pytest.mark.slow
def test_a_run_trains_from_the_image_files_alone(image_files, tmp_path, pets_sample) -> None:
    root = copy_image(image_files, tmp_path / "root")
    config = REPO / "tests/configs/classifier_tiny.yaml"
    flags = [f"--run.outputs={tmp_path / 'outputs'}", f"--data.root={tmp_path / 'data'}"]
    flags += [f"--data.source={pets_sample}", "--trainer.max_steps=2", "--run.date=2026-01-02"]
    done = subprocess.run(
        [sys.executable, "-m", "tinycats", "fit", "-c", str(config), *flags],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "outputs/checkpoints/classifier/2026-01-02/tiny/summary.json").is_file()
