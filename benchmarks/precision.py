"""float32 against bf16-mixed on the CPU, per model: is bf16 faster here, and how near the peak?

    python -m benchmarks.precision [--models dit-s4,classifier-128,...] [--steps 5]

For each model, float32 and bf16-mixed training steps (forward under ``torch.autocast`` as
Lightning's bf16-mixed runs it, backward, fused AdamW on the float32 weights) alternate in one
process on random data of the config's shape, and a float32 and a bf16 matmul follow each round
(2048², or smaller where bf16 is emulated and a 2048² one would take a minute; the header says
which). Everything runs on **one thread and is timed in process CPU time**: on a shared machine
other processes' time slices then do not count, and no step waits for a descheduled sibling
thread (with two threads on a machine loaded several times over its cores, those waits
dominated the wall-clock step). The speed-up is the median of the steps' ratios. This is what
ADR 0014 chose each model's precision from; ``benchmarks/throughput.py`` measures the same
comparison in wall-clock time with all threads, as training runs.
"""

import argparse
import statistics
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
import torchvision
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.harness import REPO, markdown_table
from tinycats.models.performance import cpu_bf16_features
from tinycats.networks.dit import TinyDiT
from tinycats.networks.flow import flow_loss
from tinycats.runs.run_dir import read_config

Step = Callable[[bool], None]  # one training step, in bf16-mixed when called with True


def dit_step(config: str, batch: int) -> Step:
    """A training step of a config's DiT as ``DiTGenerator`` takes it (rectified-flow loss)."""
    spec = read_config(REPO / config)
    shape = {
        key: spec["model"]["init_args"][key] for key in ("patch_size", "width", "depth", "heads")
    }
    image_size = spec["data"]["image_size"]
    net = TinyDiT(image_size=image_size, num_classes=12, **shape)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4, fused=True)
    images, labels = torch.randn(batch, 3, image_size, image_size), torch.randint(0, 12, (batch,))

    def step(bf16: bool) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = flow_loss(net, images, labels, generator=torch.Generator().manual_seed(0))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def classifier_step(image_size: int, batch: int, channels_last: bool = False) -> Step:
    """A training step of the classifier's ResNet-18 (cross-entropy)."""
    net = torchvision.models.resnet18(num_classes=2)
    images, labels = torch.randn(batch, 3, image_size, image_size), torch.randint(0, 2, (batch,))
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4, fused=True)

    def step(bf16: bool) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(net(images), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


# name → (what it is, how to build its step); the shapes of the configs as they train on a CPU.
MODELS: dict[str, tuple[str, Callable[[], Step]]] = {
    "dit-s4": (
        "DiT-S/4, 64 px, batch 8 (configs/dit.yaml)",
        lambda: dit_step("configs/dit.yaml", 8),
    ),
    "dit-mini": (
        "DiT mini, 32 px, batch 24 (configs/dit_sample.yaml)",
        lambda: dit_step("configs/dit_sample.yaml", 24),
    ),
    "dit-tiny": (
        "DiT tiny, 16 px, batch 32 (tests)",
        lambda: dit_step("tests/configs/dit_tiny.yaml", 32),
    ),
    "classifier-128": (
        "ResNet-18, 128 px, batch 4 (configs/classifier.yaml)",
        lambda: classifier_step(128, 4),
    ),
    "classifier-64": (
        "ResNet-18, 64 px, batch 32 (configs/classifier_sample.yaml)",
        lambda: classifier_step(64, 32),
    ),
    "classifier-64-nhwc": ("the same, channels_last", lambda: classifier_step(64, 32, True)),
}


def matmul_rate(
    dtype: torch.dtype, largest: int = 2048, budget_s: float = 1.0
) -> tuple[float, int]:
    """FLOP/s (CPU time) of the fastest of three n² matmuls, and n: the largest power of two up
    to ``largest`` whose matmul fits in ``budget_s``. A CPU without native bfloat16 emulates it
    some 50x slower than float32, where one 2048² matmul would take a minute."""
    n = 256
    while True:
        a, b = (torch.randn(n, n, dtype=dtype) for _ in range(2))
        seconds = min(_cpu_seconds(a, b) for _ in range(3))
        if n >= largest or 8 * seconds > budget_s:  # the next size costs 8x
            return 2 * n**3 / seconds, n
        n *= 2


def _cpu_seconds(a: torch.Tensor, b: torch.Tensor) -> float:
    start = time.process_time()
    a @ b
    return time.process_time() - start


def measure(names: list[str], steps: int, warmup: int = 2) -> str:
    """The table: each model's float32 and bf16-mixed step and their peaks' shares."""
    torch.set_num_threads(1)
    built = {name: MODELS[name][1]() for name in names}
    seconds: dict[tuple[str, bool], list[float]] = {(n, b): [] for n in names for b in (0, 1)}
    rates: dict[bool, list[float]] = {False: [], True: []}
    sizes: dict[bool, int] = {}
    for round_ in range(warmup + steps):
        for name, step in built.items():
            for bf16 in (False, True):
                start = time.process_time()
                step(bf16)
                if round_ >= warmup:
                    seconds[name, bf16].append(time.process_time() - start)
        for bf16 in (False, True):
            rate, sizes[bf16] = matmul_rate(torch.bfloat16 if bf16 else torch.float32)
            rates[bf16].append(rate)
    peak = {bf16: statistics.median(r) for bf16, r in rates.items()}
    features = cpu_bf16_features()  # without them bf16 has no peak to speak of
    rows = []
    for name, step in built.items():
        with FlopCounterMode(display=False) as counter:
            step(False)
        flops = counter.get_total_flops()
        fp32, bf16 = (statistics.median(seconds[name, b]) for b in (False, True))
        ratios = [f / b for f, b in zip(seconds[name, False], seconds[name, True], strict=True)]
        rows.append(
            (
                MODELS[name][0],
                f"{flops / 1e9:,.1f}",
                f"{1000 * fp32:,.0f}",
                f"{flops / fp32 / peak[False]:.0%}",
                f"{1000 * bf16:,.0f}",
                f"{flops / bf16 / peak[True]:.0%}" if features else "(emulated)",
                f"{statistics.median(ratios):.2f}x",
            )
        )
    header = [
        "model",
        "GFLOP/step",
        "fp32 ms",
        "% of fp32 peak",
        "bf16-mixed ms",
        "% of bf16 peak",
        "bf16 vs fp32",
    ]
    native = f"native bf16: {', '.join(features)}" if features else "no native bf16 (emulated)"
    return (
        f"One thread, CPU time, {steps} steps after {warmup}; {native}; matmul peaks: fp32 "
        f"{peak[False] / 1e9:,.1f} GFLOP/s ({sizes[False]}²), "
        f"bf16 {peak[True] / 1e9:,.1f} GFLOP/s ({sizes[True]}²).\n\n" + markdown_table(header, rows)
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--models",
        type=lambda text: text.split(","),
        default=list(MODELS),
        help=f"comma-separated, of: {','.join(MODELS)}",
    )
    parser.add_argument("--steps", type=int, default=5, help="timed steps per precision")
    args = parser.parse_args()
    if not cpu_bf16_features():
        print(
            "This CPU has no native bf16: each bf16 step is emulated, 5-25x slower than float32, "
            "and a DiT-S/4 one over a minute. For a quick answer: --models dit-tiny,classifier-128",
            file=sys.stderr,
        )
    print(measure(args.models, args.steps))


if __name__ == "__main__":
    main()
