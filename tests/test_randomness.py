"""Training randomness: a pure function of (seed, step, rank), drawn where it is used."""

import torch

from tinycats.networks import randomness
from tinycats.networks.randomness import generator_on, step_generator


def test_the_step_generator_repeats_for_the_same_seed_step_and_rank() -> None:
    draws = {
        key: torch.rand(4, generator=step_generator(*key))
        for key in [(0, 5, 0), (0, 6, 0), (0, 5, 1)]
    }
    assert torch.equal(torch.rand(4, generator=step_generator(0, 5, 0)), draws[0, 5, 0])
    assert not torch.equal(draws[0, 5, 0], draws[0, 6, 0])
    assert not torch.equal(draws[0, 5, 0], draws[0, 5, 1])


def test_a_generator_already_on_the_device_is_used_as_it_is() -> None:
    generator = step_generator(0, 1)
    assert generator_on(torch.device("cpu"), generator) is generator


def test_a_generator_for_another_device_is_seeded_by_the_step_generator(monkeypatch) -> None:
    asked: list[str] = []

    class Accelerator(torch.Generator):
        """Stands in for a GPU generator here: notes the device, draws on the CPU."""

        def __new__(cls, device: str = "cpu") -> "Accelerator":
            asked.append(str(device))
            return super().__new__(cls)

        def __init__(self, device: str = "cpu") -> None:
            super().__init__()

    def noise(step: int) -> torch.Tensor:
        with monkeypatch.context() as patch:
            patch.setattr(randomness.torch, "Generator", Accelerator)
            on_gpu = generator_on(torch.device("cuda"), step_generator(0, step))
        return torch.randn(8, generator=on_gpu)

    assert torch.equal(noise(3), noise(3))  # a resumed run draws the same noise at step 3
    assert not torch.equal(noise(3), noise(4))
    assert asked.count("cuda") == 4
