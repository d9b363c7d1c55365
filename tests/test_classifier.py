"""CatClassifier: what its network sees in validation."""

import pytest
import torch

from tinycats.models import CatClassifier
from tinycats.models.classifier import IMAGENET_MEAN, IMAGENET_STD


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
def test_validation_sees_the_batch_only_scaled_and_normalised(monkeypatch) -> None:
    model = CatClassifier(num_classes=2, backbone="mobilenet_v3_small", augment=True).eval()
    seen: list[torch.Tensor] = []

    def network(images: torch.Tensor) -> torch.Tensor:
        seen.append(images.clone())
        return torch.zeros(images.shape[0], 2)

    monkeypatch.setattr(model.net, "forward", network)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (8, 3, 24, 24), dtype=torch.uint8, generator=g)
    model.validation_step((images, torch.randint(0, 2, (8,), generator=g)), 0)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (IMAGENET_MEAN, IMAGENET_STD))
    (network_input,) = seen
    torch.testing.assert_close(network_input, (images.float() / 255 - mean) / std)


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
@pytest.mark.parametrize("augment", [False, True])
def test_training_augments_the_batch_only_when_asked(monkeypatch, augment: bool) -> None:
    model = CatClassifier(num_classes=2, backbone="mobilenet_v3_small", augment=augment)
    seen: list[torch.Tensor] = []

    def network(images: torch.Tensor) -> torch.Tensor:
        seen.append(images.clone())
        return torch.zeros(images.shape[0], 2, requires_grad=True)

    monkeypatch.setattr(model.net, "forward", network)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (16, 3, 24, 24), dtype=torch.uint8, generator=g)
    model.training_step((images, torch.randint(0, 2, (16,), generator=g)), 0)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (IMAGENET_MEAN, IMAGENET_STD))
    plain = (images.float() / 255 - mean) / std
    (network_input,) = seen
    assert network_input.shape == plain.shape
    differs = ~torch.isclose(network_input, plain).flatten(1).all(1)
    assert differs.all() if augment else not differs.any()  # every image is jittered and cropped
