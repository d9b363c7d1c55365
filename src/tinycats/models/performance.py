"""Fast paths that need code: automatic bf16 (GPUs and CPUs), TF32, and torch.compile with an
eager fallback.

The other fast paths are plain settings: fused AdamW (in each module), ``channels_last`` (the
classifier), and images kept on the GPU (the data module).
"""

import logging
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

log = logging.getLogger(__name__)

# The x86 features that compute bfloat16 natively (oneDNN uses them for matmuls and
# convolutions): AVX512-BF16's dot products and AMX's bf16 tiles. Without them bf16 is emulated.
CPU_BF16_FEATURES = ("amx_bf16", "avx512_bf16")


class Precision(NamedTuple):
    """The Trainer precision (None: Lightning's default, 32-true) and why it was chosen."""

    precision: str | None
    reason: str


def choose_precision(
    requested: str | None, device_type: str, model: object | None = None
) -> Precision:
    """The precision ``trainer.precision`` asks for, else bf16-mixed where the device computes
    bfloat16 natively and ``model`` trains faster so, else float32.

    A model that trains slower in bf16 on CPUs says so with a false ``cpu_bf16`` attribute or
    property (ADR 0014); on GPUs with native bf16 it always pays.
    """
    if requested is not None:
        if "bf16" in str(requested) and device_type == "cpu" and not cpu_bf16_features():
            log.warning(
                "trainer.precision=%s on a CPU without native bfloat16 (no AVX512-BF16 or "
                "AMX-BF16): bf16 is emulated there, 5-25x slower than float32 "
                "(plans/0014-cpu-bf16.md). Leave trainer.precision unset to train in float32.",
                requested,
            )
        return Precision(requested, "set by trainer.precision")
    if device_type == "cuda":
        name = torch.cuda.get_device_name()
        # Native bf16 only: a T4 emulates it, slower than its fp16/fp32 paths.
        if torch.cuda.is_bf16_supported(including_emulation=False):
            return Precision("bf16-mixed", f"the GPU ({name}) computes bfloat16 natively")
        return Precision(None, f"the GPU ({name}) has no native bfloat16")
    if device_type != "cpu":
        return Precision(None, f"no bfloat16 rule for {device_type} devices")
    features = cpu_bf16_features()
    if not features:
        return Precision(None, "this CPU has no native bfloat16 (no AVX512-BF16 or AMX-BF16)")
    if not getattr(model, "cpu_bf16", True):
        return Precision(
            None,
            f"this {type(model).__name__} trains slower in bf16 on CPUs (its cpu_bf16 is false)",
        )
    return Precision("bf16-mixed", f"this CPU computes bfloat16 natively ({', '.join(features)})")


def auto_precision(
    requested: str | None, device_type: str | None = None, model: object | None = None
) -> str | None:
    """The Trainer precision of ``choose_precision``, on ``device_type`` (default: the first GPU
    if there is one, else the CPU)."""
    return choose_precision(requested, device_type or default_device_type(), model).precision


def default_device_type() -> str:
    """Where ``tinycats`` runs when nothing says otherwise: the first GPU, else the CPU."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def cpu_bf16_features() -> tuple[str, ...]:
    """Which of CPU_BF16_FEATURES this CPU has (empty where oneDNN is missing to use them, or
    where torch runs below AVX-512, as ``ATEN_CPU_CAPABILITY=avx2`` makes it: ADR 0016)."""
    if not torch.backends.mkldnn.is_available():
        return ()
    if torch.backends.cpu.get_cpu_capability() != "AVX512":  # both features imply AVX-512
        return ()
    get_capabilities = getattr(torch.cpu, "get_capabilities", None)  # older torch: cpuinfo
    if get_capabilities is not None:
        capabilities = get_capabilities()
        return tuple(f for f in CPU_BF16_FEATURES if capabilities.get(f, False))
    cpuinfo = Path("/proc/cpuinfo")
    flags = set(cpuinfo.read_text().split()) if cpuinfo.exists() else set()
    return tuple(f for f in CPU_BF16_FEATURES if f in flags)


def autocast(precision: str | None, device: torch.device) -> AbstractContextManager:
    """bf16 autocast on ``device`` where ``precision`` is bf16-mixed (code outside a Trainer)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16-mixed")


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
