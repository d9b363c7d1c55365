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
from dataclasses import replace
from importlib.util import module_from_spec, spec_from_file_location
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import ClassVar

import pytest

from tinycats import attempt
from tinycats.attempt import Launch
from tinycats.launch import attempt_end_s as ATTEMPT_END_S
from tinycats.runs import ledger, ledger_keeper

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
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        cwd=REPO,
        env={**clean, **env},
    )


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


def fit_local(remote: ModuleType, config: str, overrides: list[str], *identity: str) -> dict:
    """`Runner.fit` run by `.local()` for the launch of ``config`` (name, date, start, today)."""
    job = Launch(config, tuple(overrides), *identity)
    return remote.Runner().fit.local(job, "one-call")


def same_run(result: dict, other: dict) -> bool:
    """Whether two results are of the same run, alike but for the attempts they count."""
    facts = ("attempts", "run_bytes")
    return {k: v for k, v in result.items() if k not in facts} == {
        k: v for k, v in other.items() if k not in facts
    }


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
        remote, "STORAGE", attempt.Storage(str(outputs), str(data), commits.outputs, commits.data)
    )
    # The config's step cadence, so the tests know which step files exist (the Young–Daly
    # cadence that Modal runs use by default has its own tests).
    monkeypatch.setattr(remote, "SETTINGS", replace(remote.SETTINGS, preemption_minutes=0))
    return SimpleNamespace(outputs=outputs, data=data, commits=commits)


# --- The client side: import cost, settings, validation ---------------------------------------


def test_importing_remote_leaves_torch_lightning_and_torchvision_out() -> None:
    done = python(
        IMPORT_REMOTE
        + """
heavy = [m for m in ("torch", "lightning", "torchvision") if m in sys.modules]
print(f"{seconds:.3f} {','.join(heavy) or '-'}")
"""
    )
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
        "gpus": [["L4", 1]],
        "timeout": 6 * 3600,
        "max_retries": 10,
        "volumes": {"/outputs": "tinycats-outputs", "/data": "tinycats-data"},
        "single_use_containers": True,
    }


def test_environment_variables_change_the_launch_settings() -> None:
    done = python(
        INFO,
        TINYCATS_GPU="H100:4",
        TINYCATS_TIMEOUT="3600",
        TINYCATS_RETRIES="3",
        TINYCATS_OUTPUTS_VOLUME="my-outputs",
        TINYCATS_DATA_VOLUME="my-data",
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout) == {
        "gpus": [["H100", 4]],
        "timeout": 3600,
        "max_retries": 3,
        "volumes": {"/outputs": "my-outputs", "/data": "my-data"},
        "single_use_containers": True,
    }


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


BLOCK = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {blocked!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}")
sys.meta_path.insert(0, Block())
"""


def test_without_the_project_installed_the_launch_says_how_to_install_it() -> None:
    done = python(BLOCK.format(blocked=("tinycats",)) + IMPORT_REMOTE)
    assert done.returncode != 0
    assert "cannot import the tinycats package" in done.stderr and "pip install -e ." in done.stderr


def test_without_pyyaml_the_config_check_says_how_to_install_it() -> None:
    done = python(
        BLOCK.format(blocked=("yaml",))
        + IMPORT_REMOTE
        + """
try:
    remote.launch.check_config("model: {}", "c.yaml", [], "/data", "tinycats-data")
except remote.LaunchError as err:
    print(err)
