"""``tinycats runs``: every run under an outputs folder, with where it stands and what it cost."""

from pathlib import Path
from typing import Any

from tinycats.commands.parsing import call_with_args
from tinycats.runs import ledger
from tinycats.runs.run_dir import RunDir, all_runs, run_name

DESCRIPTION = """\
List the runs under an outputs folder: step reached of how many, attempts, goodput (productive
training time / paid time), steps trained twice after failures, cost so far and state.
  tinycats runs                       the runs in ./outputs
  tinycats runs --outputs /outputs    another folder (on Modal: modal run src/tinycats/remote.py::runs)
"""


def main(argv: list[str]) -> None:
    """Parse the ``tinycats runs`` arguments and print the table."""
    call_with_args(runs, argv, "tinycats runs", DESCRIPTION)


def runs(outputs: Path = Path("outputs")) -> None:
    """Print the table of runs.

    Args:
        outputs: the outputs folder (run.outputs of the configs).
    """
    print(table_of(Path(outputs)))


def table_of(outputs: Path) -> str:
    """The table of every run under ``outputs``."""
    return ledger.table(run_row(run, outputs) for run in all_runs(outputs))


def run_row(run: RunDir, outputs: Path) -> dict[str, Any]:
    """One run's row: where it is, how far, what it cost, what it is doing."""
    book = ledger.read_ledger(run.path)
    figures = book.summary()
    newest = book.attempts[-1] if book.attempts else None
    summary = run.summary()
    step = summary["global_step"] if summary else (newest.reached if newest else 0)
    total = newest.total_steps if newest else None
    cost = figures["cost_usd"]
    return {
        "run": run_name(run.path, outputs),
        "step": f"{step}/{total}" if total else str(step),
        "attempts": figures["attempts"],
        "goodput": "-" if figures["goodput"] is None else f"{figures['goodput']:.1%}",
        "lost": f"{figures['lost_steps']} steps",
        "cost": "-" if cost is None else f"${cost:.2f}",
        "state": ledger.state_of(book, finished=summary is not None),
    }
