"""The Modal layer (src/tinycats/remote.py), offline and without a Modal token.

The remote methods run through Modal's ``.local()`` (which runs the ``@modal.enter`` hook too), on
the tiny configs, with temporary folders as the volumes and commits that record what was on disk.
"""

import itertools
import json
import os
import re
import subprocess
import sys
import time
from importlib.util import module_from_spec, spec_from_file_location
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import ClassVar

import pytest

REPO = Path(__file__).resolve().parents[1]
REMOTE = REPO / "src/tinycats/remote.py"
CLASSIFIER_TINY = REPO / "tests/configs/classifier_tiny.yaml"
DIT_TINY = REPO / "tests/configs/dit_tiny.yaml"
TIMEOUT = 300
RUN_DATE = "2026-01-02"

pytestmark = pytest.mark.filterwarnings("ignore:The Runner.* executing locally:UserWarning")


def python(code: str, **env: str) -> subprocess.CompletedProcess:
    """Run Python code in a fresh interpreter, with the TINYCATS_* settings only as given."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TINYCATS_")}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=TIMEOUT, cwd=REPO, env={**clean, **env})  # fmt: skip


IMPORT_REMOTE = f"""
import importlib.util, sys, time
start = time.perf_counter()
spec = importlib.util.spec_from_file_location("remote", {str(REMOTE)!r})
remote = importlib.util.module_from_spec(spec)
sys.modules["remote"] = remote
spec.loader.exec_module(remote)
seconds = time.perf_counter() - start
"""


@pytest.fixture(scope="module")
def remote() -> ModuleType:
    """remote.py imported from its path, as `modal run` imports it (a top-level module)."""
    spec = spec_from_file_location("remote", REMOTE)
    module = module_from_spec(spec)
    sys.modules["remote"] = module
    spec.loader.exec_module(module)
    yield module
    del sys.modules["remote"]


class RecordingCommit:
    """A stand-in for ``Volume.commit`` that records the files under ``root`` at each call."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.snapshots: list[set[str]] = []

    def __call__(self) -> None:
        files = {str(p.relative_to(self.root)) for p in self.root.rglob("*") if p.is_file()}
        self.snapshots.append(files)

    def committed(self) -> set[str]:
        """Every file that was on disk at some commit."""
        return set().union(*self.snapshots)


@pytest.fixture
def storage(remote: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    """Temporary folders as the two volumes, with recording commits, swapped into remote.py."""
    outputs, data = tmp_path / "outputs", tmp_path / "data"
    commits = SimpleNamespace(outputs=RecordingCommit(outputs), data=RecordingCommit(data))
    monkeypatch.setattr(
        remote, "STORAGE", remote.Storage(str(outputs), str(data), commits.outputs, commits.data)
    )
    return SimpleNamespace(outputs=outputs, data=data, commits=commits)


# --- The client side: import cost, settings, validation ---------------------------------------


def test_importing_remote_leaves_torch_lightning_and_torchvision_out() -> None:
    done = python(IMPORT_REMOTE + """
heavy = [m for m in ("torch", "lightning", "torchvision") if m in sys.modules]
print(f"{seconds:.3f} {','.join(heavy) or '-'}")
""")  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    seconds, heavy = done.stdout.split()
    print(f"client-side import of remote.py: {float(seconds):.2f} s")
    assert heavy == "-"


INFO = (
    IMPORT_REMOTE
    + """
import json
info = remote.Runner().fit.info()
print(json.dumps({"gpus": info.gpus, "timeout": info.timeout, "max_retries": info.max_retries,
                  "volumes": {path: mount.name for path, mount in info.volumes.items()},
                  "single_use_containers": info.single_use_containers}))
"""
)


def test_info_shows_the_default_launch_settings() -> None:
    done = python(INFO)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout) == {
        "gpus": [["L4", 1]], "timeout": 6 * 3600, "max_retries": 10,
        "volumes": {"/outputs": "tinycats-outputs", "/data": "tinycats-data"},
        "single_use_containers": True,
    }  # fmt: skip


