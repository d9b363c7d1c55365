"""Training throughput: images/s, achieved FLOP/s against the device's peak, what Lightning's
Trainer costs over a minimal PyTorch loop of the same model, and what the chosen precision gains
over float32.

    python -m benchmarks.throughput [--configs configs/dit.yaml,...] [--quick]

Every loop runs the same LightningModule class, from the same initial weights, on the same data
module's batches. The Lightning loop is ``Trainer.fit`` in the precision ``tinycats fit`` picks
on this machine (``Workload.precision``). The raw loop calls its ``training_step`` (augmentation
and loss included), ``backward``, an AdamW step and ``zero_grad``, under bf16 autocast where the
Trainer uses bf16-mixed; a second raw loop does the same in float32. None updates the EMA or
checkpoints (the step split and the checkpoint part measure those).

The loops run **in step**: after each Lightning step, a callback runs one raw step in the chosen
precision, one in float32 (when the chosen one is not float32 already), and then a few float32
and, for a bf16 workload, bf16 matmuls, each timed on its own. A shared machine's slow spells so
land on every loop and on the peaks alike, and each comparison is the median over steps of each
step's ratio (Lightning's step is the time between its step starts less what ran in between).
FLOPs are counted by torch's FlopCounterMode on one forward and backward of the training step.

Each precision's step is compared with the peak of that precision. On a CPU both peaks are
measured between the timed steps (the median over steps of the fastest of three 2048² matmuls in
float32, respectively bfloat16, so they see the same spells as the steps). On a GPU the bf16 peak
is the chip's published dense bf16 peak (PUBLISHED_BF16_PEAKS), or where the chip is not in that
table the bf16 matmul rate measured between the steps; the float32 peak is the measured rate of
8192² float32 matmuls (TF32 where the GPU has it, as the benchmarks allow TF32).
"""

import itertools
import re
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass

import lightning as L
import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.harness import (
    Setup,
    Workload,
    markdown_table,
    outside_fit,
    parse_args,
    prepare,
    synchronize,
    trainer,
)

