"""``tinycats serve``: classify photos and draw cats with trained runs, in a web page and a JSON API."""

import logging
import time
from pathlib import Path

from jsonargparse import ArgumentParser

from tinycats.commands.parsing import accept_old_names, command_parser, use_new_names
from tinycats.commands.serve_budget import Budget
from tinycats.commands.serve_models import Limits, ModelStore
from tinycats.errors import TinyCatsError

log = logging.getLogger(__name__)

DESCRIPTION = """\
Serve trained runs on http://127.0.0.1:8000: a web page (upload a photo, draw cats) and a JSON
API (/docs lists it). The runs load once, at start-up. A run is a run directory (its newest
checkpoint is used) or a checkpoint file inside --runs_dir; 'newest' picks the newest run of
that model there, an empty value serves none.

examples:
  tinycats serve                                      the newest classifier and DiT in outputs/
  tinycats serve --dit checkpoints/dit/2026-01-31/sample --classifier ''
  tinycats serve --host 0.0.0.0 --port 8080           reachable from other machines
  tinycats serve -c serve.yaml --port 8081            options from a file, later flags win
  tinycats serve --host 0.0.0.0 --budget.draws_per_minute 10   a budget per client address
"""


RENAMED = {"generator": "dit"}  # old flag → new, still accepted with a warning


def build_parser() -> ArgumentParser:
    """The ``tinycats serve`` flags (``--max_pixels``-style names, like the other commands)."""
    parser = command_parser("tinycats serve", DESCRIPTION)
    parser.add_argument(
        "--classifier",
        type=str,
        default="newest",
        help="classifier run or checkpoint, relative to --runs_dir",
    )
    parser.add_argument(
        "--dit",
        type=str,
        default="newest",
        help="DiT run or checkpoint, relative to --runs_dir",
    )
    parser.add_argument(
        "--runs_dir",
        type=Path,
        default=Path("outputs"),
        help="the runs folder (`tinycats fit`'s --run.outputs); requests "
        "cannot name files outside it",
    )
    parser.add_argument(
        "--host",
        type=str,
        default="127.0.0.1",
        help="address to listen on; 0.0.0.0 opens it to other machines",
    )
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--threads", type=int, default=0, help="torch threads per request (0: torch's default)"
    )
    parser.add_class_arguments(Limits, "limits")
    parser.add_class_arguments(Budget, "budget")
    accept_old_names(parser, RENAMED)
    return parser


def load_store(
    runs_dir: Path, classifier: str, dit: str, limits: Limits, require_a_run: bool = True
) -> ModelStore:
    """A ModelStore holding the chosen classifier and DiT (loaded now, not at the first request).

    ``require_a_run=False`` serves an empty store rather than refusing (a new Modal volume).
    """
    if not runs_dir.is_dir():
        raise TinyCatsError(
            f"--runs_dir {runs_dir} is not a folder: pass the --run.outputs "
            "folder of `tinycats fit` (default: outputs)."
        )
    store = ModelStore(runs_dir, limits)
    for kind, run in (("classifier", classifier), ("dit", dit)):
        try:
            loaded = store.load_default(kind, run)
        except TinyCatsError as err:
            raise TinyCatsError(f"Cannot serve {kind} run {run!r}: {err}") from err
        if loaded:
            log.info(
                "Serving %s %s (%s, step %d)", kind, loaded.run, loaded.checkpoint, loaded.step
            )
    if require_a_run and not any(store.default.values()):
        raise TinyCatsError(
            f"No classifier or DiT run to serve in {runs_dir}: train one with "
            "`tinycats fit -c configs/classifier_sample.yaml` or name one with "
            "--classifier / --dit."
        )
    return store


def main(argv: list[str]) -> None:
    """Parse the flags, load the runs, and serve until interrupted."""
    import torch
    import uvicorn

    from tinycats.commands.serve_api import build_app

    args = use_new_names(build_parser().parse_args(argv), RENAMED)
    budget = Budget(**vars(args.budget))  # checked before the runs load
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    store = load_store(args.runs_dir, args.classifier, args.dit, Limits(**vars(args.limits)))
    log.info(
        "Loaded in %.1f s; open http://%s:%d", time.perf_counter() - started, args.host, args.port
    )
    uvicorn.run(build_app(store, budget), host=args.host, port=args.port, log_level="info")
