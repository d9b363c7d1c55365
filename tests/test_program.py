"""The ``tinycats`` program ends once every exit handler has run, keeping its exit status."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tinycats.program import exit_status

REPO = Path(__file__).resolve().parents[1]


def run_program(script: str, tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_interpreter_is_not_torn_down_after_the_last_exit_handler(tmp_path: Path) -> None:
    # A handler registered before the program's runs after it, where the teardown would be.
    done = run_program(
        f"""
        import atexit, sys
        atexit.register(print, "teardown")
        sys.argv = ["tinycats", "runs", "--outputs", {str(tmp_path)!r}]
        from tinycats.program import main
        main()
        """,
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "No runs found."  # the command's output is flushed first


@pytest.mark.parametrize(
    ("argv", "status"),
    [
        (["runs", "--help"], 0),
        (["fit", "-c", "missing.yaml"], 2),  # refused by the parser
        (["runs", "--outputs", "."], 0),
    ],
)
def test_the_exit_status_is_kept(argv: list[str], status: int, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tinycats", *argv], cwd=tmp_path, capture_output=True, timeout=120
    )
    assert done.returncode == status, done.stderr


def test_an_uncaught_error_exits_1_after_its_traceback(tmp_path: Path) -> None:
    done = run_program(
        """
        import sys
        import tinycats.program
        sys.modules["tinycats.cli"] = type(sys)("tinycats.cli")
        sys.modules["tinycats.cli"].main = lambda: 1 / 0
        tinycats.program.main()
        """,
        tmp_path,
    )
    assert done.returncode == 1
    assert "ZeroDivisionError" in done.stderr


def test_ctrl_c_while_it_imports_ends_it_by_the_signal_and_the_attempt_starts_at_the_program(
    tmp_path: Path,
) -> None:
    # As Python would: a shell, a harness and Modal read that as a stop, not a failure (exit 1).
    # The shell runs the program in the process it forked a second earlier (`exec`): the attempt
    # starts when the program does, not at that fork.
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    fit = f"{sys.executable} -m tinycats fit -c {REPO / 'configs/classifier.yaml'}"
    launched = time.time()
    shell = subprocess.Popen(["bash", "-c", f"sleep 1 && exec {fit}"], cwd=tmp_path, env=env)
    pending = tmp_path / f"tinycats-{os.getuid()}" / "pending"
    while not list(pending.glob(f"{shell.pid}-*.json")):  # the program runs; torch is imported
        assert shell.poll() is None
        time.sleep(0.005)
    shell.send_signal(signal.SIGINT)
    assert shell.wait(timeout=60) == -signal.SIGINT
    (record,) = pending.glob(f"{shell.pid}-*.json")  # for the next attempt of the command
    assert json.loads(record.read_text())["started"] >= launched + 1


@pytest.mark.parametrize(("code", "status"), [(None, 0), (0, 0), (75, 75), ("a message", 1)])
def test_exit_status_follows_python(code: object, status: int) -> None:
    assert exit_status(code) == status
