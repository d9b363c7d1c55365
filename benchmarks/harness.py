"""What every benchmark part shares: the configs as benchmarked, their data, and the timing.

A workload is one training config of ``configs/`` (model class and arguments, labels, image
size, batch, checkpoint cadence) run as its long run spends most steps: trained from scratch
(no download), the EMA updating every step, no sample grids or validation. On a GPU it trains
at the configured batch with TF32 on; on a CPU at a sixteenth of that batch. Either way in the
precision ``tinycats fit`` picks on this machine (``Workload.precision``): bf16-mixed where the
processor computes bfloat16 natively and the model is faster so, else float32. ``--quick`` runs the tiny test configs at their own batch
instead, for CI. The photos are the Oxford-IIIT Pet sample shipped in ``data/sample``, repeated under new names
until one epoch holds every timed step.
"""

import argparse
import functools
import inspect
import itertools
import logging
import math
import tempfile
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from tinycats.data import PetsDataModule
from tinycats.data.catalog import build_catalog, class_names_for
from tinycats.models.performance import allow_tf32, auto_precision, default_device_type
from tinycats.runs.run_dir import model_class, read_config

REPO = Path(__file__).resolve().parents[1]
PHOTOS = REPO / "data/sample/images"
CONFIGS = ("configs/classifier.yaml", "configs/dit.yaml", "configs/dit_128.yaml")
QUICK_CONFIGS = ("tests/configs/classifier_tiny.yaml", "tests/configs/dit_tiny.yaml")
CPU_BATCH_DIVISOR = 16

# Model arguments as benchmarked, where the model takes them (see the module docstring).
AS_BENCHMARKED = {"weights": None, "ema_start_step": 0, "sample_every_n_steps": 0}


@dataclass(frozen=True)
class Sizes:
    """How long each measurement runs: untimed warm-up steps, then timed steps."""

    warmup: int
    steps: int


@dataclass(frozen=True)
class Workload:
    """A training config as the benchmarks run it."""

    config: str
    model_class: type[L.LightningModule]
    model_args: dict[str, Any]
    labels: str
    image_size: int
    batch: int
    checkpoint_every: int
    precision: str | None  # as ``tinycats fit`` chooses it here (None: 32-true)

    @property
    def name(self) -> str:
        return Path(self.config).stem

    def module(self, **overrides: Any) -> L.LightningModule:
        """A fresh model, seeded, with the benchmark's arguments and then ``overrides``."""
        accepted = inspect.signature(self.model_class).parameters
        args = {**self.model_args, **AS_BENCHMARKED, **overrides}
        args["num_classes"] = len(class_names_for(self.labels))
        if "image_size" in accepted:
            args["image_size"] = self.image_size
        torch.manual_seed(0)
        return self.model_class(**{k: v for k, v in args.items() if k in accepted})

    def data(self, setup: "Setup") -> PetsDataModule:
        """The data module over the repeated photos, all of them in the training split."""
        return PetsDataModule(
            root=str(setup.root),
            source=str(setup.photos),
            labels=self.labels,
            image_size=self.image_size,
            batch_size=self.batch,
            split=(1.0, 0.0, 0.0),
        )


@dataclass(frozen=True)
class Setup:
    """The device, the sizes, the workloads and where their photos and caches are."""

    device: torch.device
    sizes: Sizes
    workloads: list[Workload]
    photos: Path
    root: Path


def training_device() -> torch.device:
    """The first GPU if there is one, else the CPU."""
    return torch.device(default_device_type())


def sizes_for(device: torch.device, quick: bool) -> Sizes:
    """Enough steps for a stable median; on a CPU, few, as each takes seconds."""
    if quick:
        return Sizes(warmup=2, steps=3)
    return Sizes(warmup=5, steps=20) if device.type == "cuda" else Sizes(warmup=2, steps=8)


