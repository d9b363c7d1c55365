"""The benchmark suite runs end to end and writes its report; its speed is never asserted."""

import itertools
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tinycats.models import CatClassifier, DiTGenerator
from tinycats.models.performance import auto_precision, cpu_bf16_features

from helpers.dit import TINY_DIT, TINY_SIZE

REPO = Path(__file__).resolve().parents[1]

SUMMARY_COLUMNS = [
    "config",
    "batch",
    "precision",
    "vs fp32",
    "img/s",
    "data",
    "forward+backward",
    "optimizer",
    "checkpoint",
    "other",
    "TFLOP/s",
    "% of peak",
    "Lightning vs raw",
    "import s",
    "first step s",
]


def first_table(report: str, heading: str) -> list[list[str]]:
    """The cells of the first Markdown table after ``heading``, header row first."""
    lines = report.split(heading, 1)[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    table = itertools.takewhile(lambda line: line.startswith("|"), lines[start:])
    return [
        [cell.strip() for cell in line.strip("|").split("|")]
        for line in table
        if not set(line) <= set("|-: ")
    ]


@pytest.mark.slow
def test_the_quick_suite_writes_the_summary_and_every_part(pets_sample, tmp_path) -> None:
    out = tmp_path / "results.md"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = out.read_text()
    for heading in (
        "## Machine",
        "## Summary",
        "## Training throughput",
        "## Step split",
        "## Checkpoints",
        "## Data pipeline",
        "## Cold start",
    ):
        assert heading in report
    for line in (
        r"- date: \d{4}-\d\d-\d\d",
        r"- CPU: .+, \d+ cores",
        r"- RAM: \d+ GiB",
        r"- GPU: ",
    ):
        assert re.search(line, report), line
    assert f"torch {torch.__version__}" in report and "--quick" in report

    header, *rows = first_table(report, "## Summary")
    assert header == SUMMARY_COLUMNS
    assert [row[0] for row in rows] == [
        "tests/configs/classifier_tiny.yaml",
        "tests/configs/dit_tiny.yaml",
    ]
    for row in rows:
        shares = [float(cell.rstrip("%")) for cell in row[5:10]]
        assert sum(shares) == pytest.approx(100, abs=0.5)  # the parts make up the whole step
        assert all(float(cell.replace(",", "")) > 0 for cell in (row[4], row[13], row[14]))
        assert float(row[3].rstrip("x")) > 0
    # Each config in the precision `tinycats fit` would pick here.
    assert [row[2] for row in rows] == [
        auto_precision(None, model=CatClassifier()) or "32-true",
        auto_precision(None, model=DiTGenerator(**TINY_DIT, image_size=TINY_SIZE)) or "32-true",
    ]
    assert "- fp32 peak: " in report


@pytest.mark.parametrize(
    ("name", "tflops"),
    [
        ("NVIDIA H100 80GB HBM3", 989),
        ("NVIDIA H100 PCIe", 756),
        ("NVIDIA H200", 989),
        ("NVIDIA B200", 2250),
        ("NVIDIA A100-SXM4-80GB", 312),
        ("NVIDIA L40S", 362),
        ("NVIDIA L4", 121),
        ("NVIDIA A10", 125),
        ("Tesla T4", 65),
        ("NVIDIA A10G", None),  # not in the table: the peak measured in the run
    ],
)
def test_gpu_peaks_are_the_published_ones_or_the_measured_one(name, tflops, monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(REPO))
    from benchmarks.throughput import device_peak

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    peak = device_peak(torch.device("cuda"), measured=1.0)
    assert peak.flops == (1.0 if tflops is None else tflops * 1e12)
    assert name in peak.source


def test_the_precision_part_times_both_precisions_of_each_model(monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(REPO))
    from benchmarks.precision import measure

    threads = torch.get_num_threads()
    try:
        report = measure(["dit-tiny"], steps=1, warmup=0)
    finally:
        torch.set_num_threads(threads)
    header, row = first_table(report, "GFLOP/s (")
    assert header == [
        "model",
        "GFLOP/step",
        "fp32 ms",
        "% of fp32 peak",
        "bf16-mixed ms",
        "% of bf16 peak",
        "bf16 vs fp32",
    ]
    assert row[0].startswith("DiT tiny")
    native = cpu_bf16_features()
    assert (f"native bf16: {', '.join(native)}" if native else "no native bf16") in report
    # Structure, not size: one unwarmed step's share rounds to 0 % on a fast CPU (AMX).
    assert float(row[1]) > 0  # FLOPs are counted, not timed
    number, share = r"\d[\d,]*(\.\d+)?", r"\d+%"
    assert all(re.fullmatch(number, cell) for cell in (row[2], row[4]))
    assert re.fullmatch(share, row[3])
    assert re.fullmatch(share, row[5]) if native else row[5] == "(emulated)"
    assert re.fullmatch(r"\d+\.\d\dx", row[6])


def test_the_precision_parts_matmuls_stop_growing_at_their_time_budget() -> None:
    from benchmarks.precision import matmul_rate

    assert matmul_rate(torch.float32, largest=512, budget_s=60)[1] == 512
    assert matmul_rate(torch.float32, largest=2048, budget_s=0)[1] == 256
    assert matmul_rate(torch.float32, largest=256)[0] > 0
