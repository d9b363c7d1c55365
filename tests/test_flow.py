"""Tests for the rectified-flow objective, its training times and the samplers."""

import math

import pytest
import torch
from torch import Tensor

from tinycats.networks.dit import TinyDiT
from tinycats.networks.flow import (
    flow_loss,
    interpolate,
    sample,
    sample_timesteps,
    velocity_target,
)

from helpers.dit import TINY_DIT, TINY_SIZE

NULL = 12


def _data(batch: int = 4, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(batch, 3, 8, 8, generator=g)
    noise = torch.randn(batch, 3, 8, 8, generator=g)
    y = torch.randint(0, NULL, (batch,), generator=g)
    return x0, noise, y


def _exact_velocity_towards(x0: Tensor):
    """A model whose velocity at (x_t, t) points exactly along the straight line to x0."""

    def model(x_t: Tensor, t: Tensor, y: Tensor) -> Tensor:
        # x_t = x0 + t * (noise - x0), so noise - x0 = (x_t - x0) / t; undefined at t = 0.
        assert (t > 0).all(), "the sampler must never evaluate the model at t = 0"
        return (x_t - x0.repeat(x_t.shape[0] // x0.shape[0], 1, 1, 1)) / t.view(-1, 1, 1, 1)

    return model


class _LabelRecorder:
    """A model that records the labels and batch sizes it is called with."""

    def __init__(self) -> None:
        self.calls: list[Tensor] = []

    def __call__(self, x_t: Tensor, t: Tensor, y: Tensor) -> Tensor:
        assert x_t.shape[0] == t.shape[0] == y.shape[0]
        self.calls.append(y.clone())
        # Velocity equal to the label, so the guided combination can be read off the output.
        return y.to(x_t.dtype).view(-1, 1, 1, 1).expand_as(x_t)


# ---- path and loss ---------------------------------------------------------------------------


def test_interpolate_follows_the_convention():
    x0, noise, _ = _data()
    assert torch.equal(interpolate(x0, noise, torch.zeros(4)), x0)
    assert torch.equal(interpolate(x0, noise, torch.ones(4)), noise)
    t = torch.tensor([0.0, 0.25, 0.5, 1.0])
    expected = torch.stack([(1 - s) * a + s * b for s, a, b in zip(t, x0, noise, strict=True)])
    torch.testing.assert_close(interpolate(x0, noise, t), expected)
    assert torch.equal(velocity_target(x0, noise), noise - x0)


def test_loss_of_zero_model_is_mean_squared_velocity():
    x0, noise, y = _data()
    t = torch.full((4,), 0.3)
    loss = flow_loss(lambda x_t, t, y: torch.zeros_like(x_t), x0, y, noise=noise, t=t)
    torch.testing.assert_close(loss, ((noise - x0) ** 2).mean())
    assert loss > 0.5


def test_loss_of_exact_velocity_model_is_zero():
    x0, noise, y = _data()
    t = torch.tensor([0.1, 0.4, 0.6, 0.9])
    loss = flow_loss(lambda x_t, t, y: noise - x0, x0, y, noise=noise, t=t)
    assert loss == 0


def test_loss_passes_the_interpolated_input_and_time_to_the_model():
    x0, noise, y = _data()
    t = torch.tensor([0.1, 0.4, 0.6, 0.9])
    seen = {}

    def model(x_t: Tensor, t_in: Tensor, y_in: Tensor) -> Tensor:
        seen.update(x_t=x_t, t=t_in, y=y_in)
        return torch.zeros_like(x_t)

    flow_loss(model, x0, y, noise=noise, t=t)
    torch.testing.assert_close(seen["x_t"], interpolate(x0, noise, t))
    assert torch.equal(seen["t"], t)
    assert torch.equal(seen["y"], y)


def test_loss_draws_noise_from_the_generator():
    x0, _, y = _data()

    def zero(x_t: Tensor, t: Tensor, y: Tensor) -> Tensor:
        return torch.zeros_like(x_t)

    losses = [flow_loss(zero, x0, y, generator=torch.Generator().manual_seed(s)) for s in (0, 0, 1)]
    assert losses[0] == losses[1]
    assert losses[0] != losses[2]
    # With a zero model the loss is E[(noise - x0)^2] ≈ 1 + E[x0^2] ≈ 2, not E[x0^2] ≈ 1.
    assert 1.6 < flow_loss(zero, x0, y, generator=torch.Generator().manual_seed(2)) < 2.4


def test_loss_trains_a_real_model():
    model = TinyDiT(**TINY_DIT, image_size=TINY_SIZE)
    x0 = torch.randn(2, 3, 16, 16)
    loss = flow_loss(model, x0, torch.tensor([0, 1]), generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert loss.item() > 0
    assert model.final_layer.linear.weight.grad.abs().sum() > 0


# ---- timesteps -------------------------------------------------------------------------------


def test_logit_normal_timesteps_are_inside_unit_interval_around_half():
    t = sample_timesteps(10_000, generator=torch.Generator().manual_seed(0))
    assert t.shape == (10_000,)
    assert (t > 0).all() and (t < 1).all()
    assert abs(t.median().item() - 0.5) < 0.02
    # Concentrated in the middle: far fewer than the uniform 20% fall in the outer tenths.
    assert ((t < 0.1) | (t > 0.9)).float().mean() < 0.1


def test_timesteps_are_reproducible_with_a_generator():
    a = sample_timesteps(8, generator=torch.Generator().manual_seed(3))
    b = sample_timesteps(8, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


# ---- sampling --------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["euler", "heun"])
@pytest.mark.parametrize("cfg_scale", [1.0, 4.0])
def test_sampler_with_exact_velocity_recovers_data(method: str, cfg_scale: float):
    x0, noise, y = _data()
    model = _exact_velocity_towards(x0)
    out = sample(model, noise, y, steps=7, cfg_scale=cfg_scale, null_class=NULL, method=method)
    torch.testing.assert_close(out, x0, atol=1e-4, rtol=0)


def test_heun_is_second_order_on_a_curved_field():
    # dx/dt = x integrated from t = 1 to 0 gives x(0) = x(1) / e.
    def model(x_t: Tensor, t: Tensor, y: Tensor) -> Tensor:
        return x_t

    noise = torch.ones(1, 1, 2, 2)
    exact = math.exp(-1)
    errors = {}
    for method in ("euler", "heun"):
        out = sample(
            model, noise, torch.zeros(1, dtype=torch.long), steps=10, null_class=NULL, method=method
        )
        errors[method] = (out - exact).abs().max().item()
    assert errors["heun"] < errors["euler"] / 10


def test_heun_skips_the_correction_on_the_last_step():
    recorder = _LabelRecorder()
    _, noise, y = _data()
    sample(recorder, noise, y, steps=5, null_class=NULL, method="heun")
    assert len(recorder.calls) == 2 * 5 - 1


def test_guidance_uses_null_label_for_the_unconditional_half_only():
    recorder = _LabelRecorder()
    _, noise, y = _data()
    out = sample(recorder, noise, y, steps=3, cfg_scale=3.0, null_class=NULL)
    assert len(recorder.calls) == 3  # one batched forward per Euler step
    for labels in recorder.calls:
        assert torch.equal(labels[:4], y)
        assert torch.equal(labels[4:], torch.full_like(y, NULL))
    # Constant guided velocity v = v_u + 3 (v_c - v_u), integrated over dt = -1 in total.
    guided = NULL + 3.0 * (y.float() - NULL)
    torch.testing.assert_close(out, noise - guided.view(-1, 1, 1, 1))


def test_without_guidance_only_the_conditional_pass_runs():
    recorder = _LabelRecorder()
    _, noise, y = _data()
    sample(recorder, noise, y, steps=3, cfg_scale=1.0, null_class=NULL)
    assert len(recorder.calls) == 3
    for labels in recorder.calls:
        assert torch.equal(labels, y)


def test_sampling_is_deterministic_and_gradient_free():
    model = TinyDiT(**TINY_DIT, image_size=TINY_SIZE)
    with torch.no_grad():
        for linear in (model.final_layer.linear, model.final_layer.modulation[-1]):
            linear.weight.normal_(std=0.1)
    _, _, y = _data(batch=2)
    noise = torch.randn(2, 3, 16, 16)
    a = sample(model, noise, y, steps=4, cfg_scale=2.0, null_class=model.null_class, method="heun")
    b = sample(model, noise, y, steps=4, cfg_scale=2.0, null_class=model.null_class, method="heun")
    assert torch.equal(a, b)
    assert not a.requires_grad
    assert not torch.allclose(a, noise)


def test_unknown_method_and_bad_steps_are_rejected():
    _, noise, y = _data()
    with pytest.raises(ValueError, match="euler"):
        sample(_LabelRecorder(), noise, y, null_class=NULL, method="rk4")
    with pytest.raises(ValueError, match="steps"):
        sample(_LabelRecorder(), noise, y, steps=0, null_class=NULL)