def test_environment_variables_change_the_launch_settings() -> None:
    done = python(INFO, TINYCATS_GPU="H100:4", TINYCATS_TIMEOUT="3600", TINYCATS_RETRIES="3",
                  TINYCATS_OUTPUTS_VOLUME="my-outputs", TINYCATS_DATA_VOLUME="my-data")  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout) == {
        "gpus": [["H100", 4]], "timeout": 3600, "max_retries": 3,
        "volumes": {"/outputs": "my-outputs", "/data": "my-data"},
        "single_use_containers": True,
    }  # fmt: skip


@pytest.mark.parametrize(
    ("gpu", "timeout", "retries", "message"),
    [
        ("X100", 60, 3, "Unknown GPU 'X100'. Use one of T4, L4"),
        ("H100:9", 60, 3, "N from 1 to 8"),
        ("H100:0", 60, 3, "N from 1 to 8"),
        ("A100:two", 60, 3, "Unknown GPU"),
        ("T4", 0, 3, "outside Modal's range for one attempt, 1 s to 24 h"),
        ("T4", 24 * 3600 + 1, 3, "Set TINYCATS_TIMEOUT"),
        ("T4", 60, -1, "Retries -1 is outside 0 to 10"),
        ("T4", 60, 11, "Set TINYCATS_RETRIES"),
    ],
)
def test_invalid_launch_settings_are_refused_clearly(
    remote, gpu, timeout, retries, message
) -> None:
    with pytest.raises(remote.LaunchError, match=re.escape(message)):
        remote.validate_launch_settings(gpu, timeout, retries)


def test_valid_launch_settings_pass(remote) -> None:
    for gpu in ("T4", "l40s", "A100-80GB", "H100:8", "B200:1"):
        remote.validate_launch_settings(gpu, 1, 0)
    remote.validate_launch_settings("L4", 24 * 3600, 10)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"TINYCATS_GPU": "X100"}, "Unknown GPU 'X100'"),
        ({"TINYCATS_TIMEOUT": "6h"}, "TINYCATS_TIMEOUT='6h' is not a whole number"),
    ],
)
def test_a_bad_setting_in_the_environment_stops_the_import(env, message) -> None:
    done = python(IMPORT_REMOTE, **env)
    assert done.returncode != 0
    assert "LaunchError" in done.stderr and message in done.stderr


def test_modal_run_resolves_the_entrypoint_and_stops_only_at_the_missing_token(tmp_path) -> None:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MODAL_", "TINYCATS_"))} | {"HOME": str(tmp_path)}  # fmt: skip
    modal = [str(Path(sys.executable).parent / "modal"), "run"]
    for target, expected in (("fit", "Token missing"), ("nope", "Could not find 'nope'")):
        done = subprocess.run([*modal, f"src/tinycats/remote.py::{target}"], capture_output=True,
                              text=True, timeout=TIMEOUT, cwd=REPO, env=env)  # fmt: skip
        assert done.returncode != 0
        assert expected in done.stdout + done.stderr, (done.stdout + done.stderr)[-2000:]


# --- The local entrypoints: checks before launch, and what they print ------------------------


def test_check_config_accepts_the_shipped_configs(remote) -> None:
    for name in ("classifier.yaml", "classifier_breeds.yaml"):
        path = REPO / "configs" / name
        remote.check_config(path.read_text(), str(path), [])


@pytest.mark.parametrize(
    ("text", "overrides", "message"),
    [
        ("model: [unclosed", [], "is not valid YAML"),
        ("- a list", [], "must be a YAML mapping"),
        ("model: {class_path: tinycats.models.CatClassifier}\ndata: {}\n", [], "no trainer section"),
        ("model: {class_path: torch.nn.Linear}\ndata: {}\ntrainer: {}\n", [],
         "not a tinycats model; use one of tinycats.models.CatClassifier"),
        ("model: {class_path: tinycats.models.CatClassifier}\ndata: {source: ../photos}\n"
         "trainer: {}\n", [], "modal volume put tinycats-data ../photos photos"),
        ("model: {class_path: tinycats.models.CatClassifier}\ndata: {}\ntrainer: {}\n",
         ["--data.source", "./mine"], "'./mine' is a folder on this computer"),
        ("model: {class_path: tinycats.models.CatClassifier}\ndata: {}\ntrainer: {}\n",
         ["--run.name=x"], "--overrides may not set --run.name=x"),
    ],
)  # fmt: skip
def test_check_config_refuses_what_cannot_run_on_modal(remote, text, overrides, message) -> None:
    with pytest.raises(remote.LaunchError, match=re.escape(message)):
        remote.check_config(text, "my.yaml", overrides)


