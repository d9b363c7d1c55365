"""Serving on Modal within a budget, offline and without a token, quick: the settings Modal's own
objects hold for ``Server`` and ``tensorboard`` (containers, warm window, concurrency, auth), the
checks made before a deploy, the worst case it prints, and the per-client budget in public mode."""

import json
import os
import re
import subprocess
import sys
from importlib.util import module_from_spec, spec_from_file_location
from pathlib import Path

import pytest

from tinycats import launch

REPO = Path(__file__).resolve().parents[1]
REMOTE = REPO / "src/tinycats/remote.py"
TIMEOUT = 120

# Function.info() does not show the autoscaler offline; Modal 1.6.4 keeps the AutoscalerSettings
# message it sends to its server at deploy (`modal/_functions.py`, `_Function._from_local`) in
# the function's loader. Reading it there checks what Modal would be told, not our arguments.
SETTINGS = f"""
import importlib.util, inspect, json, sys
from modal._utils.async_utils import synchronizer

spec = importlib.util.spec_from_file_location("remote", {str(REMOTE)!r})
remote = importlib.util.module_from_spec(spec)
sys.modules["remote"] = remote
spec.loader.exec_module(remote)

def autoscaler(function):
    loader = synchronizer._translate_in(function)._load
    return inspect.getclosurevars(loader).nonlocals["autoscaler_settings"]

server = autoscaler(remote.Server._get_class_service_function())
board = autoscaler(remote.tensorboard)
info = remote.Server().web.info()
board_info = remote.tensorboard.info()
print(json.dumps({{
    "gpus": info.gpus, "single_use_containers": info.single_use_containers,
    "volumes": {{path: mount.name for path, mount in info.volumes.items()}},
    "methods": sorted(info.method_names), "max_inputs": info.concurrency_info.max_inputs,
    "web_public": info.method_details["web"].unauthenticated,
    "scaledown_window": server.scaledown_window,
    "max_containers": server.max_containers,
    "tensorboard_public": board_info.web_info.unauthenticated,
    "tensorboard_volumes": {{path: mount.name for path, mount in board_info.volumes.items()}},
    "tensorboard_max_containers": board.max_containers,
}}))
"""


