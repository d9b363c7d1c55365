"""Tests for DiTGenerator: its training inputs, validation loss, exact resume, and that it learns."""

from collections.abc import Iterator
from pathlib import Path

import lightning as L
import pytest
import torch
from PIL import Image

from tinycats.atomic import no_commit
from tinycats.data import PetsDataModule
from tinycats.models import DiTGenerator
from tinycats.models.ema import GeneratorEMA
from tinycats.models.generator import drop_labels
from tinycats.models.performance import auto_precision
from tinycats.runs.checkpointing import CheckpointPolicy, build_checkpoints

from helpers.dit import TINY_DIT

SIZE = 16
# The precision `tinycats fit` picks on this machine for the tiny DiT these tests train.
PRECISION = auto_precision(None, "cpu", DiTGenerator(num_classes=4, **TINY_DIT, image_size=SIZE))


def _pattern(kind: int, generator: torch.Generator) -> torch.Tensor:
    """One 16 px image of a class whose look is unmistakable: two solid colours, two stripes."""
    colours = torch.tensor([[0.9, 0.1, 0.1], [0.1, 0.2, 0.9], [0.1, 0.8, 0.2], [0.9, 0.8, 0.1]])
    image = colours[kind][:, None, None].expand(3, SIZE, SIZE).clone()
    if kind >= 2:  # horizontal stripes: unchanged by the left-right flip of training
        image[:, (torch.arange(SIZE) // 2) % 2 == 1, :] = 0.05
    image *= 1 + 0.15 * (torch.rand(1, generator=generator) * 2 - 1)  # a brightness per image
    image += 0.03 * torch.randn(image.shape, generator=generator)
    return image.clamp(0, 1)


def _synthetic_folder(root: Path, classes: int, per_class: int) -> Path:
    """An ImageFolder tree of PNGs, one subfolder per class."""
    generator = torch.Generator().manual_seed(0)
    for kind in range(classes):
        folder = root / f"class_{kind}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            pixels = (_pattern(kind, generator) * 255).round().to(torch.uint8)
            Image.fromarray(pixels.permute(1, 2, 0).numpy()).save(folder / f"{i:03d}.png")
    return root


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Train the tiny DiT on one thread: its ops are too small to split, and on a busy machine two
    threads mostly wait for each other (400 steps: 15 s against 58 s on a loaded 2-core machine,
    the same result; on an idle one 13 s against 11 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _datamodule(tmp_path: Path, classes: int, per_class: int, batch_size: int) -> PetsDataModule:
    source = _synthetic_folder(tmp_path / "images", classes, per_class)
    return PetsDataModule(
        root=str(tmp_path / "data"),
        source=str(source),
        labels="folder",
        image_size=SIZE,
        batch_size=batch_size,
        split=(0.75, 0.25, 0.0),
    )


def _trainer(max_steps: int, **kwargs) -> L.Trainer:
    return L.Trainer(
        max_steps=max_steps,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        precision=PRECISION,
        **kwargs,
    )


def _ema(trainer: L.Trainer) -> GeneratorEMA:
    return next(cb for cb in trainer.callbacks if isinstance(cb, GeneratorEMA))


# ---- training inputs -------------------------------------------------------------------------


def test_drop_labels_uses_the_null_class_at_the_given_rate():
    labels = torch.randint(0, 4, (20_000,), generator=torch.Generator().manual_seed(1))
    dropped = drop_labels(labels, 0.1, null_class=4, generator=torch.Generator().manual_seed(0))
    nulled = dropped != labels
    assert set(dropped[nulled].tolist()) == {4}  # only ever the null class, never another class
    assert abs(nulled.float().mean().item() - 0.1) < 0.01
    assert torch.equal(drop_labels(labels, 0.0, 4, torch.Generator()), labels)


@pytest.mark.parametrize("flip", [False, True])
def test_training_inputs_are_the_data_or_its_mirror(flip: bool):
    model = DiTGenerator(num_classes=3, **TINY_DIT, image_size=SIZE, flip=flip, label_dropout=0)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (64, 3, SIZE, SIZE), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 3, (64,), generator=g)
    x0, seen = model.training_inputs((images, labels), torch.Generator().manual_seed(0))
    data = images.float() / 127.5 - 1
    assert torch.equal(seen, labels)
    assert x0.min() >= -1 and x0.max() <= 1
    same = (x0 == data).flatten(1).all(1)
    mirrored = (x0 == data.flip(-1)).flatten(1).all(1)
    assert (same | mirrored).all()  # nothing but a left-right mirror: no crop, no colour change
    if flip:
        assert 16 < mirrored.sum() < 48
    else:
        assert same.all()


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
def test_training_draws_logit_normal_times_and_nulls_labels_at_the_dropout_rate(monkeypatch):
    model = DiTGenerator(num_classes=3, **TINY_DIT, image_size=SIZE, label_dropout=0.25)
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def velocity(x, t, y):  # stands in for the network: records times and labels
        seen.append((t.detach().clone(), y.clone()))
        return torch.zeros_like(x)

    monkeypatch.setattr(model.model, "forward", velocity)
    batch = torch.zeros(4096, 3, SIZE, SIZE, dtype=torch.uint8), torch.zeros(4096, dtype=torch.long)
    model.training_step(batch, 0)  # the draws come from the step generator: always the same
    ((t, y),) = seen
    nulled = (y == model.model.null_class).float().mean().item()
    assert set(y.tolist()) == {0, 3} and abs(nulled - 0.25) < 0.03
    assert t.shape == (4096,) and t.min() > 0 and t.max() < 1
    # logit(t) of a logit-normal is a standard normal; of a uniform t, a logistic (std 1.81).
    z = torch.logit(t.double()).sort().values
    normal_cdf = 0.5 * (1 + torch.erf(z / 2**0.5))
    ks = (normal_cdf - torch.arange(1, 4097, dtype=torch.float64) / 4096).abs().max()
    assert ks < 0.04, f"Kolmogorov-Smirnov distance {ks:.3f} from logit-normal"  # uniform: ~0.1
    assert abs(z.std().item() - 1) < 0.1


# ---- validation ------------------------------------------------------------------------------


def test_validation_loss_is_fixed_and_starts_at_the_zero_predictor_baseline(tmp_path: Path):
    data = _datamodule(tmp_path, classes=3, per_class=8, batch_size=4)
    model = DiTGenerator(num_classes=3, **TINY_DIT, image_size=SIZE)
    trainer = _trainer(max_steps=1)
    first = trainer.validate(model, data, verbose=False)[0]["val/flow_loss"]
    again = trainer.validate(model, data, verbose=False)[0]["val/flow_loss"]
    assert first == again
    # adaLN-Zero makes the initial velocity 0, so the loss is E|noise - x0|^2 = 1 + E[x0^2].
    x0 = data.datasets["val"].tensors[0].float() / 127.5 - 1
    assert first == pytest.approx(1 + x0.pow(2).mean().item(), rel=0.03)


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
def test_validation_sees_the_batch_as_it_is_without_augmentation(monkeypatch):
    model = DiTGenerator(num_classes=3, **TINY_DIT, image_size=SIZE, flip=True, label_dropout=0.5)
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def loss(network, x0, y, **kwargs):
        seen.append((x0.clone(), y.clone()))
        return x0.new_zeros(())

    monkeypatch.setattr("tinycats.models.generator.flow_loss", loss)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (32, 3, SIZE, SIZE), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 3, (32,), generator=g)
    model.validation_step((images, labels), 0)
    assert seen  # one loss per validation time
    for x0, y in seen:
        assert torch.equal(x0, images.float() / 127.5 - 1) and torch.equal(y, labels)


# ---- exact resume ----------------------------------------------------------------------------


def test_ema_weights_and_lr_schedule_survive_save_and_resume_exactly(tmp_path: Path):
    # 18 training images in batches of 4, 5 steps an epoch: the run resumes at step 3, mid-epoch,
    # and goes on into the next epoch; validation every 2 steps swaps the EMA in and out.
    data = _datamodule(tmp_path, classes=3, per_class=8, batch_size=4)
    settings = dict(
        num_classes=3,
        **TINY_DIT,
        image_size=SIZE,
        lr=1e-3,
        warmup_fraction=0.3,
        ema_decay=0.5,
        ema_start_step=1,
    )

    def fit(run: str, ckpt_path: Path | None = None) -> tuple[DiTGenerator, L.Trainer]:
        model = DiTGenerator(**settings)
        checkpoints = build_checkpoints(
            CheckpointPolicy(every_n_train_steps=3), tmp_path / run, no_commit
        )
        trainer = _trainer(
            max_steps=8, callbacks=checkpoints, val_check_interval=2, limit_val_batches=1
        )
        trainer.fit(model, data, ckpt_path=ckpt_path)
        return model, trainer

    straight, straight_trainer = fit("straight")
    resumed, resumed_trainer = fit("resumed", tmp_path / "straight" / "step=00000003.ckpt")

    live = straight.state_dict()
    ema = _ema(straight_trainer).averaged.state_dict()
    assert any(not torch.equal(live[k], ema[k]) for k in live)  # the EMA is a real average
    for name, value in resumed.state_dict().items():
        torch.testing.assert_close(value, live[name], rtol=0, atol=0, msg=f"live {name}")
    for name, value in _ema(resumed_trainer).averaged.state_dict().items():
        torch.testing.assert_close(value, ema[name], rtol=0, atol=0, msg=f"EMA {name}")
    lr = [t.optimizers[0].param_groups[0]["lr"] for t in (straight_trainer, resumed_trainer)]
    assert lr[0] == lr[1]
    schedules = [
        t.lr_scheduler_configs[0].scheduler.state_dict()
        for t in (straight_trainer, resumed_trainer)
    ]
    assert schedules[0]["_last_lr"] == schedules[1]["_last_lr"]
    # Validation, also after fit, measures the EMA weights.
    after_fit = straight_trainer.validate(straight, data, verbose=False)[0]["val/flow_loss"]
    ema_alone = _trainer(max_steps=1, limit_val_batches=1).validate(
        _ema(straight_trainer).averaged, data, verbose=False
    )[0]["val/flow_loss"]
    assert after_fit == ema_alone
    # last.ckpt keeps both: the EMA as the state_dict, the live weights to continue from.
    last = torch.load(tmp_path / "resumed" / "last.ckpt", weights_only=True)
    assert all(torch.equal(last["state_dict"][k], ema[k]) for k in live)
    assert all(torch.equal(last["current_model_state"][k], live[k]) for k in live)


# ---- learning --------------------------------------------------------------------------------


@pytest.mark.slow
def test_learns_a_visible_class_well_below_the_baseline(tmp_path: Path):
    classes = 4
    data = _datamodule(tmp_path, classes=classes, per_class=32, batch_size=32)
    torch.manual_seed(0)
    model = DiTGenerator(
        num_classes=classes,
        **TINY_DIT,
        image_size=SIZE,
        lr=2e-3,
        warmup_fraction=0.05,
        ema_decay=0.98,
        ema_start_step=100,
    )
    trainer = _trainer(max_steps=400, enable_checkpointing=False, check_val_every_n_epoch=1000)
    trainer.fit(model, data)
    loss = trainer.validate(model, data, verbose=False)[0]["val/flow_loss"]  # EMA weights

    x0, _ = data.datasets["val"].tensors
    baseline = 1 + (x0.float() / 127.5 - 1).pow(2).mean().item()  # E|noise - x0|^2
    assert loss < 0.25 * baseline

    # A nearest-class-mean classifier fit on the real images names the class of EMA samples.
    train_images, train_labels = data.datasets["train"].tensors
    real = train_images.float().flatten(1) / 255
    means = torch.stack([real[train_labels == k].mean(0) for k in range(classes)])
    wanted = torch.arange(classes).repeat_interleave(8)
    samples = _ema(trainer).averaged.generate(wanted, seed=0, steps=20, cfg_scale=2.0)
    predicted = torch.cdist(samples.flatten(1), means).argmin(1)
    assert (predicted == wanted).float().mean() >= 0.9  # chance is 0.25