def test_run_identity_is_fixed_at_launch(remote) -> None:
    named = {"run": {"name": "cat-vs-dog"}}
    today = time.strftime("%Y-%m-%d")
    assert remote.run_identity(named, "configs/classifier.yaml", "", "") == ("cat-vs-dog", today)
    assert remote.run_identity(named, "c.yaml", "mine", RUN_DATE) == ("mine", RUN_DATE)
    assert remote.run_identity({}, "configs/dit.yaml", "", "") == ("dit", today)
    with pytest.raises(remote.LaunchError, match="must be letters"):
        remote.run_identity({}, "c.yaml", "../up", "")
    with pytest.raises(remote.LaunchError, match="must be YYYY-MM-DD"):
        remote.run_identity({}, "c.yaml", "ok", "02/01/2026")


def fake_runner(result: dict, calls: list) -> SimpleNamespace:
    """Stands in for remote.Runner: records the remote call's arguments and returns ``result``."""

    def call(*args):
        calls.append(args)
        return SimpleNamespace(get=lambda: result)

    method = SimpleNamespace(spawn=call, remote=lambda *args: call(*args).get())
    return lambda: SimpleNamespace(fit=method, sample=method)


def test_fit_entrypoint_sends_the_config_and_prints_how_to_continue(remote, monkeypatch, capsys):
    summary = {"status": "finished", "run_dir": "/outputs/checkpoints/classifier/2026-01-02/cats",
               "global_step": 800, "metrics": {"val/acc": 0.99}}  # fmt: skip
    calls = []
    monkeypatch.chdir(REPO)
    monkeypatch.setattr(remote, "Runner", fake_runner(summary, calls))
    remote.fit(config="configs/classifier.yaml", name="cats", date=RUN_DATE,
               overrides="--trainer.max_epochs=1")  # fmt: skip
    config_text = (REPO / "configs/classifier.yaml").read_text()
    assert calls == [(config_text, ["--trainer.max_epochs=1"], "cats", RUN_DATE)]
    printed = capsys.readouterr().out
    assert (
        "modal run --detach src/tinycats/remote.py::fit --config configs/classifier.yaml "
        "--name cats --date 2026-01-02 --overrides=--trainer.max_epochs=1"
    ) in printed
    assert "modal volume get tinycats-outputs checkpoints/classifier/2026-01-02/cats" in printed
    assert "val/acc=0.9900" in printed  # fmt: skip


def test_fit_entrypoint_stops_before_launching_when_the_config_is_wrong(remote, monkeypatch):
    calls = []
    monkeypatch.chdir(REPO)
    monkeypatch.setattr(remote, "Runner", fake_runner({}, calls))
    with pytest.raises(SystemExit, match=r"tinycats: Config file nope\.yaml does not exist"):
        remote.fit(config="nope.yaml")
    with pytest.raises(SystemExit, match="is a folder on this computer"):
        remote.fit(config="configs/classifier_sample.yaml")
    assert calls == []


def test_fit_entrypoint_reports_a_refused_run(remote, monkeypatch):
    refused = {"status": "refused", "error": "--resume 'x' is neither auto, latest, never"}
    monkeypatch.chdir(REPO)
    monkeypatch.setattr(remote, "Runner", fake_runner(refused, []))
    with pytest.raises(SystemExit, match="the run was refused: --resume 'x'"):
        remote.fit(config="configs/classifier.yaml")


