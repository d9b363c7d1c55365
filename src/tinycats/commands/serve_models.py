"""The trained models ``tinycats serve`` answers with: found by run path, loaded once, kept.

A run is named by a path inside the runs folder (a run directory, whose newest readable
checkpoint is used, or a checkpoint file). Paths that leave that folder are refused, so a web
request can name runs without reaching any other file on the machine.
"""

import io
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError

from tinycats.data.images import TooManyPixels, decode_square
from tinycats.errors import TinyCatsError
from tinycats.models.classifier import CatClassifier
from tinycats.models.generator import DiTGenerator
from tinycats.models.grid import labelled_grid
from tinycats.models.labels import UnknownBreed, chosen_breeds
from tinycats.models.performance import autocast, choose_precision
from tinycats.networks.augment import to_unit_range
from tinycats.runs.loading import checkpoint_to_load, load_trained
from tinycats.runs.run_dir import LAST, STEP_GLOB, RunDir, dated_runs, model_runs, newest_run

KINDS = ("classifier", "dit")  # also the runs' model folders: <runs>/checkpoints/<kind>/...


class BadRequest(TinyCatsError):
    """The request asked for something the server cannot give; ``status`` is its HTTP code."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Limits:
    """What one request may ask for, so that no request can exhaust the server.

    Args:
        max_upload_bytes: the largest photo upload accepted.
        max_pixels: the most pixels a photo may have (decompression bombs are small files).
        max_files: the most photos one classify request may carry.
        max_n: the most cats one drawing may hold.
        max_steps: the most ODE steps of one drawing.
        max_runs: the most runs of each kind kept loaded; requests naming more runs evict the
            least recently used one that is not a default.
    """

    max_upload_bytes: int = 10_000_000
    max_pixels: int = 40_000_000
    max_files: int = 16
    max_n: int = 16
    max_steps: int = 100
    max_runs: int = 4


@dataclass
class LoadedRun:
    """A model with where it came from, as ``/api/models`` lists it."""

    kind: str
    run: str
    checkpoint: str
    step: int
    metrics: dict[str, float]
    classes: list[str]
    image_size: int
    model: Any = field(repr=False)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def describe(self) -> dict[str, Any]:
        """The JSON-able description of this run (everything but the model)."""
        return {
            "kind": self.kind,
            "run": self.run,
            "checkpoint": self.checkpoint,
            "step": self.step,
            "metrics": self.metrics,
            "classes": self.classes,
            "image_size": self.image_size,
        }


class ModelStore:
    """The runs the server has loaded, by kind and run path; loads others on first use."""

    def __init__(self, runs_root: Path, limits: Limits = Limits()) -> None:
        self.runs_root = runs_root.resolve()
        self.limits = limits
        self.loaded: dict[str, dict[str, LoadedRun]] = {kind: {} for kind in KINDS}
        self.default: dict[str, str | None] = dict.fromkeys(KINDS)
        self.device = torch.device("cpu")
        self._loading = threading.Lock()

    def to(self, device: str | torch.device) -> None:
        """Move every loaded model, and those loaded later, to ``device``."""
        self.device = torch.device(device)
        for run in (r for kind in KINDS for r in self.loaded[kind].values()):
            run.model.to(self.device)

    def load_default(self, kind: str, run: str | None) -> LoadedRun | None:
        """Load ``run`` (or, for ``newest``, the newest run of ``kind``) as the kind's default."""
        if run == "newest":
            newest = newest_run(dated_runs(model_runs(self.runs_root, kind)))
            if newest is None:
                return None
            run = str(newest)
        if not run:
            return None
        loaded = self.get(kind, run)
        self.default[kind] = loaded.run
        return loaded

    def get(self, kind: str, run: str | None = None) -> LoadedRun:
        """The loaded run of ``kind`` at ``run`` (the default when None), loading it if needed."""
        if run is None:
            run = self.default[kind]
            if run is None:
                raise BadRequest(
                    404,
                    f"No {kind} run is loaded: start the server with "
                    f"--{kind} RUN, "
                    "or name a run in the request.",
                )
        path = self.confine(run)
        key = self._key(path)
        loaded = self.loaded[kind]
        with self._loading:  # two first requests for one run load it once
            if key not in loaded:
                evictable = [k for k in loaded if k != self.default[kind]]
                if len(loaded) >= self.limits.max_runs and evictable:
                    del loaded[evictable[0]]  # the least recently used (order of use, below)
                loaded[key] = _load(kind, path, key)
                loaded[key].model.to(self.device)
            loaded[key] = loaded.pop(key)  # most recently used last
            return loaded[key]

    def confine(self, run: str) -> Path:
        """``run`` as a path inside the runs folder (relative paths are taken from it)."""
        path = (self.runs_root / run).resolve()
        if not path.is_relative_to(self.runs_root):
            raise BadRequest(
                400,
                f"Run {run!r} is outside the runs folder {self.runs_root}: "
                "name a run directory or checkpoint inside it.",
            )
        if not path.exists():
            raise BadRequest(404, f"No run or checkpoint at {run!r} in {self.runs_root}.")
        return path

    def describe(self) -> list[dict[str, Any]]:
        """Every loaded run, each saying whether it is its kind's default."""
        runs = [r for kind in KINDS for r in self.loaded[kind].values()]
        return [r.describe() | {"default": self.default[r.kind] == r.run} for r in runs]

    def _key(self, path: Path) -> str:
        return str(path.relative_to(self.runs_root)) or "."


