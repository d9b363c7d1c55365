"""``tinycats evaluate``: FID and KID of a trained TinyDiT, overall, per breed and over
guidance scales, and a check that it does not copy its training images."""

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor

from tinycats.commands.parsing import call_with_args
from tinycats.data import PetsDataModule
from tinycats.errors import TinyCatsError
from tinycats.evaluation.generator_metrics import INCEPTION_NAME, inception_extractor
from tinycats.evaluation.generator_report import GeneratorReport, Sampling, evaluate_generator
from tinycats.models.generator import DiTGenerator
from tinycats.models.performance import choose_precision
from tinycats.networks.flow import Method
from tinycats.runs.loading import load_trained
from tinycats.runs.run_dir import CONFIG, RunDir, read_config

log = logging.getLogger(__name__)

REPORT_NAME = "generator_eval.json"
PAIRS_NAME = "nearest_training_images.png"

DESCRIPTION = f"""\
Measure a TinyDiT trained by `tinycats fit -c configs/dit.yaml` (its EMA weights):

  FID and KID   of --n samples per breed against the run's training images, for all breeds
                together and for each breed against its own photos, with Inception-v3 features
                (the standard FID network, through torchmetrics). Lower is better. Each printed
                row states its number of samples, ODE steps and guidance scale: FID falls as the
                number of samples grows, so only figures with equal counts compare.
  reference     the held-out real photos (validation and test splits) scored the same way:
                about the best a model can reach with that many images.
  --sweep       FID and KID of all breeds at several guidance scales, from the same noise.
  memorisation  the distance from each sample to its nearest training image in feature space,
                beside the same distance for held-out real photos; a model that copies has
                samples much closer than unseen photos are. The --show closest samples are
                saved beside their nearest training images as a PNG.

The data settings (folder, image size, split, seed) come from the run's {CONFIG}, so the
training split is the one the model learned from. Results go to OUT/{REPORT_NAME} and
OUT/{PAIRS_NAME} (OUT defaults to RUN/evaluation).

examples:
  tinycats evaluate --ckpt_path outputs/checkpoints/dit/2026-01-31/dit-s4-64 --n 200
  tinycats evaluate --ckpt_path RUN --n 100 --sweep [1,1.5,2,3,4,6] --steps 50
  tinycats evaluate --ckpt_path RUN --inception_weights path/to/inception.pth
"""


@dataclass(frozen=True)
class DataLocation:
    """Where the run's data is now, if not where the run had it.

    Args:
        root: the data cache folder.
        source: the image folder.
    """

    root: str | None = None
    source: str | None = None


def load_real_images(run_dir: Path, location: DataLocation = DataLocation()) -> PetsDataModule:
    """The run's data module (the data settings of the config it saved), set up with its seeded split."""
    config = RunDir(run_dir).config
    if not config.is_file():
        raise TinyCatsError(
            f"{config} does not exist: evaluate reads the data settings from the run's "
            f"{CONFIG}. Pass a run directory of `tinycats fit`, or a checkpoint inside one."
        )
    settings = read_config(config).get("data") or {}
    settings.update({key: value for key, value in asdict(location).items() if value is not None})
    try:
        datamodule = PetsDataModule(**settings)
    except TypeError as err:  # a config written by another version of tinycats
        raise TinyCatsError(f"Cannot read the data settings of {config}: {err}.") from err
    datamodule.prepare_data()
    datamodule.setup("fit")
    return datamodule


def main(argv: list[str]) -> None:
    """Parse the ``tinycats evaluate`` arguments (or a ``--config`` file) and evaluate."""
    call_with_args(evaluate, argv, "tinycats evaluate", DESCRIPTION, renamed={"cfg": "cfg_scale"})


