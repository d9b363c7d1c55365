"""Where a training step's time goes: data, forward+backward, optimizer, checkpoint and the rest.

    python -m benchmarks.step_split [--configs configs/dit.yaml,...] [--quick]

One ``Trainer.fit`` per workload, as it trains (EMA updating every step), with Lightning's
SimpleProfiler and a VolumeCheckpoint that saves every step, keeping five (so each save also
prunes one and commits twice). From the profiler's per-call durations, for each step:

- data: ``[_TrainingEpochLoop].train_dataloader_next`` + ``[Strategy]…batch_to_device``;
- forward+backward: ``[Strategy]…training_step`` + ``[Strategy]…backward``;
- optimizer: ``[LightningModule]<Model>.optimizer_step`` minus those two, which run inside it
  (Lightning's closure); what is left is the AdamW step, ``zero_grad`` and their hooks;
- checkpoint: ``[Callback]VolumeCheckpoint{…}.on_train_batch_end`` (save, prune, commits);
- other: the step's wall time (between step starts) minus all of the above: the EMA update,
  the LR scheduler, logging and Lightning's own bookkeeping.

Each part is the median over the timed steps (the warm-up steps are left out). On a GPU the
module's hooks wait for their kernels before returning, so each part holds its own GPU time.
"""

import statistics
from dataclasses import dataclass
from pathlib import Path

from lightning.pytorch.profilers import SimpleProfiler

from benchmarks.harness import (
    Setup,
    StepTimer,
    Workload,
    markdown_table,
    parse_args,
    prepare,
    synchronize_after,
    trainer,
)
from tinycats.runs.checkpointing import CheckpointPolicy, build_checkpoints

KEEP_LAST = 5


@dataclass(frozen=True)
class StepSplit:
    """Median seconds of each part of one training step, and what the checkpoints were like."""

    config: str
    batch: int
    data: float
    forward_backward: float
    optimizer: float
    other: float
    checkpoint: float  # one save, with its prune and commits
    checkpoint_every: int  # the config's cadence
    commits_per_checkpoint: float
    checkpoint_mb: float

    @property
    def step(self) -> float:
        """Seconds of a step that does not checkpoint."""
        return self.data + self.forward_backward + self.optimizer + self.other

    @property
    def amortized_step(self) -> float:
        """Seconds per step with a checkpoint at the config's cadence."""
        return self.step + self.checkpoint / self.checkpoint_every

    def shares(self) -> dict[str, float]:
        """Each part's share of the amortized step."""
        parts = {
            "data": self.data,
            "forward+backward": self.forward_backward,
            "optimizer": self.optimizer,
            "checkpoint": self.checkpoint / self.checkpoint_every,
            "other": self.other,
        }
        return {name: seconds / self.amortized_step for name, seconds in parts.items()}


def profile_steps(workload: Workload, setup: Setup, folder: Path) -> StepSplit:
    """Fit the workload with the profiler and a checkpoint every step (see the module docstring)."""
    commits: list[int] = []
    checkpoints = build_checkpoints(
        CheckpointPolicy(every_n_train_steps=1, keep_last=KEEP_LAST),
        folder,
        lambda: commits.append(1),
    )
    timer, profiler = StepTimer(), SimpleProfiler()
    module = workload.module()
    hooks = ["on_after_batch_transfer", "training_step", "on_after_backward", "optimizer_step"]
    synchronize_after(module, hooks, setup.device)
    total = setup.sizes.warmup + setup.sizes.steps + 1
    trainer(
        setup.device,
        total,
        callbacks=[timer, *checkpoints],
        profiler=profiler,
        precision=workload.precision,
    ).fit(module, datamodule=workload.data(setup))
    calls = profiler.recorded_durations

    def per_step(prefix: str, suffix: str) -> list[float]:
        (key,) = (key for key in calls if key.startswith(prefix) and key.endswith(suffix))
        return calls[key]

    fetch = per_step("[_TrainingEpochLoop]", ".train_dataloader_next")
    to_device = per_step("[Strategy]", ".batch_to_device")
    forward = per_step("[Strategy]", ".training_step")
    backward = per_step("[Strategy]", ".backward")
    optimizer = per_step("[LightningModule]", ".optimizer_step")
    save = per_step("[Callback]VolumeCheckpoint", ".on_train_batch_end")
    parts: dict[str, list[float]] = {"data": [], "f+b": [], "optimizer": [], "checkpoint": []}
    rest = []
    # Step i runs from its start to the next step's start; the next batch is fetched in between.
    for i in range(setup.sizes.warmup, total - 1):
        parts["data"].append(fetch[i + 1] + to_device[i + 1])
        parts["f+b"].append(forward[i] + backward[i])
        parts["optimizer"].append(optimizer[i] - forward[i] - backward[i])
        parts["checkpoint"].append(save[i])
        rest.append(timer.stamps[i + 1] - timer.stamps[i] - sum(p[-1] for p in parts.values()))
    median = {name: statistics.median(values) for name, values in parts.items()}
    newest = max(folder.glob("step=*.ckpt"))
    return StepSplit(
        config=workload.config,
        batch=workload.batch,
        data=median["data"],
        forward_backward=median["f+b"],
        optimizer=median["optimizer"],
        other=max(0.0, statistics.median(rest)),
        checkpoint=median["checkpoint"],
        checkpoint_every=workload.checkpoint_every,
        commits_per_checkpoint=len(commits) / total,
        checkpoint_mb=newest.stat().st_size / 1e6,
    )


def measure(setup: Setup) -> list[StepSplit]:
    """The step split of every workload of ``setup``."""
    rows = []
    for workload in setup.workloads:
        folder = setup.root.parent / "checkpoints" / workload.name
        rows.append(profile_steps(workload, setup, folder))
    return rows


def table(rows: list[StepSplit]) -> str:
    """Milliseconds per part, and each part's share of the step with the config's checkpoints."""
    header = [
        "config",
        "batch",
        "data ms",
        "forward+backward ms",
        "optimizer ms",
        "other ms",
        "step ms",
        "checkpoint ms",
        "checkpoint every",
        "shares: data / f+b / opt / ckpt / other",
    ]
    return markdown_table(
        header,
        [
            (
                row.config,
                row.batch,
                *(
                    f"{1000 * s:,.1f}"
                    for s in (
                        row.data,
                        row.forward_backward,
                        row.optimizer,
                        row.other,
                        row.step,
                        row.checkpoint,
                    )
                ),
                row.checkpoint_every,
                " / ".join(f"{share:.0%}" for share in row.shares().values()),
            )
            for row in rows
        ],
    )


def main() -> None:
    args = parse_args(__doc__)
    with prepare(args.quick, args.configs) as setup:
        rows = measure(setup)
    print(table(rows))


if __name__ == "__main__":
    main()
