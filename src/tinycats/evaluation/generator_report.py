"""One evaluation of a trained DiT: FID and KID overall, per breed, of held-out real photos and
over guidance scales, and the memorisation check, gathered in a ``GeneratorReport``."""

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from tinycats.evaluation.generator_metrics import (
    KID_SUBSETS,
    Score,
    extract_features,
    fid_kid,
    format_scores,
    scores_by_class,
)
from tinycats.evaluation.memorisation import (
    distance_summary,
    format_summaries,
    nearest_neighbours,
    save_nearest_pairs,
)
from tinycats.models.generator import DiTGenerator
from tinycats.models.performance import autocast


@dataclass(frozen=True)
class Sampling:
    """How the samples of one evaluation are drawn (the sweep changes only ``cfg_scale``)."""

    samples_per_class: int
    cfg_scale: float
    seed: int = 0
    steps: int = 50
    method: str = "euler"
    batch_size: int = 200
    precision: str | None = None  # bf16-mixed: the sampler runs in bf16


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
    sampling: Sampling,
    *,
    feature_name: str,
    sweep: Sequence[float] = (),
    show: int = 8,
    pairs_path: Path | None = None,
) -> GeneratorReport:
    """Score samples of every class against real (uint8) images, and look for copies of them."""
    names = model.class_labels
    labels = torch.arange(len(names)).repeat_interleave(sampling.samples_per_class)
    samples = generate_uint8(model, labels, sampling)
    features = _Features(extractor, sampling.batch_size, train[0], samples, held_out[0])
    scores = scores_by_class(
        features.train,
        train[1],
        features.samples,
        labels,
        names,
        steps=sampling.steps,
        cfg_scale=sampling.cfg_scale,
    )
    swept = [
        scores[0]
        if scale == sampling.cfg_scale
        else _score_all(model, labels, sampling, scale, features)
        for scale in sweep  # the same labels and noise at every scale: only guidance differs
    ]
    memorisation, closest = _memorisation(features, [names[i] for i in labels.tolist()], show)
    if pairs_path is not None and closest:
        captions = [
            f"{c['breed']}, distance {c['distance']:.2f} to train #{c['train_index']}"
            for c in closest
        ]
        shown = [c["sample"] for c in closest]
        nearest = [c["train_index"] for c in closest]
        save_nearest_pairs(samples[shown], train[0][nearest], captions, pairs_path)
    return GeneratorReport(
        setting={
            **asdict(sampling),
            "reference": "the training split",
            "num_train": features.train.shape[0],
            "num_held_out": held_out[0].shape[0],
            "feature_extractor": feature_name,
            "kid_subsets": KID_SUBSETS,
        },
        scores=scores,
        reference=features.reference_scores(),
        sweep=swept,
        memorisation=memorisation,
        closest=closest,
    )


class _Features:
    """The features of the training images, the samples and the held-out photos, each once."""

    def __init__(
        self,
        extractor: nn.Module,
        batch_size: int,
        train: Tensor,
        samples: Tensor,
        held_out: Tensor,
    ) -> None:
        self.extractor, self.batch_size = extractor, batch_size
        self.train = self.of(train)
        self.samples = self.of(samples)
        self.held_out = self.of(held_out) if held_out.shape[0] else None

    def of(self, images: Tensor) -> Tensor:
        """The features of ``images``."""
        return extract_features(self.extractor, images, self.batch_size)

    def reference_scores(self) -> list[Score]:
        """The held-out real photos scored as samples are: about the best a model can reach."""
        if self.held_out is None or self.held_out.shape[0] < 2:
            return []
        figures = fid_kid(self.train, self.held_out)
        return [
            Score(
                "held-out real", self.held_out.shape[0], self.train.shape[0], None, None, *figures
            )
        ]


def _memorisation(
    features: _Features, breeds: list[str], show: int
) -> tuple[dict[str, dict[str, float]], list[dict[str, Any]]]:
    """The distances to the nearest training image (of the samples and of held-out photos), and
    the ``show`` samples closest to one: a person should look at those, copies would be there."""
    distances, nearest = nearest_neighbours(features.samples, features.train)
    memorisation = {"samples": distance_summary(distances)}
    if features.held_out is not None:
        held_out_distances, _ = nearest_neighbours(features.held_out, features.train)
        memorisation["held-out real"] = distance_summary(held_out_distances)
    closest = [
        {
            "sample": i,
            "breed": breeds[i],
            "train_index": nearest[i].item(),
            "distance": distances[i].item(),
        }
        for i in distances.argsort()[:show].tolist()
    ]
    return memorisation, closest


def _score_all(
    model: DiTGenerator, labels: Tensor, sampling: Sampling, cfg_scale: float, features: _Features
) -> Score:
    """FID and KID of all breeds together, sampled at ``cfg_scale``."""
    images = generate_uint8(model, labels, sampling, cfg_scale)
    figures = fid_kid(features.train, features.of(images))
    return Score(
        "all", labels.shape[0], features.train.shape[0], sampling.steps, cfg_scale, *figures
    )


@torch.no_grad()
def generate_uint8(
    model: DiTGenerator, labels: Tensor, sampling: Sampling, cfg_scale: float | None = None
) -> Tensor:
    """Samples of the given classes as uint8 images, in batches, the same for the same seed
    (at ``sampling.cfg_scale`` unless ``cfg_scale`` is given)."""
    batches = []
    size = sampling.batch_size
    for number, start in enumerate(range(0, labels.shape[0], size)):
        # Each batch its own noise, fixed by (seed, batch number); ints hash alike in every run.
        batch_seed = hash((sampling.seed, number)) & 0x7FFF_FFFF_FFFF_FFFF
        with autocast(sampling.precision, model.device):
            images = model.generate(
                labels[start : start + size],
                seed=batch_seed,
                steps=sampling.steps,
                cfg_scale=sampling.cfg_scale if cfg_scale is None else cfg_scale,
                method=sampling.method,
            )
        # Rounded to 8 bits like the real photos, which FID compares them with.
        batches.append(images.mul(255).round().to(torch.uint8).cpu())
    return torch.cat(batches)