def evaluate(
    ckpt_path: Path,
    n: int = 200,
    steps: int = 50,
    cfg_scale: float = 3.0,
    sweep: tuple[float, ...] = (),
    method: Method = "euler",
    seed: int = 0,
    show: int = 8,
    inception_weights: str | None = None,
    data: DataLocation = DataLocation(),
    batch_size: int = 200,
    out: Path | None = None,
) -> None:
    """Evaluate a trained TinyDiT, print the report and save it with the closest samples.

    Args:
        ckpt_path: a DiT checkpoint inside a run directory, or the run directory (its newest
            readable checkpoint is used).
        n: samples per breed (200 is about as many as each breed has photos).
        steps: ODE steps from noise to image.
        cfg_scale: classifier-free guidance scale of the main scores; 1 turns guidance off.
        sweep: guidance scales to score all breeds at, e.g. [1, 2, 3, 4].
        method: ODE solver.
        seed: seed of the samples' noise.
        show: how many of the samples closest to a training image to save beside it as a PNG.
        inception_weights: a local copy of the FID Inception weights
            (weights-inception-2015-12-05-6726825d.pth); none: torch-fidelity's download,
            cached in ~/.cache/torch/hub/checkpoints.
        data: where the run's data is, if not where the run had it.
        batch_size: images per sampling and feature batch.
        out: folder for the report and the PNG (none: RUN/evaluation).
    """
    _check_counts(n, steps, batch_size, show)
    ckpt = Path(ckpt_path)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, datamodule = _trained_model_and_its_data(ckpt, data, device)
    sampling = Sampling(
        samples_per_class=n,
        cfg_scale=cfg_scale,
        seed=seed,
        steps=steps,
        method=method,
        batch_size=batch_size,
        precision=_sampling_precision(model, device),
    )
    out = Path(out) if out else (ckpt if ckpt.is_dir() else ckpt.parent) / "evaluation"
    report = evaluate_generator(
        model,
        *_train_and_held_out(datamodule),
        inception_extractor(inception_weights).to(device),
        sampling,
        feature_name=INCEPTION_NAME,
        sweep=sweep,
        show=show,
        pairs_path=out / PAIRS_NAME,
    )
    _save_and_print(report, ckpt, out, show)


def _save_and_print(report: GeneratorReport, ckpt: Path, out: Path, show: int) -> None:
    """Write the report's JSON into ``out`` (where the PNG is) and print its tables."""
    out.mkdir(parents=True, exist_ok=True)
    (out / REPORT_NAME).write_text(
        json.dumps({"checkpoint": str(ckpt), **report.as_dict()}, indent=1)
    )
    print(report.text())
    print(f"\nSaved {out / REPORT_NAME}" + (f" and {out / PAIRS_NAME}" if show else ""))


def _check_counts(n: int, steps: int, batch_size: int, show: int) -> None:
    """Refuse counts that cannot give a score."""
    if min(n, steps, batch_size) < 1 or show < 0:
        raise TinyCatsError("--n, --steps and --batch_size must be at least 1, --show at least 0.")
    if n < 2:
        raise TinyCatsError("--n must be at least 2: FID needs two samples per breed.")


def _train_and_held_out(datamodule: PetsDataModule) -> tuple[tuple[Tensor, Tensor], ...]:
    """The (images, labels) of the training split, and of validation and test together."""
    splits = datamodule.datasets
    train = splits["train"].tensors
    held_out = tuple(torch.cat([splits[s].tensors[i] for s in ("val", "test")]) for i in (0, 1))
    return train, held_out


def _sampling_precision(model: DiTGenerator, device: torch.device) -> str | None:
    """The precision ``tinycats fit`` would train ``model`` in on ``device``, logged."""
    precision = choose_precision(None, device.type, model)
    log.info(
        "Sampling precision: %s, as %s (features and scores in float32).",
        precision.precision or "32-true",
        precision.reason,
    )
    return precision.precision


def _trained_model_and_its_data(
    ckpt: Path, location: DataLocation, device: torch.device
) -> tuple[DiTGenerator, PetsDataModule]:
    """The DiT at ``ckpt`` (on ``device``, in eval mode) and its run's data, refused when their
    classes differ."""
    model = load_trained(ckpt, DiTGenerator)
    datamodule = load_real_images(ckpt if ckpt.is_dir() else ckpt.parent, location)
    if list(datamodule.class_names) != model.class_labels:
        raise TinyCatsError(
            f"The data's classes ({', '.join(datamodule.class_names)}) are not the model's "
            f"({', '.join(model.class_labels)}): check --data.source."
        )
    return model.to(device).eval(), datamodule
