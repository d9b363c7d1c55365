"""FID and KID of generated images against real photos, overall and per class, via torchmetrics.

Features are extracted once per image set and then fed to torchmetrics' FID and KID through a
pass-through module: the overall score, every per-breed score, a guidance sweep and the
memorisation check all reuse the same features instead of running Inception again for each.
Any ``nn.Module`` that maps uint8 images (N, 3, H, W) to features (N, D) can stand in for
Inception; the tests use a small random one.
"""

import logging
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn
from torchmetrics.image.fid import FrechetInceptionDistance, NoTrainInceptionV3
from torchmetrics.image.kid import KernelInceptionDistance
from torchmetrics.utilities.imports import _TORCH_FIDELITY_AVAILABLE

from tinycats.errors import TinyCatsError

log = logging.getLogger(__name__)

INCEPTION_WEIGHTS_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
    "weights-inception-2015-12-05-6726825d.pth"
)
INCEPTION_NAME = "Inception-v3 (FID weights), 2048-d pool features"
KID_SUBSETS = 100
KID_MAX_SUBSET_SIZE = 1000  # the usual KID subset; smaller sets use all their images


def inception_extractor(weights_path: str | None = None) -> nn.Module:
    """The standard FID Inception-v3 (2048-d pool features of uint8 images of any size)."""
    if not _TORCH_FIDELITY_AVAILABLE:
        raise TinyCatsError(
            "FID and KID with Inception need torch-fidelity: pip install torch-fidelity."
        )
    try:
        return NoTrainInceptionV3(
            name="inception-v3-compat",
            features_list=["2048"],
            feature_extractor_weights_path=weights_path,
        )
    except OSError as err:  # no network (URLError), or a missing or unreadable file
        raise TinyCatsError(
            f"Cannot load the Inception weights ({err}). Download {INCEPTION_WEIGHTS_URL} where "
            "there is a network and pass its path with --inception_weights."
        ) from err


@torch.no_grad()
def extract_features(extractor: nn.Module, images: Tensor, batch_size: int = 200) -> Tensor:
    """Features (N, D) in float64 on the CPU of uint8 images (N, 3, H, W), in batches."""
    device = next(extractor.parameters()).device
    batches = [
        extractor(images[i : i + batch_size].to(device)).double().cpu()
        for i in range(0, images.shape[0], batch_size)
    ]
    return torch.cat(batches)


class _PassThrough(nn.Module):
    """Hands precomputed features to torchmetrics, which runs its ``feature`` module on inputs."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features  # read by torchmetrics instead of probing with an image

    def forward(self, features: Tensor) -> Tensor:
        return features


def fid_kid(real: Tensor, fake: Tensor, seed: int = 0) -> tuple[float, float, float]:
    """FID, and KID's mean and std over random subsets, between two sets of features (N, D)."""
    if min(real.shape[0], fake.shape[0]) < 2:
        raise ValueError(
            f"FID needs at least 2 features per set, got {real.shape[0]} and {fake.shape[0]}"
        )
    features = _PassThrough(real.shape[1])
    fid = FrechetInceptionDistance(feature=features)
    with warnings.catch_warnings():
        # KID warns that it keeps every feature in memory: these features are there already.
        warnings.filterwarnings("ignore", message=".*will save all extracted features")
        kid = KernelInceptionDistance(
            feature=features,
            subsets=KID_SUBSETS,
            subset_size=min(KID_MAX_SUBSET_SIZE, real.shape[0], fake.shape[0]),
        )
    for metric in (fid, kid):  # float64 features in, float64 figures out
        metric.update(real, real=True)
        metric.update(fake, real=False)
    # KID draws its subsets from the global generator: fork it, so the score is repeatable.
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        kid_mean, kid_std = kid.compute()
    return fid.compute().item(), kid_mean.item(), kid_std.item()


@dataclass(frozen=True)
class Score:
    """FID and KID of one group of samples, with everything needed to read the figures."""

    group: str
    num_samples: int
    num_real: int
    steps: int | None
    cfg_scale: float | None
    fid: float
    kid_mean: float
    kid_std: float

    def as_dict(self) -> dict:
        """The score as a JSON-ready dict."""
        return asdict(self)


def scores_by_class(
    real: Tensor,
    real_labels: Tensor,
    fake: Tensor,
    fake_labels: Tensor,
    class_names: Sequence[str],
    *,
    steps: int | None,
    cfg_scale: float | None,
) -> list[Score]:
    """The score of all samples against all real images, then of each class against its own."""
    setting = {"steps": steps, "cfg_scale": cfg_scale}
    scores = [Score("all", fake.shape[0], real.shape[0], **setting, **_named(fid_kid(real, fake)))]
    for index, name in enumerate(class_names):
        real_part, fake_part = real[real_labels == index], fake[fake_labels == index]
        if min(real_part.shape[0], fake_part.shape[0]) < 2:
            log.warning(
                "No FID for %s: %d real images and %d samples (needs 2 of each).",
                name,
                real_part.shape[0],
                fake_part.shape[0],
            )
            continue
        figures = _named(fid_kid(real_part, fake_part))
        scores.append(Score(name, fake_part.shape[0], real_part.shape[0], **setting, **figures))
    return scores


def format_scores(scores: Sequence[Score]) -> str:
    """A plain-text table of scores: every row shows its sample count, steps and guidance."""
    width = max(len("group"), *(len(s.group) for s in scores))
    header = (
        f"{'group':<{width}}  {'samples':>7}  {'real':>5}  {'steps':>5}  {'guidance':>8}  "
        f"{'FID':>8}  {'KID x 1000':>14}"
    )
    lines = [header]
    for s in scores:
        steps = "-" if s.steps is None else str(s.steps)
        guidance = "-" if s.cfg_scale is None else f"{s.cfg_scale:g}"
        kid = f"{1000 * s.kid_mean:.2f} ± {1000 * s.kid_std:.2f}"
        lines.append(
            f"{s.group:<{width}}  {s.num_samples:>7}  {s.num_real:>5}  {steps:>5}  "
            f"{guidance:>8}  {s.fid:>8.2f}  {kid:>14}"
        )
    return "\n".join(lines)


def _named(figures: tuple[float, float, float]) -> dict[str, float]:
    return dict(zip(("fid", "kid_mean", "kid_std"), figures, strict=True))
