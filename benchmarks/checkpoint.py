"""What a checkpoint costs: save + prune + commit against one training step, and resume latency.

For the classifier (ResNet-18) and the default DiT (S-4-64): a Trainer fit that checkpoints every
step (keeping five, so every save also prunes) against the same fit without checkpoints.

    python benchmarks/checkpoint.py [--steps 6]
"""

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from tinycats.checkpoint import CheckpointPolicy, build_checkpoints
from tinycats.models import CatClassifier, DiTGenerator

REPO = Path(__file__).resolve().parents[1]


def fit_seconds(
    model: L.LightningModule, images: torch.Tensor, steps: int, folder: Path | None
) -> tuple[float, int]:
    """Seconds per step of a short fit, with or without a checkpoint every step; and commits made."""
    commits = []
    callbacks = [] if folder is None else build_checkpoints(
        CheckpointPolicy(every_n_train_steps=1, keep_last=5), folder, lambda: commits.append(1))  # fmt: skip
    trainer = L.Trainer(max_steps=steps + 1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=folder is not None, callbacks=callbacks, num_sanity_val_steps=0)  # fmt: skip
    loader = DataLoader(
        TensorDataset(images, torch.zeros(len(images), dtype=torch.long)),
        batch_size=len(images) // (steps + 1),
    )
    start = time.perf_counter()
    trainer.fit(model, loader)
    return (time.perf_counter() - start) / (steps + 1), len(commits)


def resume_latency(tmp: Path) -> float:
    """Seconds from process start until a run resumed one step before its end has finished."""
    args = [sys.executable, "-m", "tinycats", "fit", "-c", "tests/configs/classifier_tiny.yaml",
            f"--run.outputs={tmp}/out", f"--data.root={tmp}/data", "--trainer.max_steps=7"]  # fmt: skip
    subprocess.run(args, cwd=REPO, check=True, capture_output=True)
    run = next((tmp / "out").rglob("summary.json")).parent
    (run / "summary.json").unlink()
    start = time.perf_counter()
    subprocess.run([*args[:-1], "--trainer.max_steps=8"], cwd=REPO, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args()
    models = {
        "classifier (resnet18, 64 px, batch 32)": (lambda: CatClassifier(num_classes=2), 64),
        "DiT S-4-64 (64 px, batch 32)": (
            lambda: DiTGenerator(num_classes=12, arch="S-4-64", image_size=64),
            64,
        ),
    }
    print(
        "| model | params | step s | step + checkpoint s | checkpoint share | commits/checkpoint |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for name, (build, size) in models.items():
        images = torch.randint(0, 256, (32 * (args.steps + 1), 3, size, size), dtype=torch.uint8)
        with tempfile.TemporaryDirectory() as tmp:
            torch.manual_seed(0)
            plain, _ = fit_seconds(build(), images, args.steps, None)
            torch.manual_seed(0)
            saving, commits = fit_seconds(build(), images, args.steps, Path(tmp))
        params = sum(p.numel() for p in build().parameters()) / 1e6
        extra = saving - plain
        print(
            f"| {name} | {params:.1f}M | {plain:.3f} | {saving:.3f} | {extra / saving:.0%} | {commits / (args.steps + 1):.1f} |"
        )
    with tempfile.TemporaryDirectory() as tmp:
        print(
            f"\nResume latency (process start → resumed, one step, exit; tiny classifier): {resume_latency(Path(tmp)):.1f} s"
        )


if __name__ == "__main__":
    main()
