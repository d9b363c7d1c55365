"""GPU fast paths that need code: automatic bf16, TF32, and torch.compile with an eager fallback.

The other fast paths are plain settings: fused AdamW (in each module), ``channels_last`` (the
classifier), and images kept on the GPU (the data module).
"""

import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)


def auto_precision(requested: str | None) -> str | None:
    """The Trainer precision: as requested, else bf16-mixed on a GPU that has bfloat16."""
    if requested is not None or not torch.cuda.is_available():
        return requested
    # Native bf16 only: a T4 emulates it, slower than its fp16/fp32 paths.
    return "bf16-mixed" if torch.cuda.is_bf16_supported(including_emulation=False) else None


def allow_tf32(enabled: bool) -> None:
    """Let float32 matmuls and convolutions use TF32 on GPUs that have it (Ampere and newer)."""
    torch.set_float32_matmul_precision("high" if enabled else "highest")
    torch.backends.cudnn.allow_tf32 = enabled


class CompiledOrEager:
    """Call ``torch.compile(module)``; after its first failure, warn once and run eagerly.

    Not an ``nn.Module``: the parameters stay registered only where they already are, so
    checkpoints look the same with and without compilation.
    """

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.compiled: Callable[..., Any] | None = torch.compile(module)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.compiled is not None:
            try:
                return self.compiled(*args, **kwargs)
            except Exception as err:  # any backend failure: the eager module still works
                log.warning(
                    "torch.compile failed (%s: %s); running eagerly.", type(err).__name__, err
                )
                self.compiled = None
        return self.module(*args, **kwargs)