def test_sample_entrypoint_writes_the_png(remote, monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(remote, "Runner", fake_runner({"status": "drawn", "png": b"PNG"}, calls))
    out = tmp_path / "cats.png"
    remote.sample(run="checkpoints/dit/2026-01-02/cats", breed="Bengal", out=str(out))
    assert out.read_bytes() == b"PNG"
    assert calls == [("checkpoints/dit/2026-01-02/cats", "Bengal", 8, 50, 3.0, 0)]
    with pytest.raises(SystemExit, match="must be a path inside the tinycats-outputs volume"):
        remote.sample(run="/etc")


# --- The container side, through .local() -----------------------------------------------------


def test_fit_commits_resumes_after_a_kill_and_returns_a_finished_run(
    remote, storage, pets_sample, caplog
) -> None:
    config = CLASSIFIER_TINY.read_text()
    overrides = [f"--data.source={pets_sample}", "--trainer.max_steps=4"]  # frugal: 4 + 2 steps
    first = remote.Runner().fit.local(config, overrides, "tiny", RUN_DATE)

    run = storage.outputs / "checkpoints/classifier" / RUN_DATE / "tiny"
    assert first["status"] == "finished" and first["global_step"] == 4
    assert Path(first["run_dir"]) == run
    # The data volume is committed once, when the image cache is built.
    assert len(storage.commits.data.snapshots) == 1
    assert any(name.startswith("cache/images-24px") for name in storage.commits.data.snapshots[0])
    # Every checkpoint, and finally the summary, reached the outputs volume through a commit.
    steps = [f"step={s:08d}.ckpt" for s in (2, 4)]
    prefix = f"checkpoints/classifier/{RUN_DATE}/tiny/"
    committed = storage.commits.outputs.committed()
    assert {prefix + name for name in [*steps, "last.ckpt", "summary.json"]} <= committed
    assert prefix + "summary.json" in storage.commits.outputs.snapshots[-1]

    # A kill right after the step-2 checkpoint: no summary, no later checkpoints.
    uninterrupted = (run / "last.ckpt").read_bytes()
    for name in ("summary.json", "last.ckpt", steps[-1]):
        (run / name).unlink()
    storage.commits.outputs.snapshots.clear()
    storage.commits.data.snapshots.clear()
    caplog.set_level("INFO", logger="tinycats")
    resumed = remote.Runner().fit.local(config, overrides, "tiny", RUN_DATE)
    assert f"Resuming from {run / steps[0]}" in caplog.text
    assert resumed["status"] == "finished" and resumed["global_step"] == 4
    assert storage.commits.data.snapshots == []  # the cache was reused
    assert prefix + "summary.json" in storage.commits.outputs.snapshots[-1]
    assert_same_weights(uninterrupted, (run / "last.ckpt").read_bytes())

    # The finished run: the same summary at once, nothing trained, nothing committed.
    storage.commits.outputs.snapshots.clear()
    # A time stamp set in the past: a rewrite shows at any clock resolution.
    os.utime(run / "last.ckpt", ns=(10**18, 10**18))
    before = (run / "last.ckpt").stat().st_mtime_ns
    again = remote.Runner().fit.local(config, overrides, "tiny", RUN_DATE)
    assert again == resumed
    assert storage.commits.outputs.snapshots == [] and storage.commits.data.snapshots == []
    assert (run / "last.ckpt").stat().st_mtime_ns == before


def assert_same_weights(expected: bytes, actual: bytes) -> None:
    import io

    import torch

    load = lambda data: torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)  # noqa: E731
    expected_state, actual_state = load(expected)["state_dict"], load(actual)["state_dict"]
    assert expected_state.keys() == actual_state.keys()
    for key, value in expected_state.items():
        torch.testing.assert_close(actual_state[key], value, rtol=0, atol=0, msg=key)


def test_a_config_that_cannot_run_is_refused_not_retried(remote, storage, pets_sample) -> None:
    config = CLASSIFIER_TINY.read_text()
    source = f"--data.source={pets_sample}"
    typo = remote.Runner().fit.local(config, [source, "--trainer.max_stepz=3"], "tiny", RUN_DATE)
    assert typo == {"status": "refused", "error": remote._REJECTED}
    missing = remote.Runner().fit.local(
        config, [source, "--resume=/no/such.ckpt"], "tiny", RUN_DATE
    )
    assert missing["status"] == "refused" and "/no/such.ckpt" in missing["error"]


def test_a_stop_by_signal_fails_the_attempt_so_modal_retries(remote, storage, monkeypatch) -> None:
    import tinycats.cli

    def stopped(*args, **kwargs):
        raise SystemExit(tinycats.cli.EXIT_INTERRUPTED)

    monkeypatch.setattr(tinycats.cli, "run_cli", stopped)
    with pytest.raises(SystemExit) as stop:
        remote.Runner().fit.local(CLASSIFIER_TINY.read_text(), [], "tiny", RUN_DATE)
    assert stop.value.code == 143