"""
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "PyYAML is missing" in done.stdout and "pip install -e ." in done.stdout


def test_modal_run_resolves_the_entrypoint_and_stops_only_at_the_missing_token(tmp_path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MODAL_", "TINYCATS_"))} | {
        "HOME": str(tmp_path)
    }
    modal = [str(Path(sys.executable).parent / "modal"), "run"]
    for target, expected in (("fit", "Token missing"), ("nope", "Could not find 'nope'")):
        done = subprocess.run(
            [*modal, f"src/tinycats/remote.py::{target}"],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            cwd=REPO,
            env=env,
        )
        assert done.returncode != 0
        assert expected in done.stdout + done.stderr, (done.stdout + done.stderr)[-2000:]


# --- The local entrypoints: checks before launch, and what they print ------------------------


def fake_runner(result: dict, calls: list) -> SimpleNamespace:
    """Stands in for remote.Runner (or remote.drive): records the arguments, returns ``result``."""

    def call(*args):
        calls.append(args)
        return SimpleNamespace(get=lambda: result)

    method = SimpleNamespace(spawn=call, remote=lambda *args: call(*args).get())
    return lambda: SimpleNamespace(fit=method, sample=method)


def fake_drive(result: dict, calls: list) -> SimpleNamespace:
    return fake_runner(result, calls)().fit


FINISHED = {
    "status": "finished",
    "run_dir": "/outputs/checkpoints/classifier/2026-01-02/cats",
    "global_step": 800,
    "metrics": {"val/acc": 0.99},
    "attempts": 3,
    "run_bytes": 80_000_000,
    "run_files": ["last.ckpt", "metrics.csv", "summary.json"],
}


def test_fit_entrypoint_sends_the_config_and_prints_how_to_continue(remote, monkeypatch, capsys):
    calls = []
    monkeypatch.chdir(REPO)
    monkeypatch.setattr(remote, "drive", fake_drive(FINISHED, calls))
    remote.fit(
        config="configs/classifier.yaml",
        name="cats",
        date=RUN_DATE,
        overrides="--trainer.max_epochs=1 --resume=checkpoints/a/last.ckpt",
    )
    config_text = (REPO / "configs/classifier.yaml").read_text()
    today = time.strftime("%Y-%m-%d")
    job = Launch(
        config_text, ("--trainer.max_epochs=1",), "cats", RUN_DATE, "checkpoints/a/last.ckpt", today
    )
    assert calls == [(job,)]
    printed = capsys.readouterr().out
    assert (
        "modal run --detach src/tinycats/remote.py::fit --config configs/classifier.yaml "
        "--name cats --date 2026-01-02 --overrides='--trainer.max_epochs=1 "
        "--resume=checkpoints/a/last.ckpt'"
    ) in printed
    assert "modal app logs -f " in printed and "modal app stop " in printed
    assert (
        "mkdir -p outputs/checkpoints/classifier/2026-01-02 && modal volume get tinycats-outputs "
        "checkpoints/classifier/2026-01-02/cats outputs/checkpoints/classifier/2026-01-02"
    ) in printed
    assert "in 3 attempt(s): val/acc=0.9900" in printed
    assert "only last.ckpt" not in printed  # 80 MB: the whole run is fetched


def test_fit_entrypoint_continues_a_run_by_its_name_alone(remote, monkeypatch, capsys):
    calls = []
    monkeypatch.chdir(REPO)
    monkeypatch.setattr(remote, "drive", fake_drive(FINISHED, calls))
    remote.fit(config="configs/classifier.yaml")
    (job,) = calls[0]
    assert (job.name, job.date) == (
        "cat-vs-dog",
        "",
    )  # the container finds the newest run of the name
    assert "--config configs/classifier.yaml --name cat-vs-dog\n" in capsys.readouterr().out


def test_fit_entrypoint_stops_before_launching_when_the_config_is_wrong(remote, monkeypatch):
    calls = []
    monkeypatch.chdir(REPO)
    monkeypatch.setattr(remote, "drive", fake_drive({}, calls))
    with pytest.raises(SystemExit, match=r"tinycats: Config file nope\.yaml does not exist"):
        remote.fit(config="nope.yaml")
    with pytest.raises(SystemExit, match="is a folder on this computer"):
        remote.fit(config="configs/classifier_sample.yaml")
    with pytest.raises(SystemExit, match="--resume never cannot survive a retry"):
        remote.fit(config="configs/classifier.yaml", overrides="--resume never")
    assert calls == []


@pytest.mark.parametrize(
    ("result", "message"),
    [
        (
            {"status": "refused", "error": "Cannot resume from x"},
            "the run was refused, and not retried: Cannot resume from x",
        ),
        (
            {"status": "failed", "error": "RuntimeError: CUDA error", "calls": 1},
            "stopped after Modal's retries: RuntimeError: CUDA error\n  continue it from its last "
            "checkpoint: modal run --detach src/tinycats/remote.py::fit",
        ),
    ],
)
def test_fit_entrypoint_exits_non_zero_unless_the_run_finished(
    remote, monkeypatch, result, message
):
    monkeypatch.chdir(REPO)
    monkeypatch.setattr(remote, "drive", fake_drive(result, []))
    with pytest.raises(SystemExit, match=re.escape(message)):
        remote.fit(config="configs/classifier.yaml")


def test_a_large_run_also_gets_a_command_for_its_essential_files(remote, monkeypatch, capsys):
    big = {
        **FINISHED,
        "run_dir": "/outputs/checkpoints/dit/2026-01-02/cats",
        "run_bytes": 3_300_000_000,
        "run_files": [
            "config.yaml",
            "last.ckpt",
            "metrics.csv",
            "samples",
            "step=00001000.ckpt",
            "summary.json",
        ],
    }
    monkeypatch.chdir(REPO)
    monkeypatch.setattr(remote, "drive", fake_drive(big, []))
    remote.fit(config="configs/dit.yaml")
    printed = capsys.readouterr().out
    assert "fetch it (3.30 GB)" in printed
    run, local = "checkpoints/dit/2026-01-02/cats", "outputs/checkpoints/dit/2026-01-02/cats"
    essentials = " && ".join(
        f"modal volume get tinycats-outputs {run}/{name} {local}"
        for name in ("last.ckpt", "summary.json", "metrics.csv", "samples")
    )
    assert f"mkdir -p {local} && {essentials}\n" in printed


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
    first = fit_local(remote, config, overrides, "tiny", RUN_DATE)

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
    resumed = fit_local(remote, config, overrides, "tiny", RUN_DATE)
    committed_before = storage.commits.outputs.committed()
    assert f"Resuming from {run / steps[0]}" in caplog.text
    assert resumed["status"] == "finished" and resumed["global_step"] == 4
    assert storage.commits.data.snapshots == []  # the cache was reused
    assert prefix + "summary.json" in storage.commits.outputs.snapshots[-1]
    assert_same_weights(uninterrupted, (run / "last.ckpt").read_bytes())

    # The finished run: the same summary (one attempt more), nothing trained or written but the
    # attempt's record and its lease.
    storage.commits.outputs.snapshots.clear()
    # A time stamp set in the past: a rewrite shows at any clock resolution.
    os.utime(run / "last.ckpt", ns=(10**18, 10**18))
    before = (run / "last.ckpt").stat().st_mtime_ns
    again = fit_local(remote, config, overrides, "tiny", RUN_DATE)
    facts = ("attempts", "run_bytes")
    assert {k: v for k, v in again.items() if k not in facts} == {
        k: v for k, v in resumed.items() if k not in facts
    }
    assert again["attempts"] == resumed["attempts"] + 1
    new_files = storage.commits.outputs.committed() - committed_before
    assert {f for f in new_files if not f.startswith(prefix + "ledger/")} <= {prefix + "lease.json"}
    assert storage.commits.data.snapshots == []
    assert (run / "last.ckpt").stat().st_mtime_ns == before


def assert_same_weights(expected: bytes, actual: bytes) -> None:
    import io

    import torch

    load = lambda data: torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)  # noqa: E731
    expected_state, actual_state = load(expected)["state_dict"], load(actual)["state_dict"]
    assert expected_state.keys() == actual_state.keys()
    for key, value in expected_state.items():
        torch.testing.assert_close(actual_state[key], value, rtol=0, atol=0, msg=key)


# One test per row of the outcome table (plans/0013-modal-outcomes.md). Each calls the method
# as Modal would and checks the outcome: refused (returned, logged loudly, never retried),
# raised (Modal retries it), or continue; and where an attempt follows, that it continues.


def refused(result: dict, stderr: str, *needles: str) -> None:
    assert result["status"] == "refused", result
    for needle in needles:
        assert needle in result["error"], result["error"]
    assert f"tinycats: REFUSED, not retried: {result['error']}" in stderr


def test_an_unknown_key_is_refused_with_the_parser_message(remote, storage, pets_sample, capsys):
    config = CLASSIFIER_TINY.read_text()
    typo = fit_local(
        remote, config, [f"--data.source={pets_sample}", "--trainer.max_stepz=3"], "tiny", RUN_DATE
    )
    refused(typo, capsys.readouterr().err, "rejected the config", "max_stepz")


def test_print_config_is_refused_not_retried(remote, storage, pets_sample, capsys) -> None:
    config = CLASSIFIER_TINY.read_text()
    printed = fit_local(
        remote, config, [f"--data.source={pets_sample}", "--print_config"], "tiny", RUN_DATE
    )
    refused(printed, capsys.readouterr().err, "without training", "--print_config")


def test_a_missing_start_checkpoint_is_refused(remote, storage, pets_sample, capsys) -> None:
    missing = fit_local(
        remote,
        CLASSIFIER_TINY.read_text(),
        [f"--data.source={pets_sample}"],
        "tiny",
        RUN_DATE,
        "checkpoints/classifier/2026-01-01/gone/last.ckpt",
    )
    refused(missing, capsys.readouterr().err, str(storage.outputs / "checkpoints/classifier"))


def test_out_of_memory_is_refused_with_a_smaller_batch_to_try(
    remote, storage, pets_sample, monkeypatch, capsys
) -> None:
    import torch

    from tinycats.models import CatClassifier

    def out_of_memory(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB.")

    monkeypatch.setattr(CatClassifier, "training_step", out_of_memory)
    oom = fit_local(
        remote, CLASSIFIER_TINY.read_text(), [f"--data.source={pets_sample}"], "tiny", RUN_DATE
    )
    refused(
        oom,
        capsys.readouterr().err,
        "ran out of memory at data.batch_size=32",
        "--data.batch_size=16",
    )


def test_a_download_that_fails_is_raised_so_modal_retries(remote, storage, capsys) -> None:
    from tinycats.data.download import DatasetDownloadError

    dead = ["--data.source=oxford-pets", "--data.base_url=http://127.0.0.1:9/"]
    with pytest.raises(DatasetDownloadError, match="Could not download"):
        fit_local(remote, CLASSIFIER_TINY.read_text(), dead, "tiny", RUN_DATE)
    assert "Modal retries it" in capsys.readouterr().err
    assert storage.commits.data.snapshots == []


def test_a_half_installed_dataset_is_installed_again_and_trained_on(
    remote, storage, oxford_archives, loopback_server
) -> None:
    server = loopback_server(oxford_archives.folder)
    (storage.data / "oxford-iiit-pet" / "images").mkdir(parents=True)  # an install killed midway
    overrides = [
        "--data.source=oxford-pets",
        f"--data.base_url={server.url}",
        f"--data.checksums={json.dumps(oxford_archives.checksums)}",
        "--trainer.max_steps=2",
    ]
    trained = fit_local(remote, CLASSIFIER_TINY.read_text(), overrides, "tiny", RUN_DATE)
    assert trained["status"] == "finished" and trained["global_step"] == 2
    assert (storage.data / "oxford-iiit-pet" / ".complete").is_file()


@pytest.mark.slow
def test_a_signal_fails_the_attempt_and_the_retry_continues(
    remote, storage, pets_sample, monkeypatch, caplog, capsys
) -> None:
    import signal

    from tinycats.models import CatClassifier

    train_step = CatClassifier.training_step

    def signalled_at_step_3(self, batch, batch_idx):
        if self.global_step == 2:  # a SIGTERM arrives while the third step trains
            os.kill(os.getpid(), signal.SIGTERM)
        return train_step(self, batch, batch_idx)

    config = CLASSIFIER_TINY.read_text()
    overrides = [f"--data.source={pets_sample}", "--trainer.max_steps=4"]
    monkeypatch.setattr(CatClassifier, "training_step", signalled_at_step_3)
    with pytest.raises(KeyboardInterrupt):  # Modal's preemption path: no retry spent
        fit_local(remote, config, overrides, "tiny", RUN_DATE)
    assert "spending no retry" in capsys.readouterr().err

    monkeypatch.setattr(CatClassifier, "training_step", train_step)
    caplog.set_level("INFO", logger="tinycats")
    retried = fit_local(remote, config, overrides, "tiny", RUN_DATE)
    run = storage.outputs / "checkpoints/classifier" / RUN_DATE / "tiny"
    assert f"Resuming from {run / 'last.ckpt'}" in caplog.text
    assert retried["status"] == "finished" and retried["global_step"] == 4
    assert retried["attempts"] == 2


def no_time_left(remote, monkeypatch) -> None:
    """Attempts whose time is up from the start: each stops after its first step, however fast
    this machine trains (a short real timeout would let a fast machine finish first)."""
    monkeypatch.setattr(attempt.checks, "attempt_end_s", lambda timeout: 0.0)


@pytest.mark.slow
def test_attempts_that_use_their_time_continue_until_the_run_is_done(
    remote, storage, pets_sample, monkeypatch, caplog
) -> None:
    # Attempts with no time: each one stops after its first step, with last.ckpt written and committed,
    # and returns "continue"; the driver calls again until the run is finished.
    real_runner = remote.Runner
    calls = []

    def spawn(job, holder):
        calls.append(job)
        result = real_runner().fit.local(job, holder)
        return SimpleNamespace(object_id="fc", get=lambda timeout: result)

    no_time_left(remote, monkeypatch)
    monkeypatch.setattr(remote, "Runner", lambda: SimpleNamespace(fit=SimpleNamespace(spawn=spawn)))
    caplog.set_level("INFO", logger="tinycats")
    overrides = (f"--data.source={pets_sample}", "--trainer.max_steps=3")
    done = remote.drive.local(
        Launch(CLASSIFIER_TINY.read_text(), overrides, "tiny", "", "", RUN_DATE)
    )

    run = storage.outputs / "checkpoints/classifier" / RUN_DATE / "tiny"
    assert done["status"] == "finished" and done["global_step"] == 3
    assert done["calls"] == done["attempts"] == 3
    assert [job.date for job in calls] == ["", RUN_DATE, RUN_DATE]
    assert caplog.text.count("This attempt's time is up") == 2
    assert caplog.text.count(f"Resuming from {run / 'last.ckpt'}") == 2
    first_end = next(
        i
        for i, files in enumerate(storage.commits.outputs.snapshots)
        if any(name.endswith("attempts.jsonl") for name in files)
    )
    assert any(
        f"checkpoints/classifier/{RUN_DATE}/tiny/last.ckpt" in files
        for files in storage.commits.outputs.snapshots[first_end : first_end + 6]
    )


@pytest.mark.slow
def test_a_launch_without_a_date_continues_the_newest_run_of_its_name(
    remote, storage, pets_sample, monkeypatch
) -> None:
    config = CLASSIFIER_TINY.read_text()
    overrides = [f"--data.source={pets_sample}", "--trainer.max_steps=2"]
    no_time_left(remote, monkeypatch)
    started = fit_local(remote, config, overrides, "tiny", "", "", "2026-01-02")
    assert started["status"] == "continue"
    monkeypatch.setattr(attempt.checks, "attempt_end_s", ATTEMPT_END_S)
    # A day later, without --date: the same run continues, in its own folder.
    later = fit_local(remote, config, overrides, "tiny", "", "", "2026-01-03")
    assert later["status"] == "finished" and later["global_step"] == 2
    assert Path(later["run_dir"]) == storage.outputs / "checkpoints/classifier/2026-01-02/tiny"
    # Once finished, a launch by name returns its result at once; a new name starts a new run.
    again = fit_local(remote, config, overrides, "tiny", "", "", "2026-01-04")
    assert same_run(again, later)
    assert not (storage.outputs / "checkpoints/classifier/2026-01-04").exists()


@pytest.mark.slow
def test_a_start_checkpoint_is_used_only_while_the_run_has_none(
    remote, storage, pets_sample, monkeypatch, caplog
) -> None:
    config, source = CLASSIFIER_TINY.read_text(), f"--data.source={pets_sample}"
    base = fit_local(remote, config, [source, "--trainer.max_steps=2"], "base", RUN_DATE)
    start = str(Path(base["run_dir"]).relative_to(storage.outputs) / "last.ckpt")
    caplog.set_level("INFO", logger="tinycats")
    longer = [source, "--trainer.max_steps=4"]
    # The first attempt starts from the base run and is cut short after one step...
    no_time_left(remote, monkeypatch)
    first = fit_local(remote, config, longer, "tuned", RUN_DATE, start)
    assert first["status"] == "continue" and first["global_step"] == 3
    assert f"Resuming from {storage.outputs / start}" in caplog.text
    # ...and the next one continues the tuned run, not the base run again.
    caplog.clear()
    monkeypatch.setattr(attempt.checks, "attempt_end_s", ATTEMPT_END_S)
    tuned = fit_local(remote, config, longer, "tuned", RUN_DATE, start)
    assert f"Resuming from {Path(first['run_dir']) / 'last.ckpt'}" in caplog.text
    assert tuned["status"] == "finished" and tuned["global_step"] == 4
    # A relaunch of the finished run returns it; it does not start over from the base.
    assert same_run(fit_local(remote, config, longer, "tuned", RUN_DATE, start), tuned)


@pytest.mark.slow
def test_sample_draws_a_png_from_a_trained_dit(remote, storage, pets_sample) -> None:
    trained = fit_local(
        remote, DIT_TINY.read_text(), [f"--data.source={pets_sample}"], "tiny", RUN_DATE
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
        run.mkdir(parents=True, exist_ok=True)  # the attempt record made it already
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
    monkeypatch.setattr(attempt.subprocess, "Popen", FakeTrainingChild)
    fit = lambda *launch: fit_local(remote, *launch)  # noqa: E731
    if returncode:
        with pytest.raises(RuntimeError, match="exited with status 1"):
            fit(CLASSIFIER_TINY.read_text(), [], "tiny", RUN_DATE)
    else:
        assert fit(CLASSIFIER_TINY.read_text(), [], "tiny", RUN_DATE)["global_step"] == 8
    (command,) = FakeTrainingChild.commands
    assert command[1:4] == ["-m", "tinycats", "fit"]
    prefix = f"checkpoints/classifier/{RUN_DATE}/tiny/"
    written = {prefix + "last.ckpt"} | ({prefix + "summary.json"} if returncode == 0 else set())
    # The outputs are committed when the lease is taken and the attempt recorded, and once more
    # after the child ended (whatever its status): all it wrote is in that commit.
    lease, recorded = prefix + "lease.json", prefix + "attempts.jsonl"
    started, taken, after_child, *released = storage.commits.outputs.snapshots
    record = {path for path in taken if path.startswith(prefix + "ledger/")}  # from the start
    assert len(record) == 1
    assert (started, taken) == ({recorded}, {lease, recorded} | record)
    assert after_child == written | {lease, recorded} | record
    assert all(lease not in snapshot for snapshot in released) and released
    assert len(storage.commits.data.snapshots) == 1


@pytest.mark.slow
def test_several_gpus_train_in_a_subprocess_and_commit_when_it_ends(
    remote, storage, pets_sample, monkeypatch
) -> None:
    import torch

    # Pretend the container has two GPUs, and let Lightning run its DDP on two CPU processes.
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(attempt.subprocess, "Popen", BoundedPopen)
    ddp = ["--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.strategy=ddp"]
    summary = fit_local(
        remote,
        CLASSIFIER_TINY.read_text(),
        [f"--data.source={pets_sample}", *ddp],
        "tiny",
        RUN_DATE,
    )
    assert summary["status"] == "finished" and summary["global_step"] == 8
    # Commits when the attempt is recorded and the lease taken, one when the subprocess ends.
    after_child = storage.commits.outputs.snapshots[2]
    assert len(storage.commits.data.snapshots) == 1
    prefix = f"checkpoints/classifier/{RUN_DATE}/tiny/"
    assert {prefix + "last.ckpt", prefix + "summary.json"} <= after_child
    # The launcher's ledger record, kept on by the subprocess: one attempt, from the start; the
    # launcher no longer beats it (a beat would overwrite the subprocess's record).
    time.sleep(2 * ledger_keeper.HEARTBEAT_S)
    (record,) = ledger.read_ledger(Path(storage.outputs) / prefix).attempts
    assert record.outcome == "finished" and record.startup_s > 0 and record.training_s > 0


class BoundedPopen(subprocess.Popen):
    """A Popen whose unbounded wait() gives up after TIMEOUT s: a DDP hang fails, not stalls, the test."""

    def wait(self, timeout: float | None = None) -> int:
        try:
            return super().wait(timeout=timeout or TIMEOUT)
        except subprocess.TimeoutExpired:
            self.kill()  # rank 0; the other rank exits when its peer is gone
            super().wait()
            raise


def test_a_finished_run_is_extended_by_a_larger_max_steps(remote, storage, pets_sample) -> None:
    config = CLASSIFIER_TINY.read_text()
    source = f"--data.source={pets_sample}"
    first = fit_local(remote, config, [source, "--trainer.max_steps=2"], "tiny", RUN_DATE)
    assert first["status"] == "finished" and first["global_step"] == 2
    longer = fit_local(remote, config, [source, "--trainer.max_steps=3"], "tiny", RUN_DATE)
    assert longer["status"] == "finished" and longer["global_step"] == 3
    assert longer["attempts"] == 2
