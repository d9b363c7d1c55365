"""The DiT's EMA: which way the decay points and after which steps it updates."""

from collections.abc import Iterator

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from tinycats.models import DiTGenerator
from tinycats.models.ema import GeneratorEMA

from helpers.dit import TINY_DIT

SIZE = 16


class LiveWeights(L.Callback):
    """Records the live (trained) weights after every optimizer step, by global step."""

    def __init__(self) -> None:
        self.after_step: dict[int, dict[str, torch.Tensor]] = {}

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args) -> None:
        state = pl_module.state_dict()
        self.after_step[trainer.global_step] = {k: v.detach().clone() for k, v in state.items()}


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_the_ema_updates_at_its_cadence_in_the_direction_of_its_decay() -> None:
    decay, start, every, steps = 0.9, 2, 3, 8
    model = DiTGenerator(
        num_classes=2,
        **TINY_DIT,
        image_size=SIZE,
        lr=1e-2,
        warmup_fraction=0,
        ema_decay=decay,
        ema_start_step=start,
        ema_every_n_steps=every,
    )
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (8, 3, SIZE, SIZE), dtype=torch.uint8, generator=g)
    loader = DataLoader(TensorDataset(images, torch.randint(0, 2, (8,), generator=g)), batch_size=4)
    live = LiveWeights()
    trainer = L.Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        callbacks=[live],
    )
    trainer.fit(model, loader)

    # Lightning counts steps from 0 for should_update: step index 3 ends global step 4. From
    # index start_step on, every `every`-th one: here after global steps 4 and 7 (of 8).
    first, second = live.after_step[4], live.after_step[7]
    expected = {k: decay * first[k] + (1 - decay) * second[k] for k in first}
    ema = next(cb for cb in trainer.callbacks if isinstance(cb, GeneratorEMA)).averaged.state_dict()
    weights = [k for k in expected if expected[k].is_floating_point()]
    changed = [k for k in weights if not torch.allclose(first[k], second[k])]
    assert changed, "the weights must move between the two updates for the test to mean anything"
    for name in weights:
        torch.testing.assert_close(ema[name], expected[name], msg=f"EMA {name}")
    final = live.after_step[steps]
    assert any(not torch.allclose(ema[k], final[k]) for k in changed)  # not the live weights