def load_workload(config: str, device: torch.device, quick: bool) -> Workload:
    """Read a training config and size its batch for the device (see the module docstring)."""
    spec = read_config(REPO / config)
    batch = spec["data"]["batch_size"]
    if device.type == "cpu" and not quick:
        batch = max(2, batch // CPU_BATCH_DIVISOR)
    workload = Workload(
        config=config,
        model_class=model_class(spec["model"]["class_path"]),
        model_args=spec["model"].get("init_args", {}),
        labels=spec["data"]["labels"],
        image_size=spec["data"]["image_size"],
        batch=batch,
        checkpoint_every=spec["checkpoint"]["every_n_train_steps"],
        precision=None,
    )
    requested = (spec.get("trainer") or {}).get("precision")
    return replace(workload, precision=auto_precision(requested, device.type, workload.module()))


@contextmanager
def prepare(quick: bool, configs: Sequence[str] | None = None) -> Iterator[Setup]:
    """The workloads (by default CONFIGS, or QUICK_CONFIGS) with their photos repeated and cached,
    in a temporary folder."""
    quiet()
    allow_tf32(True)
    device = training_device()
    sizes = sizes_for(device, quick)
    configs = configs or (QUICK_CONFIGS if quick else CONFIGS)
    workloads = [load_workload(config, device, quick) for config in configs]
    with tempfile.TemporaryDirectory() as tmp:
        setup = Setup(device, sizes, workloads, Path(tmp) / "photos", Path(tmp) / "data")
        _repeat_photos(setup)
        for workload in workloads:
            workload.data(setup).prepare_data()
        yield setup


def parse_args(description: str) -> argparse.Namespace:
    """The command line of a part that runs the workloads: ``--configs`` and ``--quick``."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--configs",
        type=lambda text: text.split(","),
        help=f"comma-separated (default: {','.join(CONFIGS)})",
    )
    parser.add_argument("--quick", action="store_true", help="CI sizes: the tiny test configs")
    return parser.parse_args()


def _repeat_photos(setup: Setup) -> None:
    """Link every sample photo often enough that each workload's timed steps fit in one epoch."""
    steps = setup.sizes.warmup + setup.sizes.steps + 1
    copies = max(
        math.ceil(w.batch * steps / len(build_catalog(PHOTOS, w.labels).paths))
        for w in setup.workloads
    )
    setup.photos.mkdir(parents=True)
    for photo, copy in itertools.product(sorted(PHOTOS.glob("*.jpg")), range(copies)):
        # Bengal_1.jpg → Bengal_1007.jpg: the breed (and so the label) stays the same.
        (setup.photos / f"{photo.stem}{copy:03d}{photo.suffix}").symlink_to(photo)


def trainer(
    device: torch.device, max_steps: int, callbacks: Sequence[L.Callback] = (), **kwargs: Any
) -> L.Trainer:
    """A Trainer as ``tinycats fit`` builds it, for training only: no logger, bar or validation;
    ``precision=workload.precision`` to train as ``tinycats fit`` would."""
    return L.Trainer(
        accelerator=device.type,
        devices=1,
        max_steps=max_steps,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=list(callbacks),
        enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks),
        **kwargs,
    )


def outside_fit(
    module: L.LightningModule, data: PetsDataModule, setup: Setup
) -> tuple[L.LightningModule, Iterable[tuple[torch.Tensor, torch.Tensor]]]:
    """Put ``module`` and the data's images on the device as a fit would, for a loop of one's own.

    The module's ``configure_model`` and the data's ``setup`` ask a Trainer for the device; one
    that never fits answers. The module is then detached again, so its ``self.log`` is a no-op.
    """
    idle = trainer(setup.device, max_steps=1)
    module.trainer = idle
    module.configure_model()
    module.trainer = None  # type: ignore[assignment]
    data.trainer = idle
    data.setup("fit")
    return module.to(setup.device).train(), data.train_dataloader()


def synchronize(device: torch.device) -> None:
    """Wait for the GPU's queued work, so a clock reads the time the work took."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def synchronize_after(obj: object, names: Sequence[str], device: torch.device) -> None:
    """On a GPU, make each of ``obj``'s methods ``names`` wait for its kernels before returning.

    Profilers time Python calls; without this a call returns once its kernels are queued, and
    their time shows up in whichever later call waits first.
    """
    if device.type != "cuda":
        return
    for name in names:
        method = getattr(obj, name)

        @functools.wraps(method)
        def waiting(*args: Any, _method=method, **kwargs: Any) -> Any:
            result = _method(*args, **kwargs)
            torch.cuda.synchronize(device)
            return result

        setattr(obj, name, waiting)


class StepTimer(L.Callback):
    """Notes the time at the start of every training step, after the GPU's queue has drained."""

    def __init__(self) -> None:
        self.stamps: list[float] = []

    def on_train_batch_start(self, trainer: L.Trainer, pl_module, batch, batch_idx: int) -> None:
        synchronize(pl_module.device)
        self.stamps.append(time.perf_counter())


def quiet() -> None:
    """Silence Lightning's start-up notes and the warnings of loops run outside a Trainer."""
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")


def markdown_table(
    header: Sequence[str], rows: Sequence[Sequence[Any]], text_columns: int = 1
) -> str:
    """A Markdown table: the first ``text_columns`` columns left-aligned, the numbers right."""
    align = ["---"] * text_columns + ["---:"] * (len(header) - text_columns)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


# --- Sections of results.md measured apart from the suite ------------------------------------


def kept_section(path: Path, heading: str) -> str:
    """The section under ``heading`` a results file holds (with a blank line before it), or ""."""
    text = path.read_text() if path.exists() else ""
    if heading not in text:
        return ""
    rest = text[text.index(heading) :]
    end = rest.find("\n## ", 1)
    return "\n" + (rest if end < 0 else rest[: end + 1])


def replace_section(path: Path, heading: str, section: str) -> None:
    """Replace (or add) the section under ``heading`` of a results file."""
    text = path.read_text() if path.exists() else ""
    if heading in text:
        before, _, rest = text.partition(heading)
        after = rest[rest.find("\n## ") :] if "\n## " in rest else ""
        text = before + section + after
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)
