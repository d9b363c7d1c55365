"""Does the generator copy its training images? Nearest training neighbours in feature space.

A model that memorises draws samples that sit much closer to some training image than unseen
real photos do. So the distance from each sample to its nearest training image is compared with
the same distance for held-out real images, and a few samples are shown beside their neighbour.
"""

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from tinycats.models.grid import save_labelled_grid

QUANTILES = {"min": 0.0, "p05": 0.05, "p25": 0.25, "median": 0.5, "p75": 0.75, "max": 1.0}
MIN_SHOWN_SIZE = 96  # pixels: smaller images are enlarged in the PNG so a person can compare them


def nearest_neighbours(
    queries: Tensor, references: Tensor, batch_size: int = 1024
) -> tuple[Tensor, Tensor]:
    """The Euclidean distance from each query (N, D) to its nearest reference (M, D), and which."""
    distances, indices = [], []
    for start in range(0, queries.shape[0], batch_size):
        # Batched so N x M distances never sit in memory at once.
        found = torch.cdist(queries[start : start + batch_size].double(), references.double())
        distance, index = found.min(dim=1)
        distances.append(distance)
        indices.append(index)
    return torch.cat(distances), torch.cat(indices)


def distance_summary(distances: Tensor) -> dict[str, float]:
    """The count, mean and quantiles (min, 5 %, 25 %, median, 75 %, max) of distances."""
    levels = torch.tensor(list(QUANTILES.values()), dtype=torch.float64)
    values = torch.quantile(distances.double(), levels).tolist()
    return {
        "count": distances.numel(),
        "mean": distances.double().mean().item(),
        **dict(zip(QUANTILES, values, strict=True)),
    }


def format_summaries(summaries: dict[str, dict[str, float]]) -> str:
    """A plain-text table of distance summaries, one row per named set."""
    width = max(len(name) for name in summaries)
    columns = ["count", *QUANTILES]
    lines = [f"{'':<{width}}  " + "  ".join(f"{c:>8}" for c in columns)]
    for name, summary in summaries.items():
        cells = [f"{summary['count']:>8d}", *(f"{summary[c]:>8.3f}" for c in QUANTILES)]
        lines.append(f"{name:<{width}}  " + "  ".join(cells))
    return "\n".join(lines)


def save_nearest_pairs(
    samples: Tensor,
    neighbours: Tensor,
    labels: Sequence[str],
    path: Path,
) -> None:
    """Save a PNG with one labelled row per sample: the sample (left) and its nearest neighbour."""
    pairs = torch.stack([samples, neighbours], dim=1).flatten(0, 1).float().div(255)
    if pairs.shape[-1] < MIN_SHOWN_SIZE:
        factor = -(-MIN_SHOWN_SIZE // pairs.shape[-1])  # ceiling division
        pairs = F.interpolate(pairs, scale_factor=factor, mode="nearest")
    save_labelled_grid(pairs, labels, path)
