"""Linear warm-up then cosine decay, built from torch's own schedulers."""

from torch.optim import Optimizer
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, LRScheduler, SequentialLR


def warmup_cosine(
    optimizer: Optimizer, total_steps: int, warmup_fraction: float, final_lr_fraction: float = 0.01
) -> LRScheduler:
    """Warm up linearly over ``warmup_fraction`` of ``total_steps``, then decay with a cosine.

    The horizon lives in the schedulers' state, so it is saved with every checkpoint and a
    resumed run continues on the same curve.
    """
    warmup = int(total_steps * warmup_fraction)
    base_lr = optimizer.param_groups[0]["lr"]
    cosine = CosineAnnealingLR(
        optimizer, T_max=max(total_steps - warmup, 1), eta_min=base_lr * final_lr_fraction
    )
    if warmup == 0:
        return cosine
    ramp = LinearLR(optimizer, start_factor=1 / (warmup + 1), total_iters=warmup)
    return SequentialLR(optimizer, [ramp, cosine], milestones=[warmup])
