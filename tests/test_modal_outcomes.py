"""How an attempt ends, checked against Modal's own code (client 1.6.4) where Modal decides:
the container's input handling (charged, handled externally, cancelled), the exception
round trip of `.remote()`/`.get()`, the retry policy; and the driver, a held run, TensorBoard
and the ledger on Modal, quickly and without training. The attempt's own rules (its run's
folder, the lease, the record) are in test_attempt.py, the deadline in test_deadline.py."""

import asyncio
import json
import os
import signal
import sys
import time
from importlib.util import module_from_spec, spec_from_file_location
from pathlib import Path
from types import ModuleType, SimpleNamespace

import modal
import pytest
from modal._runtime.container_io_manager import _ContainerIOManager
from modal._serialization import deserialize, pickle_exception, serialize
from modal._utils.function_utils import _process_result
from modal.exception import FunctionTimeoutError, InputCancellation
from modal.retries import RetryManager
from modal_proto import api_pb2

from tinycats import attempt, launch
from tinycats.attempt import Launch
from tinycats.errors import EXIT_INTERRUPTED, TinyCatsError
from tinycats.runs import ledger

REPO = Path(__file__).resolve().parents[1]
# A config whose run folder is known without importing a model: run.model names it.
CONFIG = "run: {model: classifier}\nmodel: {class_path: tinycats.models.CatClassifier}\n"
RUN_DATE = "2026-01-02"

pytestmark = pytest.mark.filterwarnings("ignore:The .* executing locally:UserWarning")


@pytest.fixture(scope="module")
def remote() -> ModuleType:
    spec = spec_from_file_location("remote", REPO / "src/tinycats/remote.py")
    module = module_from_spec(spec)
    sys.modules["remote"] = module
    spec.loader.exec_module(module)
    yield module
    del sys.modules["remote"]


def container(tmp_path: Path, gpus: int = 1) -> attempt.Container:
    storage = attempt.Storage(str(tmp_path / "outputs"), str(tmp_path / "data"), no_op, no_op)
    return attempt.Container(storage, "L4", gpus, 3600)


def no_op() -> None:
    pass


def ended(train, tmp_path: Path, gpus: int = 1) -> BaseException | dict:
    """What leaves `run_attempt` with ``train`` as the training command: a result or a raise."""
    try:
        job = Launch(CONFIG, (), "tiny", RUN_DATE)
        return attempt.run_attempt(
            job, "call-1", container(tmp_path, gpus), train, InputCancellation
        )
    except BaseException as left:
        return left


def modal_handles(left: BaseException) -> tuple[list[str], type | None]:
    """Run Modal's container input handler on an exception leaving the user function: the
    outputs it reports for the input, and what it lets escape (a KeyboardInterrupt escapes
    with no output: the input is "handled externally", retried without spending the policy)."""
    sent: list[str] = []

    class Inputs:
        input_ids = ("in-test",)

        async def output_items_cancellation(self, started_at):
            return ["cancelled"]

        async def output_items_exception(self, started_at, task_id, exc):
            return [f"failure {type(exc).__name__}"]  # counted against the retry policy

    class Manager:
        task_id = "ta-test"

        async def _send_outputs(self, io_context, outputs):
            sent.extend(outputs)

    async def handle() -> type | None:
        try:
            async with _ContainerIOManager.handle_input_exception(Manager(), Inputs(), 0.0):
                raise left
        except BaseException as escaped:
            return type(escaped)
        return None

    return sent, asyncio.run(handle())


# --- Preemption, cancellation and failure, as Modal's container treats them -------------------


def stopped_by_a_signal(args: list[str]) -> dict:
    raise SystemExit(EXIT_INTERRUPTED)  # what `tinycats fit` does after a signal stop