# Dense (no sparsity) bf16 tensor-core peaks from NVIDIA's datasheets, in FLOP/s, matched against
# torch.cuda.get_device_name() in this order. The datasheets print the sparse figure, twice these.
PUBLISHED_BF16_PEAKS = (
    (r"H100.*PCIe", 756e12, "NVIDIA H100 datasheet, H100 PCIe: 1,513 TFLOP/s sparse"),
    (r"H100", 989e12, "NVIDIA H100 datasheet, H100 SXM: 1,979 TFLOP/s sparse"),
    (r"H200", 989e12, "NVIDIA H200 datasheet, H200 SXM: 1,979 TFLOP/s sparse"),
    (r"B200", 2250e12, "NVIDIA HGX B200 datasheet, per GPU: 4.5 PFLOP/s sparse"),
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
    """One workload's steps (Lightning's, the raw loop's, the float32 raw loop's) in step, and the
    matmul rates measured between them."""

    config: str
    params: int
    batch: int
    precision: str  # the chosen one: bf16-mixed or 32-true
    flops: int  # per training step
    raw: list[float]  # seconds of each timed step, in the chosen precision
    raw_fp32: list[float]  # seconds of the float32 raw step run beside each (the same if fp32)
    lightning: list[float]  # seconds of the Lightning step paired with each raw step
    matmul: dict[str, list[float]]  # FLOP/s of the matmuls after each step, by "fp32" / "bf16"

    @property
    def bf16(self) -> bool:
        return self.precision == "bf16-mixed"

    @property
    def lightning_seconds(self) -> float:
        return statistics.median(self.lightning)

    @property
    def raw_seconds(self) -> float:
        return statistics.median(self.raw)

    @property
    def raw_fp32_seconds(self) -> float:
        return statistics.median(self.raw_fp32)

    @property
    def speedup(self) -> float:
        """The float32 raw step over the chosen precision's: the median of the steps' ratios."""
        return statistics.median(f / r for f, r in zip(self.raw_fp32, self.raw, strict=True))

    @property
    def lightning_overhead(self) -> float:
        """Lightning's step over the raw one: the median of the steps' ratios, less one."""
        return (
            statistics.median(ln / raw for ln, raw in zip(self.lightning, self.raw, strict=True))
            - 1
        )


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def matmul_rate(device: torch.device, dtype: torch.dtype, repeats: int = 3) -> float:
    """FLOP/s of the fastest of a few big square matmuls of ``dtype``."""
    n = 8192 if device.type == "cuda" else 2048
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    best = float("inf")
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        a @ b
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def device_peak(device: torch.device, measured: float, kind: str = "bf16") -> Peak:
    """The peak that FLOP/s of ``kind`` (fp32, bf16) are compared with (see the module docstring)."""
    if device.type != "cuda":
        return Peak(
            measured,
            f"{kind} matmul rate measured between the timed steps (median of "
            "the fastest of three 2048² matmuls after each step)",
        )
    if kind == "fp32":
        return Peak(
            measured,
            "fp32 matmul rate (TF32 where the GPU has it) measured between the timed steps",
        )
    name = torch.cuda.get_device_name(device)
    for pattern, flops, source in PUBLISHED_BF16_PEAKS:
        if re.search(pattern, name):
            return Peak(flops, f"published dense bf16 peak of the {name} ({source})")
    return Peak(
        measured, f"bf16 matmul rate measured between the timed steps ({name} is not in the table)"
    )


def measured_peaks(rows: list[Throughput], device: torch.device) -> dict[str, Peak]:
    """The device's peak of each precision measured in ``rows`` (their matmul rates pooled)."""
    kinds = [kind for kind in DTYPES if any(row.matmul.get(kind) for row in rows)]
    return {
        kind: device_peak(
            device,
            statistics.median(rate for row in rows for rate in row.matmul.get(kind, [])),
            kind,
        )
        for kind in kinds
    }


def peak_of(row: Throughput, peaks: dict[str, Peak]) -> Peak:
    """The peak a row's chosen precision is compared with."""
    return peaks["bf16" if row.bf16 else "fp32"]


def describe_peaks(peaks: dict[str, Peak]) -> str:
    """One line per peak, for the reports."""
    return "\n".join(
        f"- {kind} peak: {peak.flops / 1e12:,.3f} TFLOP/s, the {peak.source}."
        for kind, peak in peaks.items()
    )


def step_flops(workload: Workload, setup: Setup) -> int:
    """FLOPs of one forward and backward of the training step, as FlopCounterMode counts them."""
    module, loader = outside_fit(workload.module(), workload.data(setup), setup)
    images, labels = next(iter(loader))
    with FlopCounterMode(display=False) as counter:
        module.training_step((images.to(setup.device), labels.to(setup.device)), 0).backward()
    return counter.get_total_flops()


class RawLoop:
    """A plain PyTorch training loop over a fresh copy of the workload's module, one step a call,
    under bf16 autocast where ``precision`` is bf16-mixed."""

    def __init__(self, workload: Workload, setup: Setup, precision: str | None) -> None:
        self.device = setup.device
        self.module, loader = outside_fit(workload.module(), workload.data(setup), setup)
        self.batches: Iterator = iter(loader)
        self.optimizer = torch.optim.AdamW(
            self.module.parameters(),
            lr=self.module.hparams.lr,
            weight_decay=self.module.hparams.weight_decay,
            fused=True,
        )
        self.bf16 = precision == "bf16-mixed"
        self.steps = 0

    def step(self) -> float:
        """Train one step and return its seconds, the next batch's fetch included."""
        synchronize(self.device)
        start = time.perf_counter()
        images, labels = next(self.batches)
        batch = images.to(self.device, non_blocking=True), labels.to(self.device)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            loss = self.module.training_step(batch, self.steps)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        synchronize(self.device)
        self.steps += 1
        return time.perf_counter() - start


class InStep(L.Callback):
    """Runs a raw step in the chosen precision, one in float32 and matmul samples after each
    Lightning step, timing each on its own."""

    def __init__(self, workload: Workload, setup: Setup) -> None:
        self.raw = RawLoop(workload, setup, workload.precision)
        bf16 = workload.precision == "bf16-mixed"
        self.raw_fp32 = RawLoop(workload, setup, None) if bf16 else None
        self.starts: list[float] = []  # Lightning's step starts
        self.between: list[float] = []  # seconds spent here after each step
        self.raw_steps: list[float] = []
        self.raw_fp32_steps: list[float] = []
        self.matmul: dict[str, list[float]] = {
            kind: [] for kind in DTYPES if bf16 or kind == "fp32"
        }

    def on_train_batch_start(self, trainer: L.Trainer, pl_module, batch, batch_idx: int) -> None:
        synchronize(pl_module.device)
        self.starts.append(time.perf_counter())

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx) -> None:
        start = time.perf_counter()
        self.raw_steps.append(self.raw.step())
        self.raw_fp32_steps.append(self.raw_fp32.step() if self.raw_fp32 else self.raw_steps[-1])
        for kind, rates in self.matmul.items():
            rates.append(matmul_rate(pl_module.device, DTYPES[kind]))
        self.between.append(time.perf_counter() - start)

    def lightning_steps(self) -> list[float]:
        """Seconds of each Lightning step: between its start and the next, less the time here."""
        pairs = zip(itertools.pairwise(self.starts), self.between[:-1], strict=True)
        return [end - start - here for (start, end), here in pairs]


