"""The batched augmentations (networks/augment.py): each changes images the way it says."""

import torch

from tinycats.networks.augment import color_jitter, random_resized_crop


def _images(batch: int = 64, size: int = 16) -> torch.Tensor:
    """Float images in [0, 1] with structure (a gradient plus noise), so a crop shows."""
    g = torch.Generator().manual_seed(0)
    ramp = torch.linspace(0.1, 0.9, size)
    return (
        ramp[None, None, None, :] + 0.05 * torch.randn(batch, 3, size, size, generator=g)
    ).clamp(0, 1)


def test_color_jitter_scales_brightness_and_contrast_within_its_strength() -> None:
    images = _images()
    jittered = color_jitter(images, torch.Generator().manual_seed(1), strength=0.2)
    assert jittered.shape == images.shape and jittered.min() >= 0 and jittered.max() <= 1
    ratio = jittered.mean(dim=(1, 2, 3)) / images.mean(dim=(1, 2, 3))
    assert ratio.min() > 0.75 and ratio.max() < 1.25  # brightness within 1 ± 0.2 (after clamping)
    assert ratio.max() - ratio.min() > 0.1  # and a different factor per image
    # Contrast: the spread about the mean moves by a factor of its own.
    contrast = jittered.std(dim=(1, 2, 3)) / images.std(dim=(1, 2, 3)) / ratio
    assert contrast.min() > 0.7 and contrast.max() < 1.3 and contrast.max() - contrast.min() > 0.1
    unchanged = color_jitter(images, torch.Generator().manual_seed(1), strength=0.0)
    torch.testing.assert_close(unchanged, images, atol=1e-6, rtol=0)


def test_random_resized_crop_zooms_in_and_full_scale_is_the_identity() -> None:
    images = _images()
    whole = random_resized_crop(images, torch.Generator().manual_seed(1), scale=(1.0, 1.0))
    torch.testing.assert_close(whole, images, atol=1e-5, rtol=0)
    zoomed = random_resized_crop(images, torch.Generator().manual_seed(1), scale=(0.25, 0.25))
    # A quarter of the area, half the side: each image's left-to-right ramp spans half its range.
    assert 0.4 < (_ramp_span(zoomed) / _ramp_span(images)).mean() < 0.6


def _ramp_span(images: torch.Tensor) -> torch.Tensor:
    """Per image: the mean of its two rightmost columns minus that of its two leftmost."""
    columns = images.mean(dim=(1, 2))
    return columns[:, -2:].mean(1) - columns[:, :2].mean(1)
