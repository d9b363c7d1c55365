"""Training throughput: images/s, achieved FLOP/s against the device's peak, and what Lightning's
Trainer costs over a minimal PyTorch loop of the same model.

    python -m benchmarks.throughput [--configs configs/dit.yaml,...] [--quick]

Both loops run the same LightningModule on the same data module's batches: the raw loop calls
its ``training_step`` (augmentation and loss included), ``backward``, an AdamW step and
``zero_grad`` in a plain ``for`` loop, under bf16 autocast where the Trainer would use
bf16-mixed; the Lightning loop is ``Trainer.fit`` of it. Neither updates the EMA nor
checkpoints (the step split and the checkpoint part measure those). Times are medians over the
timed steps after the warm-up, the better of two rounds in which the loops alternate. FLOPs are
counted by torch's FlopCounterMode on one forward and backward of the training step.

The peak is, on a CPU, the fp32 matmul peak measured in the same run; on a GPU, the chip's
published dense bf16 peak (PUBLISHED_BF16_PEAKS), or where the chip is not in that table the
bf16 matmul peak measured in the same run.
"""

import re
import time
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.harness import (
    Setup,
    StepTimer,
    Workload,
    markdown_table,
    median_step,
    outside_fit,
    parse_args,
    prepare,
    synchronize,
    trainer,
)
from tinycats.performance import auto_precision

ROUNDS = 2

# Dense (no sparsity) bf16 tensor-core peaks from NVIDIA's datasheets, in FLOP/s, matched against
# torch.cuda.get_device_name() in this order. The datasheets print the sparse figure, twice these.
PUBLISHED_BF16_PEAKS = (
    (r"H100.*PCIe", 756e12, "NVIDIA H100 datasheet, H100 PCIe: 1,513 TFLOP/s sparse"),
    (r"H100", 989e12, "NVIDIA H100 datasheet, H100 SXM: 1,979 TFLOP/s sparse"),
    (r"H200", 989e12, "NVIDIA H200 datasheet, H200 SXM: 1,979 TFLOP/s sparse"),
    (r"A100", 312e12, "NVIDIA A100 datasheet: 624 TFLOP/s sparse"),
    (r"L40S", 362e12, "NVIDIA L40S datasheet: 733 TFLOP/s sparse"),
    (r"\bL4\b", 121e12, "NVIDIA L4 datasheet: 242 TFLOP/s sparse"),
    (r"\bA10\b", 125e12, "NVIDIA A10 datasheet: 250 TFLOP/s sparse"),
    (r"\bT4\b", 65e12, "NVIDIA T4 datasheet: fp16, the T4 has no bf16 (bf16 runs slower)"),
)


@dataclass(frozen=True)
class Peak:
    """A device's peak FLOP/s and where the number comes from."""

    flops: float
    source: str


@dataclass(frozen=True)
class Throughput:
    """One workload's step in a raw loop and in Lightning."""

    config: str
    params: int
    batch: int
    flops: int  # per training step
    raw: float  # seconds per step
    lightning: float

    @property
    def lightning_overhead(self) -> float:
        return self.lightning / self.raw - 1


def matmul_peak(device: torch.device) -> float:
    """FLOP/s of the fastest of ten big square matmuls: fp32 on a CPU, bf16 on a GPU."""
    n, dtype = (8192, torch.bfloat16) if device.type == "cuda" else (2048, torch.float32)
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    best = float("inf")
    for _ in range(10):
        synchronize(device)
        start = time.perf_counter()
        a @ b
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def device_peak(device: torch.device, measured: float) -> Peak:
    """The peak that FLOP/s are compared with (see the module docstring)."""
    if device.type != "cuda":
        return Peak(measured, "fp32 matmul peak measured in this run (the fastest 2048² matmul)")
    name = torch.cuda.get_device_name(device)
    for pattern, flops, source in PUBLISHED_BF16_PEAKS:
        if re.search(pattern, name):
            return Peak(flops, f"published dense bf16 peak of the {name} ({source})")
    return Peak(measured, f"bf16 matmul peak measured in this run ({name} is not in the table)")