@pytest.mark.slow
def test_sample_draws_a_png_from_a_trained_dit(remote, storage, pets_sample) -> None:
    trained = remote.Runner().fit.local(
        DIT_TINY.read_text(), [f"--data.source={pets_sample}"], "tiny", RUN_DATE
    )
    assert trained["status"] == "finished"
    run = f"checkpoints/dit/{RUN_DATE}/tiny"
    drawn = remote.Runner().sample.local(run, "Bengal", 2, 2, 3.0, 0)
    assert drawn["status"] == "drawn" and drawn["png"].startswith(b"\x89PNG\r\n\x1a\n")
    refused = remote.Runner().sample.local(run, "Tabby", 2, 2, 3.0, 0)
    assert refused["status"] == "refused" and "Unknown breed 'Tabby'" in refused["error"]


class FakeTrainingChild:
    """Stands in for the ``python -m tinycats fit`` subprocess: when waited for, it writes what a
    run writes last (last.ckpt, then summary.json) and exits with ``returncode``."""

    returncode = 0
    commands: ClassVar[list[list[str]]] = []

    def __init__(self, command: list[str], env: dict[str, str]) -> None:
        self.commands.append(command)
        self.args = dict(itertools.pairwise(command))

    def wait(self, timeout: float | None = None) -> int:
        run = Path(self.args["--run.outputs"]) / "checkpoints/classifier"
        run = run / self.args["--run.date"] / self.args["--run.name"]
        run.mkdir(parents=True)
        (run / "last.ckpt").write_bytes(b"weights")
        if self.returncode == 0:
            (run / "summary.json").write_text(json.dumps({"status": "finished", "global_step": 8}))
        return self.returncode


@pytest.mark.parametrize("returncode", [0, 1])
def test_several_gpus_commit_both_volumes_once_the_subprocess_has_ended(
    remote, storage, monkeypatch, returncode: int
) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(FakeTrainingChild, "returncode", returncode)
    monkeypatch.setattr(FakeTrainingChild, "commands", [])
    monkeypatch.setattr(remote.subprocess, "Popen", FakeTrainingChild)
    fit = remote.Runner().fit.local
    if returncode:
        with pytest.raises(RuntimeError, match="exited with status 1"):
            fit(CLASSIFIER_TINY.read_text(), [], "tiny", RUN_DATE)
    else:
        assert fit(CLASSIFIER_TINY.read_text(), [], "tiny", RUN_DATE)["global_step"] == 8
    (command,) = FakeTrainingChild.commands
    assert command[1:4] == ["-m", "tinycats", "fit"]
    prefix = f"checkpoints/classifier/{RUN_DATE}/tiny/"
    written = {prefix + "last.ckpt"} | ({prefix + "summary.json"} if returncode == 0 else set())
    # One commit of each volume, after the child ended (whatever its status): all it wrote is in.
    assert storage.commits.outputs.snapshots == [written]
    assert len(storage.commits.data.snapshots) == 1


@pytest.mark.slow
def test_several_gpus_train_in_a_subprocess_and_commit_when_it_ends(
    remote, storage, pets_sample, monkeypatch
) -> None:
    import torch

    # Pretend the container has two GPUs, and let Lightning run its DDP on two CPU processes.
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(remote.subprocess, "Popen", BoundedPopen)
    ddp = ["--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.strategy=ddp"]
    summary = remote.Runner().fit.local(
        CLASSIFIER_TINY.read_text(), [f"--data.source={pets_sample}", *ddp], "tiny", RUN_DATE
    )
    assert summary["status"] == "finished" and summary["global_step"] == 8
    assert len(storage.commits.outputs.snapshots) == len(storage.commits.data.snapshots) == 1
    prefix = f"checkpoints/classifier/{RUN_DATE}/tiny/"
    assert {prefix + "last.ckpt", prefix + "summary.json"} <= storage.commits.outputs.snapshots[0]


class BoundedPopen(subprocess.Popen):
    """A Popen whose unbounded wait() gives up after TIMEOUT s: a DDP hang fails, not stalls, the test."""

    def wait(self, timeout: float | None = None) -> int:
        try:
            return super().wait(timeout=timeout or TIMEOUT)
        except subprocess.TimeoutExpired:
            self.kill()  # rank 0; the other rank exits when its peer is gone
            super().wait()
            raise