def import_remote(*argv: str, **env: str) -> subprocess.CompletedProcess:
    """Run SETTINGS in a fresh interpreter with ``sys.argv`` and only these TINYCATS_* settings."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TINYCATS_")}
    code = f"import sys; sys.argv = {['modal', *argv]!r}\n" + SETTINGS
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        cwd=REPO,
        env=clean | env,
    )


def modal_settings(**env: str) -> dict:
    done = import_remote("run", **env)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


def test_the_modal_server_is_bounded_warm_snapshotted_and_behind_proxy_auth_by_default() -> None:
    assert modal_settings() == {
        "gpus": [["L4", 1]],
        "single_use_containers": False,
        "volumes": {"/outputs": "tinycats-outputs"},
        "methods": ["sample", "web"],
        "max_inputs": 8,
        "web_public": False,
        "scaledown_window": 300,
        "max_containers": 1,
        "tensorboard_public": False,
        "tensorboard_volumes": {"/outputs": "tinycats-outputs"},
        "tensorboard_max_containers": 1,
    }


def test_modal_serving_settings_come_from_the_environment() -> None:
    settings = modal_settings(
        TINYCATS_SERVE_GPU="T4",
        TINYCATS_SERVE_WARM_S="60",
        TINYCATS_SERVE_PUBLIC="1",
        TINYCATS_SERVE_MAX_CONTAINERS="3",
    )
    assert settings["gpus"] == [["T4", 1]] and settings["scaledown_window"] == 60
    assert settings["web_public"] is True and settings["tensorboard_public"] is True
    assert settings["max_containers"] == 3 and settings["tensorboard_max_containers"] == 1
    assert modal_settings(TINYCATS_SERVE_GPU="")["gpus"] == []


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"TINYCATS_SERVE_WARM_S": "1"}, "outside Modal's warm window of 2 to 3600 s"),
        ({"TINYCATS_SERVE_GPU": "X100"}, "TINYCATS_SERVE_GPU='X100': Unknown GPU"),
        (
            {"TINYCATS_SERVE_MAX_CONTAINERS": "0"},
            "TINYCATS_SERVE_MAX_CONTAINERS=0 would not bound the number of serving containers: "
            "set a whole number of at least 1",
        ),
        (
            {"TINYCATS_SERVE_MAX_CONTAINERS": "two"},
            "TINYCATS_SERVE_MAX_CONTAINERS='two' is not a whole number",
        ),
        (
            {"TINYCATS_SERVE_DRAWS_PER_MIN": "-1"},
            "TINYCATS_SERVE_DRAWS_PER_MIN=-1 is negative: set 0 for no limit",
        ),
        (
            {"TINYCATS_SERVE_REQUESTS_PER_MIN": "-5"},
            "TINYCATS_SERVE_REQUESTS_PER_MIN=-5 is negative",
        ),
    ],
)
def test_bad_modal_serving_settings_stop_the_import(env, message) -> None:
    done = import_remote("run", **env)
    assert done.returncode != 0 and message in done.stderr, done.stderr[-2000:]


def test_deploy_prints_the_worst_case_cost_an_hour() -> None:
    deployed = import_remote("deploy", TINYCATS_SERVE_MAX_CONTAINERS="2")
    assert deployed.returncode == 0, deployed.stderr[-2000:]
    assert deployed.stdout.startswith(
        "tinycats: Server costs at most 2 × L4 at $0.80/h = $1.60 an hour while requests keep "
        "them warm (list price read 2026-11-29; CPU and memory extra).\n"
    )
    assert not import_remote("run").stdout.startswith("tinycats:")  # training launches: silent


@pytest.mark.parametrize(
    ("gpu", "containers", "said"),
    [
        ("H100:2", 3, "at most 3 × H100:2 at $7.90/h = $23.70 an hour"),
        ("h100!", 1, "at most 1 × h100! at $3.95/h = $3.95 an hour"),
        ("B200+", 1, "no price for B200+ in tinycats' table: see modal.com/pricing"),
        ("", 2, "at most 2 CPU container(s) of Server"),
    ],
)
def test_the_worst_case_is_containers_times_the_gpu_price(gpu, containers, said) -> None:
    assert said in launch.serving_cost(gpu, containers)


def test_the_docs_show_the_price_table_and_the_default_deployments_worst_case() -> None:
    modal_page = (REPO / "docs" / "modal.md").read_text()
    table = modal_page.split("## Choose a GPU", 1)[1].split("\n\n")[2]
    shown = {}
    for row in table.splitlines()[2:]:
        names, _, prices = (cell.strip() for cell in row.strip("|").split("|")[:3])
        for name, price in zip(re.findall(r"`([^`]+)`", names), prices.split(" / "), strict=True):
            shown[name] = float(price)
    assert shown == {k: v for k, v in launch.GPU_DOLLARS_PER_HOUR.items() if k in shown}
    assert set(launch.GPU_DOLLARS_PER_HOUR) - set(shown) == {"A100", "H100!"}  # named in prose
    worst = launch.gpu_dollars_per_hour("L4") * 1  # the defaults: one L4 container
    serve_page = (REPO / "docs" / "serve.md").read_text()
    assert f"**${worst:.2f} an hour**" in serve_page.split("### What it may cost")[1]


# --- The public deployment's budget, through the Modal app (a `.local()` call) -------------------


@pytest.fixture
def remote_with(monkeypatch, tmp_path):
    """remote.py imported with these TINYCATS_* settings, an empty folder as its outputs volume."""

    def load(**env: str):
        for name in [k for k in os.environ if k.startswith("TINYCATS_")]:
            monkeypatch.delenv(name)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        spec = spec_from_file_location("remote", REMOTE)
        module = module_from_spec(spec)
        monkeypatch.setitem(sys.modules, "remote", module)
        spec.loader.exec_module(module)
        outputs = str(tmp_path)
        module.STORAGE = module.attempt.Storage(outputs, outputs, lambda: None, lambda: None)
        return module

    return load


@pytest.mark.filterwarnings("ignore:The Server.* executing locally:UserWarning")
@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
def test_a_public_deployment_refuses_a_client_over_its_budget(remote_with) -> None:
    from fastapi.testclient import TestClient

    public = remote_with(TINYCATS_SERVE_PUBLIC="1", TINYCATS_SERVE_REQUESTS_PER_MIN="2")
    web = public.Server().web.local()
    statuses = [TestClient(web).get("/api/health").status_code for _ in range(3)]
    assert statuses == [200, 200, 429]
    other = TestClient(web, client=("203.0.113.7", 443))
    assert other.get("/api/health").status_code == 200
    # Behind proxy auth only the workspace's tokens get in: no per-client budget.
    private = remote_with(TINYCATS_SERVE_REQUESTS_PER_MIN="2").Server().web.local()
    assert {TestClient(private).get("/api/health").status_code for _ in range(3)} == {200}