def test_a_preempted_attempt_spends_no_retry(tmp_path) -> None:
    left = ended(stopped_by_a_signal, tmp_path)
    assert isinstance(left, KeyboardInterrupt)
    assert modal_handles(left) == ([], KeyboardInterrupt)  # handled externally: not charged
    run = tmp_path / "outputs/checkpoints/classifier" / RUN_DATE / "tiny"
    lines = [json.loads(line) for line in (run / "attempts.jsonl").read_text().splitlines()]
    assert lines[-1]["outcome"] == "preempted" and not (run / "lease.json").exists()


def test_a_preempted_multi_gpu_attempt_leaves_the_same_way(tmp_path, monkeypatch) -> None:
    class StoppedChild:
        def __init__(self, command, env):
            pass

        def wait(self, timeout=None):
            return EXIT_INTERRUPTED

    monkeypatch.setattr(attempt.subprocess, "Popen", StoppedChild)
    left = ended(stopped_by_a_signal, tmp_path, gpus=2)
    assert modal_handles(left) == ([], KeyboardInterrupt)


def test_a_preemption_before_training_spends_no_retry(tmp_path) -> None:
    def preempted_while_preparing_data(args):
        try:  # Lightning outside the checkpoint callback's window: it exits 1 on an interrupt
            os.kill(os.getpid(), signal.SIGINT)
            signal.pause()
        except KeyboardInterrupt:
            sys.exit(1)
        return {}

    left = ended(preempted_while_preparing_data, tmp_path)
    assert modal_handles(left) == ([], KeyboardInterrupt)


def test_a_crash_spends_a_retry(tmp_path) -> None:
    def crashing(args):
        raise RuntimeError("CUDA error: an illegal memory access")

    left = ended(crashing, tmp_path)
    assert modal_handles(left) == (["failure RuntimeError"], None)
    run = tmp_path / "outputs/checkpoints/classifier" / RUN_DATE / "tiny"
    assert attempt.attempts_started(run) == 1  # recorded before it trained


def test_modal_app_stop_checkpoints_and_ends_as_a_cancellation(tmp_path) -> None:
    saved = []

    def trains_until_stopped(args):
        try:  # training; Modal's own handler would raise InputCancellation anywhere in it
            os.kill(os.getpid(), signal.SIGUSR1)  # `modal app stop`
            signal.pause()
        except KeyboardInterrupt:  # the preemption signal, which the checkpoint callback answers
            saved.append("last.ckpt")
            raise SystemExit(EXIT_INTERRUPTED) from None
        return {}

    left = ended(trains_until_stopped, tmp_path)
    assert saved == ["last.ckpt"]
    assert modal_handles(left) == (["cancelled"], None)


def test_a_refusal_is_returned_not_raised(tmp_path) -> None:
    def misconfigured(args):
        raise TinyCatsError("Cannot resume from gone.ckpt")

    assert ended(misconfigured, tmp_path) == {
        "status": "refused",
        "error": "Cannot resume from gone.ckpt",
    }


# --- Exceptions crossing `.remote()` / `.get()`, through the client's own serialisation -------


def round_trip(exc: BaseException) -> BaseException:
    """``exc`` as the client re-raises it from a failed call's result."""
    data = pickle_exception(exc)
    result = api_pb2.GenericResult(status=api_pb2.GenericResult.GENERIC_STATUS_FAILURE, data=data)
    try:
        asyncio.run(_process_result(result, api_pb2.DATA_FORMAT_PICKLE, None, None))
    except BaseException as raised:
        return raised
    raise AssertionError("the client returned a failed result")


class FailedCall:
    def __init__(self, exc: BaseException) -> None:
        self.exc, self.object_id = exc, "fc-failed"

    def get(self, timeout=None):
        raise round_trip(self.exc)


@pytest.mark.parametrize(
    "exc",
    [SystemExit(EXIT_INTERRUPTED), RuntimeError("boom"), FunctionTimeoutError("timed out")],
)
def test_a_failed_attempt_ends_the_driver_with_a_message(exc, tmp_path, monkeypatch) -> None:
    until = 10**12  # far away: the driver waits for the result, whatever it is
    assert type(round_trip(exc)) is type(exc)  # the client re-raises it as it was
    result = attempt.await_result(FailedCall(exc), until, poll_s=0)
    assert result == {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}