def measure(setup: Setup) -> list[Throughput]:
    """Throughput of every workload of ``setup``, the two loops in step."""
    rows = []
    for workload in setup.workloads:
        paired = InStep(workload, setup)
        total = setup.sizes.warmup + setup.sizes.steps + 1
        trainer(setup.device, total, callbacks=[paired], precision=workload.precision).fit(
            workload.module(ema_start_step=total + 1), datamodule=workload.data(setup)
        )
        timed = slice(setup.sizes.warmup, total - 1)
        rows.append(
            Throughput(
                config=workload.config,
                params=sum(p.numel() for p in paired.raw.module.parameters()),
                batch=workload.batch,
                precision=workload.precision or "32-true",
                flops=step_flops(workload, setup),
                raw=paired.raw_steps[timed],
                raw_fp32=paired.raw_fp32_steps[timed],
                lightning=paired.lightning_steps()[timed],
                matmul={kind: rates[timed] for kind, rates in paired.matmul.items()},
            )
        )
    return rows


def table(rows: list[Throughput], peaks: dict[str, Peak]) -> str:
    """The throughput table: float32 and the chosen precision side by side, each against the
    peak of its precision; the chosen precision's FLOP/s are the Lightning loop's."""
    header = [
        "config",
        "params",
        "batch",
        "GFLOP/step",
        "precision",
        "fp32 raw ms/step",
        "fp32 % of fp32 peak",
        "raw ms/step",
        "vs fp32",
        "Lightning ms/step",
        "Lightning vs raw",
        "Lightning img/s",
        "TFLOP/s",
        "% of peak",
    ]
    return markdown_table(
        header,
        [
            (
                row.config,
                f"{row.params / 1e6:.1f}M",
                row.batch,
                f"{row.flops / 1e9:,.1f}",
                row.precision,
                f"{1000 * row.raw_fp32_seconds:,.1f}",
                f"{row.flops / row.raw_fp32_seconds / peaks['fp32'].flops:.1%}",
                f"{1000 * row.raw_seconds:,.1f}",
                f"{row.speedup:.2f}x",
                f"{1000 * row.lightning_seconds:,.1f}",
                f"{row.lightning_overhead:+.1%}",
                f"{row.batch / row.lightning_seconds:,.1f}",
                f"{row.flops / row.lightning_seconds / 1e12:.3f}",
                f"{row.flops / row.lightning_seconds / peak_of(row, peaks).flops:.1%}",
            )
            for row in rows
        ],
        text_columns=1,
    )


def main() -> None:
    args = parse_args(__doc__)
    with prepare(args.quick, args.configs) as setup:
        rows = measure(setup)
        peaks = measured_peaks(rows, setup.device)
    print(describe_peaks(peaks) + "\n")
    print(table(rows, peaks))


if __name__ == "__main__":
    main()
