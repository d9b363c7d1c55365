"""``tinycats evaluate``: FID and KID of a trained TinyDiT, overall, per breed and over
guidance scales, and a check that it does not copy its training images."""

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from tinycats.commands.parsing import call_with_args
from tinycats.data import PetsDataModule
from tinycats.errors import TinyCatsError
from tinycats.evaluation.generator_metrics import (
    INCEPTION_NAME,
    KID_SUBSETS,
    Score,
    extract_features,
    fid_kid,
    format_scores,
    inception_extractor,
    scores_by_class,
)
from tinycats.evaluation.memorisation import (
    distance_summary,
    format_summaries,
    nearest_neighbours,
    save_nearest_pairs,
)
from tinycats.models.generator import DiTGenerator
from tinycats.models.performance import autocast, choose_precision
from tinycats.networks.flow import Method
from tinycats.runs.loading import load_trained
from tinycats.runs.run_dir import read_config

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

The data settings (folder, image size, split, seed) come from the run's config.yaml, so the
training split is the one the model learned from. Results go to OUT/{REPORT_NAME} and
OUT/{PAIRS_NAME} (OUT defaults to RUN/evaluation).

examples:
  tinycats evaluate --ckpt_path outputs/checkpoints/dit/2026-01-31/dit-s4-64 --n 200
  tinycats evaluate --ckpt_path RUN --n 100 --sweep [1,1.5,2,3,4,6] --steps 50
  tinycats evaluate --ckpt_path RUN --inception_weights path/to/inception.pth
