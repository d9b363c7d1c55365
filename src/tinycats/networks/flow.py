"""Rectified flow: the training objective and the ODE samplers, as small pure functions.

Convention: x_t = (1 - t) * x0 + t * noise, so t = 0 is data and t = 1 is pure noise. Along this
straight path the velocity dx_t/dt = noise - x0 is constant, and it is what the model learns to
predict from (x_t, t, y). Sampling integrates that ODE backwards, from t = 1 to t = 0.
"""

import itertools
from collections.abc import Callable
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor

from tinycats.networks.randomness import generator_on

VelocityModel = Callable[[Tensor, Tensor, Tensor], Tensor]
"""Any callable model(x_t, t, y) -> velocity, such as a `TinyDiT`."""

Method = Literal["euler", "heun"]  # the ODE solvers `sample` offers
METHODS = get_args(Method)


# ----------------------------------------------------------------------------------------------
# Objective
# ----------------------------------------------------------------------------------------------


def sample_timesteps(
    batch: int,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Draw `batch` training times in (0, 1), logit-normal: the sigmoid of a standard normal."""
    # Draw where the generator lives, then move, so a CPU generator can seed GPU training.
    draw_device = generator.device if generator is not None else device
    # Concentrates times around 0.5, where the velocity is least predictable (SD3, Esser 2024).
    t = torch.sigmoid(torch.randn(batch, generator=generator, device=draw_device))
    return t.to(device)


def _per_sample(t: Tensor, like: Tensor) -> Tensor:
    """Reshape times (B,) so that they broadcast over the other dimensions of `like`."""
    return t.reshape(-1, *([1] * (like.dim() - 1))).to(like.dtype)


def interpolate(x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
    """Return x_t = (1 - t) * x0 + t * noise for per-sample times t (B,)."""
    t = _per_sample(t, x0)
    return (1 - t) * x0 + t * noise


def velocity_target(x0: Tensor, noise: Tensor) -> Tensor:
    """Return the constant velocity noise - x0 of the straight path from x0 to noise."""
    return noise - x0


def flow_loss(
    model: VelocityModel,
    x0: Tensor,
    y: Tensor,
    *,
    noise: Tensor | None = None,
    t: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Mean squared error between the model's velocity at a random x_t and noise - x0."""
    if noise is None:
        on_device = generator_on(x0.device, generator) if generator is not None else None
        noise = torch.randn(x0.shape, generator=on_device, device=x0.device, dtype=x0.dtype)
    if t is None:
        t = sample_timesteps(x0.shape[0], generator=generator, device=x0.device)
    t = t.to(x0.dtype)
    prediction = model(interpolate(x0, noise, t), t, y)
    # Reduce in float32: under mixed precision the prediction may be bf16.
    return F.mse_loss(prediction.float(), velocity_target(x0, noise).float())


# ----------------------------------------------------------------------------------------------
# Sampling
# ----------------------------------------------------------------------------------------------


def _guided_velocity(
    model: VelocityModel, x: Tensor, t: float, y: Tensor, cfg_scale: float, null_class: int
) -> Tensor:
    """Evaluate the velocity at time t, with classifier-free guidance when cfg_scale != 1."""
    t_batch = torch.full((x.shape[0],), t, device=x.device, dtype=x.dtype)
    if cfg_scale == 1.0:
        return model(x, t_batch, y)
    # One forward over [conditional; unconditional] halves the number of model calls.
    null = torch.full_like(y, null_class)
    both = model(torch.cat([x, x]), torch.cat([t_batch, t_batch]), torch.cat([y, null]))
    v_cond, v_uncond = both.chunk(2)
    return v_uncond + cfg_scale * (v_cond - v_uncond)


@torch.no_grad()
def sample(
    model: VelocityModel,
    noise: Tensor,
    y: Tensor,
    *,
    steps: int = 50,
    cfg_scale: float = 1.0,
    null_class: int,
    method: str = "euler",
) -> Tensor:
    """Integrate the flow ODE from noise at t = 1 to data at t = 0 in `steps` uniform steps."""
    if method not in METHODS:
        raise ValueError(f"unknown sampling method {method!r}; choose one of {METHODS}")
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    times = torch.linspace(1.0, 0.0, steps + 1).tolist()
    x = noise
    for t, t_next in itertools.pairwise(times):
        dt = t_next - t
        v = _guided_velocity(model, x, t, y, cfg_scale, null_class)
        x_next = x + dt * v
        # Heun corrects with the velocity at the Euler prediction; the step into t = 0 is left
        # uncorrected, as the model is never trained at exactly t = 0.
        if method == "heun" and t_next > 0:
            v_next = _guided_velocity(model, x_next, t_next, y, cfg_scale, null_class)
            x_next = x + dt * (v + v_next) / 2
        x = x_next
    return x