def _load(kind: str, path: Path, name: str) -> LoadedRun:
    """Load a classifier or a DiT from a run directory or checkpoint, in eval mode on the CPU."""
    try:
        checkpoint = _newest_checkpoint(path)
        model = load_trained(checkpoint, CatClassifier if kind == "classifier" else DiTGenerator)
    except TinyCatsError as err:
        raise BadRequest(422, str(err)) from err
    if kind == "dit":
        image_size = model.model.image_size
    else:
        image_size = model.trained_image_size
        if image_size is None:
            raise BadRequest(
                422, f"{checkpoint.name} does not say which image size it was trained at."
            )
    model.eval().requires_grad_(False)
    run_dir = path if path.is_dir() else path.parent
    metrics = (RunDir(run_dir).summary() or {}).get("metrics", {})
    step = _global_step(checkpoint)
    labels = model.class_labels
    return LoadedRun(kind, name, checkpoint.name, step, metrics, labels, image_size, model)


def _newest_checkpoint(path: Path) -> Path:
    """The file itself, or the run's newest checkpoint that is intact (SHA-256) and readable."""
    if path.is_file():
        return path
    if not RunDir(path).checkpoints():
        raise BadRequest(404, f"{path.name} holds no {LAST} or {STEP_GLOB}.")
    return checkpoint_to_load(path)


def _global_step(checkpoint: Path) -> int:
    """The step a checkpoint was written at (memory-mapped: the weights are not read again)."""
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
    step = int(saved["global_step"])
    del saved  # closes the file: an open file would block a Modal volume reload
    return step


def decode_photo(data: bytes, size: int, limits: Limits) -> torch.Tensor:
    """An uploaded photo as the ``(3, size, size)`` uint8 square the classifier was trained on.

    Decoded as the training images are (``tinycats.data.images.decode_square``), after checking
    the byte and pixel limits: the pixel count is read from the header, before anything is decoded.
    """
    if len(data) > limits.max_upload_bytes:
        raise BadRequest(
            413, f"The upload has {len(data)} bytes; the limit is {limits.max_upload_bytes}."
        )
    try:
        return decode_square(io.BytesIO(data), size, limits.max_pixels)[0]
    except TooManyPixels as err:
        raise BadRequest(413, str(err)) from err
    except Image.DecompressionBombError as err:
        raise BadRequest(413, f"The image is too large to decode: {err}") from err
    except UnidentifiedImageError as err:
        raise BadRequest(400, "Not an image: upload a JPEG, PNG or WebP photo.") from err
    except (OSError, SyntaxError, ValueError) as err:
        raise BadRequest(400, f"A broken image (truncated or corrupt): {err}.") from err


def classify(loaded: LoadedRun, photos: list[torch.Tensor]) -> list[dict[str, Any]]:
    """The label, its probability and every class's probability, for each decoded photo."""
    with torch.inference_mode():
        images = to_unit_range(torch.stack(photos).to(loaded.model.device))
        probabilities = loaded.model(images).softmax(dim=-1).cpu()
    results = []
    for row in probabilities.tolist():
        best = max(range(len(row)), key=row.__getitem__)
        results.append(
            {
                "label": loaded.classes[best],
                "probability": row[best],
                "probabilities": dict(zip(loaded.classes, row, strict=True)),
            }
        )
    return results


def draw(loaded: LoadedRun, breed: str, n: int, steps: int, cfg_scale: float, seed: int) -> bytes:
    """A PNG grid of ``n`` cats of ``breed`` (a row per breed for ``all``); same seed, same bytes."""
    try:
        rows = chosen_breeds(breed, loaded.classes)
    except UnknownBreed as err:
        raise BadRequest(422, str(err)) from err
    labels = torch.tensor([loaded.classes.index(row) for row in rows]).repeat_interleave(n)
    device = loaded.model.device
    # The precision `tinycats sample` draws in, so both give the same picture for the same seed.
    precision = choose_precision(None, device.type, loaded.model).precision
    with loaded.lock, torch.inference_mode(), autocast(precision, device):
        images = loaded.model.generate(labels, seed=seed, steps=steps, cfg_scale=cfg_scale)
    buffer = io.BytesIO()
    labelled_grid(images, rows).save(buffer, format="PNG")
    return buffer.getvalue()