def step_flops(workload: Workload, setup: Setup) -> int:
    """FLOPs of one forward and backward of the training step, as FlopCounterMode counts them."""
    module, loader = outside_fit(workload.module(), workload.data(setup), setup)
    images, labels = next(iter(loader))
    with FlopCounterMode(display=False) as counter:
        module.training_step((images.to(setup.device), labels.to(setup.device)), 0).backward()
    return counter.get_total_flops()


def raw_seconds(workload: Workload, setup: Setup) -> float:
    """Median seconds per step of the plain PyTorch loop (see the module docstring)."""
    module, loader = outside_fit(workload.module(), workload.data(setup), setup)
    cuda = setup.device.type == "cuda"
    optimizer = torch.optim.AdamW(module.parameters(), lr=module.hparams.lr,
                                  weight_decay=module.hparams.weight_decay, fused=cuda)  # fmt: skip
    bf16 = auto_precision(None) == "bf16-mixed"
    first, last = setup.sizes.warmup, setup.sizes.warmup + setup.sizes.steps
    stamps = []
    for step, (images, labels) in enumerate(loader):
        if step >= first:
            synchronize(setup.device)
            stamps.append(time.perf_counter())
        if step == last:
            break
        batch = images.to(setup.device, non_blocking=True), labels.to(setup.device)
        with torch.autocast(setup.device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = module.training_step(batch, step)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return median_step(stamps)


def lightning_seconds(workload: Workload, setup: Setup) -> float:
    """Median seconds per step of ``Trainer.fit``, with the EMA starting after the last step."""
    total = setup.sizes.warmup + setup.sizes.steps + 1
    timer = StepTimer()
    trainer(setup.device, total, callbacks=[timer]).fit(
        workload.module(ema_start_step=total + 1), datamodule=workload.data(setup)
    )
    return median_step(timer.stamps[setup.sizes.warmup :])


def measure(setup: Setup) -> list[Throughput]:
    """Throughput of every workload of ``setup``."""
    rows = []
    for workload in setup.workloads:
        # The loops alternate, each keeping its best round: other work on a shared machine
        # only ever slows a loop down, and both see the same spells of it.
        raw = lightning = float("inf")
        for _ in range(ROUNDS):
            raw = min(raw, raw_seconds(workload, setup))
            lightning = min(lightning, lightning_seconds(workload, setup))
        rows.append(
            Throughput(
                config=workload.config,
                params=sum(p.numel() for p in workload.module().parameters()),
                batch=workload.batch,
                flops=step_flops(workload, setup),
                raw=raw,
                lightning=lightning,
            )
        )
    return rows


def table(rows: list[Throughput], peak: Peak) -> str:
    """The throughput table; FLOP/s are the Lightning loop's."""
    header = ["config", "params", "batch", "GFLOP/step", "raw ms/step", "Lightning ms/step",
              "Lightning vs raw", "Lightning img/s", "TFLOP/s", "% of peak"]  # fmt: skip
    return markdown_table(header, [
        (row.config, f"{row.params / 1e6:.1f}M", row.batch, f"{row.flops / 1e9:,.1f}",
         f"{1000 * row.raw:,.1f}", f"{1000 * row.lightning:,.1f}",
         f"{row.lightning_overhead:+.1%}", f"{row.batch / row.lightning:,.1f}",
         f"{row.flops / row.lightning / 1e12:.3f}",
         f"{row.flops / row.lightning / peak.flops:.1%}")
        for row in rows
    ])  # fmt: skip


def main() -> None:
    args = parse_args(__doc__)
    with prepare(args.quick, args.configs) as setup:
        measured = matmul_peak(setup.device)
        rows = measure(setup)
        # Other work on a shared machine only ever lowers a measurement: keep the better of two.
        peak = device_peak(setup.device, max(measured, matmul_peak(setup.device)))
    print(f"Peak: {peak.flops / 1e12:,.3f} TFLOP/s, the {peak.source}.\n")
    print(table(rows, peak))


if __name__ == "__main__":
    main()