"""


@dataclass
class GeneratorReport:
    """Everything one evaluation measured, and how."""

    setting: dict[str, Any]
    scores: list[Score]
    reference: list[Score]
    sweep: list[Score]
    memorisation: dict[str, dict[str, float]]
    closest: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """The report as a JSON-ready dict."""
        scores = {
            name: [s.as_dict() for s in getattr(self, name)]
            for name in ("scores", "reference", "sweep")
        }
        return {
            "setting": self.setting,
            **scores,
            "memorisation": self.memorisation,
            "closest_samples": self.closest,
        }

    def text(self) -> str:
        """The report as the tables the command prints."""
        s = self.setting
        parts = [
            f"FID and KID against {s['num_train']} training images ({s['feature_extractor']}); "
            f"{s['method']} sampler, seed {s['seed']}; KID over {s['kid_subsets']} subsets",
            format_scores([*self.scores, *self.reference]),
        ]
        if self.sweep:
            parts += ["", "Guidance sweep (all breeds, same noise):", format_scores(self.sweep)]
        parts += [
            "",
            "Distance to the nearest training image (Euclidean, in feature space):",
            format_summaries(self.memorisation),
        ]
        return "\n".join(parts)


def evaluate_generator(
    model: DiTGenerator,
    train: tuple[Tensor, Tensor],
    held_out: tuple[Tensor, Tensor],
    extractor: nn.Module,
    *,
    feature_name: str,
    samples_per_class: int,
    steps: int,
    cfg_scale: float,
    sweep: Sequence[float] = (),
    method: str = "euler",
    seed: int = 0,
    show: int = 8,
    batch_size: int = 200,
    pairs_path: Path | None = None,
    precision: str | None = None,
) -> GeneratorReport:
    """Score samples of every class against real (uint8) images, and look for copies of them."""
    names = model.class_labels
    labels = torch.arange(len(names)).repeat_interleave(samples_per_class)
    draw = {
        "seed": seed,
        "steps": steps,
        "method": method,
        "batch_size": batch_size,
        "precision": precision,
    }
    samples = generate_uint8(model, labels, cfg_scale=cfg_scale, **draw)
    train_features = extract_features(extractor, train[0], batch_size)
    sample_features = extract_features(extractor, samples, batch_size)
    scores = scores_by_class(
        train_features, train[1], sample_features, labels, names, steps=steps, cfg_scale=cfg_scale
    )
    num_held_out = held_out[0].shape[0]
    held_out_features = (
        extract_features(extractor, held_out[0], batch_size) if num_held_out else None
    )
    reference = []
    if num_held_out >= 2:
        figures = fid_kid(train_features, held_out_features)
        reference.append(
            Score("held-out real", num_held_out, train_features.shape[0], None, None, *figures)
        )

    swept = []
    for scale in sweep:  # the same labels and noise at every scale: only guidance differs
        if scale == cfg_scale:
            swept.append(scores[0])
            continue
        images = generate_uint8(model, labels, cfg_scale=scale, **draw)
        figures = fid_kid(train_features, extract_features(extractor, images, batch_size))
        swept.append(Score("all", labels.shape[0], train_features.shape[0], steps, scale, *figures))

    distances, nearest = nearest_neighbours(sample_features, train_features)
    memorisation = {"samples": distance_summary(distances)}
    if held_out_features is not None:
        held_out_distances, _ = nearest_neighbours(held_out_features, train_features)
        memorisation["held-out real"] = distance_summary(held_out_distances)
    # The closest samples are the ones a person should look at: copies would be among them.
    closest = distances.argsort()[:show].tolist()
    described = [
        {
            "sample": i,
            "breed": names[labels[i]],
            "train_index": nearest[i].item(),
            "distance": distances[i].item(),
        }
        for i in closest
    ]
    if pairs_path is not None and closest:
        captions = [
            f"{d['breed']}, distance {d['distance']:.2f} to train #{d['train_index']}"
            for d in described
        ]
        save_nearest_pairs(samples[closest], train[0][nearest[closest]], captions, pairs_path)
    return GeneratorReport(
        setting={
            "samples_per_class": samples_per_class,
            "cfg_scale": cfg_scale,
            **draw,
            "reference": "the training split",
            "num_train": train_features.shape[0],
            "num_held_out": num_held_out,
            "feature_extractor": feature_name,
            "kid_subsets": KID_SUBSETS,
        },
        scores=scores,
        reference=reference,
        sweep=swept,
        memorisation=memorisation,
        closest=described,
    )


@torch.no_grad()
def generate_uint8(
    model: DiTGenerator,
    labels: Tensor,
    *,
    seed: int,
    steps: int,
    cfg_scale: float,
    method: str,
    batch_size: int,
    precision: str | None = None,
) -> Tensor:
    """Samples of the given classes as uint8 images, in batches, the same for the same seed;
    the sampler runs in bf16 where ``precision`` is bf16-mixed."""
    batches = []
    for number, start in enumerate(range(0, labels.shape[0], batch_size)):
        # Each batch its own noise, fixed by (seed, batch number); ints hash alike in every run.
        batch_seed = hash((seed, number)) & 0x7FFF_FFFF_FFFF_FFFF
        with autocast(precision, model.device):
            images = model.generate(
                labels[start : start + batch_size],
                seed=batch_seed,
                steps=steps,
                cfg_scale=cfg_scale,
                method=method,
            )
        # Rounded to 8 bits like the real photos, which FID compares them with.
        batches.append(images.mul(255).round().to(torch.uint8).cpu())
    return torch.cat(batches)


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
    """The run's data module (its config.yaml's data settings), set up with its seeded split."""
    config = run_dir / "config.yaml"
    if not config.is_file():
        raise TinyCatsError(
            f"{config} does not exist: evaluate reads the data settings from the run's "
            "config.yaml. Pass a run directory of `tinycats fit`, or a checkpoint inside one."
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
    if min(n, steps, batch_size) < 1 or show < 0:
        raise TinyCatsError("--n, --steps and --batch_size must be at least 1, --show at least 0.")
    if n < 2:
        raise TinyCatsError("--n must be at least 2: FID needs two samples per breed.")
    ckpt = Path(ckpt_path)
    model = load_trained(ckpt, DiTGenerator)
    run_dir = ckpt if ckpt.is_dir() else ckpt.parent
    datamodule = load_real_images(run_dir, data)
    if list(datamodule.class_names) != model.class_labels:
        raise TinyCatsError(
            f"The data's classes ({', '.join(datamodule.class_names)}) are not the model's "
            f"({', '.join(model.class_labels)}): check --data.source."
        )
    splits = datamodule.datasets
    train = splits["train"].tensors
    held_out = tuple(torch.cat([splits[s].tensors[i] for s in ("val", "test")]) for i in (0, 1))

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device).eval()
    precision = choose_precision(None, device.type, model)
    log.info(
        "Sampling precision: %s, as %s (features and scores in float32).",
        precision.precision or "32-true",
        precision.reason,
    )
    extractor = inception_extractor(inception_weights).to(device)
    out = Path(out) if out else run_dir / "evaluation"
    report = evaluate_generator(
        model,
        train,
        held_out,
        extractor,
        feature_name=INCEPTION_NAME,
        samples_per_class=n,
        steps=steps,
        cfg_scale=cfg_scale,
        sweep=sweep,
        method=method,
        seed=seed,
        show=show,
        batch_size=batch_size,
        pairs_path=out / PAIRS_NAME,
        precision=precision.precision,
    )
    out.mkdir(parents=True, exist_ok=True)
    document = {"checkpoint": str(ckpt), **report.as_dict()}
    (out / REPORT_NAME).write_text(json.dumps(document, indent=1))
    print(report.text())
    print(f"\nSaved {out / REPORT_NAME}" + (f" and {out / PAIRS_NAME}" if show else ""))