def test_the_result_of_a_call_survives_the_client_serialisation() -> None:
    result = {"status": "continue", "run_dir": "/outputs/checkpoints/classifier/d/tiny"}
    assert deserialize(serialize(result), None) == result
    job = Launch(CONFIG, ("--trainer.max_steps=9",), "tiny", "", "", RUN_DATE)
    assert deserialize(serialize(job), None) == job


# --- Retries: what the client accepts, and the waits docs/modal.md states ----------------------


@pytest.mark.parametrize("retries", [0, 10, 11, 90, 200])
def test_tinycats_retries_accepts_what_the_client_accepts(retries) -> None:
    modal.Retries(max_retries=retries, initial_delay=10.0, backoff_coefficient=2.0)
    launch.validate_launch_settings("L4", 60, retries)


def test_the_docs_state_the_retry_policy_and_the_driver_spawns_attempts(remote) -> None:
    policy = remote.RETRY_POLICY._to_proto()
    first, factor, cap = policy.initial_delay_ms / 1000, policy.backoff_coefficient, None
    cap = policy.max_delay_ms / 1000
    page = " ".join((REPO / "docs" / "modal.md").read_text().split())
    assert f"{first:g} s, doubling, at most {cap:g} s apart" in page and factor == 2
    # The client's own retries (a `.remote()` call) ignore max_delay: 10, 20, ..., 5120 s.
    client = [RetryManager._retry_delay_ms(n, policy) / 1000 for n in range(1, 11)]
    assert client[-1] == first * factor**9 > cap
    # So the driver spawns each attempt (the server's retries), never `.remote()` (below).


# --- The driver ------------------------------------------------------------------------------


class Calls:
    """Stands in for `Runner`: each spawn returns the next result; records the launches."""

    def __init__(self, *results: dict) -> None:
        self.results, self.launches = list(results), []

    def __call__(self):
        return SimpleNamespace(fit=SimpleNamespace(spawn=self.spawn, remote=self.remote))

    def spawn(self, job: Launch, holder: str):
        self.launches.append((job, holder))
        result = self.results.pop(0)
        return SimpleNamespace(object_id=f"fc-{len(self.launches)}", get=lambda timeout: result)

    def remote(self, *args):
        raise AssertionError("a .remote() call's retries ignore the policy's max_delay")


def drive(remote, monkeypatch, tmp_path, calls: Calls, job: Launch) -> dict:
    storage = attempt.Storage(str(tmp_path / "outputs"), str(tmp_path / "data"), no_op, no_op)
    monkeypatch.setattr(remote, "STORAGE", storage)
    monkeypatch.setattr(remote, "Runner", calls)
    return remote.drive.local(job)


def test_the_driver_keeps_the_run_date_after_a_continue(remote, monkeypatch, tmp_path) -> None:
    run = "/outputs/checkpoints/classifier/2026-01-02/tiny"
    calls = Calls(
        {"status": "continue", "run_dir": run},
        {"status": "finished", "run_dir": run, "global_step": 9},
    )
    job = Launch(CONFIG, (), "tiny", "", "", "2026-01-05")
    done = drive(remote, monkeypatch, tmp_path, calls, job)
    assert done["status"] == "finished" and done["calls"] == 2
    assert [launched.date for launched, _ in calls.launches] == ["", "2026-01-02"]
    first, second = (holder for _, holder in calls.launches)
    assert first != second  # each call its own holder; a call's retries share it


def test_the_driver_waits_while_another_attempt_holds_the_run(
    remote, monkeypatch, tmp_path
) -> None:
    run = tmp_path / "outputs/checkpoints/classifier" / RUN_DATE / "tiny"
    run.mkdir(parents=True)
    heartbeat = attempt.time.time()
    (run / "lease.json").write_text(json.dumps({"holder": "other", "heartbeat": heartbeat}))
    slept = []

    def sleep(seconds):  # the other attempt ends while the driver sleeps
        slept.append(seconds)
        (run / "lease.json").unlink()

    monkeypatch.setattr(attempt.time, "sleep", sleep)
    calls = Calls({"status": "finished", "run_dir": str(run)})
    done = drive(remote, monkeypatch, tmp_path, calls, Launch(CONFIG, (), "tiny", RUN_DATE))
    assert slept == [attempt.HEARTBEAT_S] and done["status"] == "finished"


