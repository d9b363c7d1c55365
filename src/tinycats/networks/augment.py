"""Batched augmentation on uint8 image batches, on whatever device the batch is on.

Running on the whole batch after it reached the device keeps the data loader trivial (no
workers needed) and the draws reproducible from a per-step generator.
"""

import torch
import torch.nn.functional as F


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``[0, 255]`` → float ``[0, 1]``."""
    return images.float().div_(255)


def random_flip(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mirror a random half of the batch left-right."""
    flip = torch.rand(images.shape[0], generator=generator) < 0.5
    return torch.where(flip.to(images.device)[:, None, None, None], images.flip(-1), images)


def random_resized_crop(
    images: torch.Tensor, generator: torch.Generator, scale: tuple[float, float] = (0.5, 1.0)
) -> torch.Tensor:
    """Zoom each image onto a random square covering ``scale`` of its area, at the same size."""
    batch = images.shape[0]
    side = torch.empty(batch).uniform_(*scale, generator=generator).sqrt()
    # The crop centre may move as far as keeps the crop inside the image.
    shift = (torch.rand(batch, 2, generator=generator) * 2 - 1) * (1 - side)[:, None]
    theta = torch.zeros(batch, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = side
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta.to(images), list(images.shape), align_corners=False)
    return F.grid_sample(
        images, grid, mode="bilinear", padding_mode="reflection", align_corners=False
    )


def color_jitter(
    images: torch.Tensor, generator: torch.Generator, strength: float = 0.2
) -> torch.Tensor:
    """Scale brightness and contrast of each image by a random factor in ``1 ± strength``."""
    batch = images.shape[0]
    brightness, contrast = (
        (1 + (torch.rand(batch, generator=generator) * 2 - 1) * strength).to(images)[
            :, None, None, None
        ]
        for _ in range(2)
    )
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    return ((images * brightness - mean) * contrast + mean).clamp_(0, 1)
