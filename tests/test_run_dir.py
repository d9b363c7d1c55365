"""The run layout's one owner (runs/run_dir.py): where a run lives, its file names, the newest run."""

import ast
import os
from fnmatch import fnmatch
from pathlib import Path

from lightning.pytorch.callbacks import ModelCheckpoint

from tinycats.runs import run_dir
from tinycats.runs.run_dir import RunDir, RunSpec, dated_runs, newest_run, resolve_run_dir

SRC = Path(__file__).resolve().parents[1] / "src/tinycats"
FILE_NAMES = (run_dir.SUMMARY, run_dir.LAST, run_dir.BEST, run_dir.CONFIG, run_dir.METRICS)
FILE_NAMES += (run_dir.ATTEMPTS, run_dir.LEASE)


def _file(path: Path, mtime_s: int) -> Path:
    """A stand-in checkpoint whose modification time is ``mtime_s`` (set, not left to the clock)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"ckpt")
    os.utime(path, ns=(mtime_s * 10**9, mtime_s * 10**9))
    return path


def test_a_run_lives_at_outputs_checkpoints_model_date_name(tmp_path: Path) -> None:
    spec = RunSpec(outputs=str(tmp_path), name="cats", date="2026-01-31")
    run = resolve_run_dir(spec, "dit")
    assert run.path == tmp_path / "checkpoints/dit/2026-01-31/cats"
    assert run_dir.run_name(run.path, tmp_path) == "dit/2026-01-31/cats"
    assert run.last.parent == run.attempts.parent == run.lease.parent == run.path


def test_the_checkpoint_names_are_the_ones_lightning_writes() -> None:
    assert run_dir.LAST == ModelCheckpoint.CHECKPOINT_NAME_LAST + ModelCheckpoint.FILE_EXTENSION
    steps = ModelCheckpoint("run", run_dir.STEP_FILENAME, auto_insert_metric_name=False)
    written = Path(steps.format_checkpoint_name({"step": 4})).name
    assert written == "step=00000004.ckpt" and fnmatch(written, run_dir.STEP_GLOB)


def test_latest_is_the_run_that_holds_the_newest_checkpoint(tmp_path: Path) -> None:
    runs = {name: tmp_path / name for name in ("2026-01-01/a", "2026-01-02/b", "2026-01-03/c")}
    for run in runs.values():
        run.mkdir(parents=True)
    _file(runs["2026-01-01/a"] / "step=00000002.ckpt", 300)  # the newest file
    _file(runs["2026-01-02/b"] / "last.ckpt", 200)
    _file(runs["2026-01-03/c"] / "best.ckpt", 400)  # not one to resume from
    assert newest_run(dated_runs(tmp_path)) == runs["2026-01-01/a"]
    assert newest_run(dated_runs(tmp_path / "2026-01-04")) is None


def test_a_runs_checkpoints_are_newest_first_and_last_wins_a_tie(tmp_path: Path) -> None:
    step = _file(tmp_path / "step=00000004.ckpt", 100)
    last = _file(tmp_path / "last.ckpt", 100)
    older = _file(tmp_path / "step=00000002.ckpt", 50)
    _file(tmp_path / "best.ckpt", 200)
    assert RunDir(tmp_path).checkpoints() == [last, step, older]


def test_dated_runs_are_the_runs_of_one_name_oldest_date_first(tmp_path: Path) -> None:
    for run in ("2026-01-03/tiny", "2026-01-01/tiny", "2026-01-02/other"):
        (tmp_path / run).mkdir(parents=True)
    (tmp_path / "2026-01-04").mkdir()
    (tmp_path / "2026-01-04/tiny").write_text("a file, not a run")
    assert dated_runs(tmp_path, "tiny") == [
        tmp_path / "2026-01-01/tiny",
        tmp_path / "2026-01-03/tiny",
    ]
    assert len(dated_runs(tmp_path)) == 3


def _spelt_by_hand(path: Path) -> list[str]:
    """The string literals in ``path`` that are, or end in, a run file's name."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        text = node.value if isinstance(node, ast.Constant) else None
        if isinstance(text, str) and any(text == n or text.endswith("/" + n) for n in FILE_NAMES):
            found.append(f"{path.relative_to(SRC)}:{node.lineno} {node.value!r}")
    return found


def test_the_run_files_are_named_only_under_runs() -> None:
    outside = [p for p in SRC.rglob("*.py") if "runs" not in p.relative_to(SRC).parts]
    assert [hit for path in outside for hit in _spelt_by_hand(path)] == []