def test_the_driver_hands_its_call_over_before_its_own_limit(remote, monkeypatch, tmp_path):
    successor = []
    monkeypatch.setattr(remote, "HAND_OVER_S", launch.MAX_TIMEOUT_S + 1)  # its time is up
    real_drive = remote.drive
    monkeypatch.setattr(
        remote,
        "drive",
        SimpleNamespace(spawn=lambda *a: successor.append(a) or SimpleNamespace(object_id="fc-n")),
    )
    storage = attempt.Storage(str(tmp_path / "o"), str(tmp_path / "d"), no_op, no_op)
    monkeypatch.setattr(remote, "STORAGE", storage)
    monkeypatch.setattr(remote, "Runner", Calls({"status": "finished"}))
    job = Launch(CONFIG, (), "tiny", RUN_DATE)
    assert real_drive.local(job) == {"status": "handed over", "call_id": "fc-n"}
    assert successor == [(job, "fc-1")]  # the successor waits on the same call: no new GPU


# --- A run held by another attempt -------------------------------------------------------------


def test_a_second_attempt_on_a_held_run_is_busy_and_records_nothing(tmp_path) -> None:
    run = tmp_path / "outputs/checkpoints/classifier" / RUN_DATE / "tiny"
    attempt.Lease(run, "call-0", no_op, __import__("time").time).beat()
    assert ended(stopped_by_a_signal, tmp_path)["status"] == "busy"
    assert not (run / "attempts.jsonl").exists()


# --- TensorBoard over the volume ----------------------------------------------------------------


def test_tensorboard_reads_events_files_in_a_way_that_lets_the_volume_reload(
    remote, monkeypatch, tmp_path
) -> None:
    from tensorboard import program

    configured = {}
    configure = program.TensorBoard.configure

    def recording(self, *args, **kwargs):
        configured.update(kwargs)
        return configure(self, *args, **kwargs)

    monkeypatch.setattr(program.TensorBoard, "configure", recording)
    storage = attempt.Storage(str(tmp_path), str(tmp_path), no_op, no_op)
    monkeypatch.setattr(remote, "STORAGE", storage)
    app = remote.tensorboard.local()
    # The default loader (tensorboard-data-server) keeps events files open, and
    # `Volume.reload()` fails while a file on the volume is open: the Python loader closes them.
    assert configured == {"logdir": str(tmp_path), "load_fast": "false"}
    assert callable(app)


class ProgressThenTimeout:
    """Stands in for `Runner`: the first call checkpoints step 10 and then times out with its
    retries spent (short limits); the next call finishes the run."""

    def __init__(self, run: Path, progress: bool) -> None:
        self.run, self.progress, self.spawned = run, progress, 0

    def __call__(self):
        return SimpleNamespace(fit=SimpleNamespace(spawn=self.spawn))

    def spawn(self, job: Launch, holder: str):
        self.spawned += 1
        first = self.spawned == 1

        def get(timeout):
            if first:
                if self.progress:
                    self.run.mkdir(parents=True, exist_ok=True)
                    (self.run / "step=00000010.ckpt").write_bytes(b"weights")
                raise round_trip(FunctionTimeoutError("Function timed out"))
            return {"status": "finished", "run_dir": str(self.run)}

        return SimpleNamespace(object_id=f"fc-{self.spawned}", get=get)


@pytest.mark.parametrize("progress", [True, False])
def test_a_failed_call_that_moved_the_run_on_is_called_again(
    remote, monkeypatch, tmp_path, progress
) -> None:
    run = tmp_path / "outputs/checkpoints/classifier" / RUN_DATE / "tiny"
    runner = ProgressThenTimeout(run, progress)
    done = drive(remote, monkeypatch, tmp_path, runner, Launch(CONFIG, (), "tiny", RUN_DATE))
    if progress:
        assert done["status"] == "finished" and done["calls"] == 2
    else:
        assert done["status"] == "failed" and "Function timed out" in done["error"]


# --- The ledger: a Modal attempt tells the training what it costs -----------------------------


def test_an_attempt_on_modal_gives_the_ledger_its_start_gpu_and_price(tmp_path, monkeypatch):
    for name in (ledger.STARTED_ENV, ledger.GPU_ENV, ledger.PRICE_ENV):
        monkeypatch.delenv(name, raising=False)
    seen = {}

    def training(args: list[str]) -> dict:
        seen.update({name: os.environ[name] for name in (ledger.STARTED_ENV, ledger.GPU_ENV)})
        seen["price"] = os.environ[ledger.PRICE_ENV]
        return {"status": "finished", "run_dir": "", "global_step": 1, "metrics": {}}

    storage = attempt.Storage(str(tmp_path / "outputs"), str(tmp_path / "data"), no_op, no_op)
    box = attempt.Container(storage, "H100:2", 1, 3600, started=1234.5)  # one GPU seen: no DDP
    attempt.run_attempt(Launch(CONFIG, (), "tiny", RUN_DATE), "c", box, training, KeyError)
    assert seen == {
        ledger.STARTED_ENV: "1234.5",
        ledger.GPU_ENV: "H100:2",
        "price": str(2 * launch.GPU_DOLLARS_PER_HOUR["H100"]),
    }


def test_the_end_of_a_run_says_what_it_cost(capsys) -> None:
    figures = {"attempts": 3, "paid_s": 7200.0, "productive_s": 6000.0, "goodput": 0.8333}
    figures |= {"lost_steps": 120, "lost_s": 300.0, "cost_usd": 1.6}
    result = {"status": "finished", "run_dir": "/outputs/checkpoints/dit/2026-01-02/a"}
    result |= {"global_step": 9, "metrics": {}, "attempts": 3, "run_bytes": 10, "run_files": []}
    launch.report({**result, "ledger": figures}, "again", "vol", "/outputs", "remote.py")
    said = capsys.readouterr().out
    assert (
        "goodput 83.3%, 3 attempt(s), 120 step(s) redone (5 min 00 s), 2 h 00 min paid, $1.60"
        in said
    )


def test_on_modal_the_ledger_record_is_kept_from_the_containers_start(tmp_path, monkeypatch):
    # Imports, the data and the config come before training: a preemption there is paid too.
    for name in (ledger.STARTED_ENV, ledger.GPU_ENV, ledger.PRICE_ENV):
        monkeypatch.delenv(name, raising=False)
    storage = attempt.Storage(str(tmp_path / "outputs"), str(tmp_path / "data"), no_op, no_op)
    box = attempt.Container(storage, "L4", 1, 3600, started=time.time() - 5)
    open_before_training = []

    def preempted_before_the_first_step(args: list[str]) -> dict:
        (run,) = (tmp_path / "outputs/checkpoints").glob("*/*/tiny")
        open_before_training.extend((a.started, a.ended) for a in ledger.read_ledger(run).attempts)
        raise KeyboardInterrupt

    job = Launch(CONFIG, (), "tiny", RUN_DATE)
    with pytest.raises(KeyboardInterrupt):
        attempt.run_attempt(job, "c", box, preempted_before_the_first_step, InputCancellation)
    assert open_before_training == [(box.started, None)]
    (run,) = (tmp_path / "outputs/checkpoints").glob("*/*/tiny")
    (record,) = ledger.read_ledger(run).attempts
    assert record.outcome == "interrupted" and record.paid_s >= 5
    assert record.cost_usd == pytest.approx(
        record.paid_s / 3600 * launch.GPU_DOLLARS_PER_HOUR["L4"]
    )
