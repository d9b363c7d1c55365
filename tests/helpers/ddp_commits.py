"""Run ``tinycats fit`` under two-process DDP, recording which rank calls each commit.

Lightning's DDP launcher re-executes this script for rank 1, so both ranks run this code.
Usage: python ddp_commits.py RECORD_FILE -- <tinycats fit arguments>
"""

import sys

import torch.distributed as dist

from tinycats.cli import run_cli


def main() -> None:
    record, _, args = sys.argv[1], sys.argv[2], sys.argv[3:]

    def commit() -> None:
        rank = dist.get_rank() if dist.is_initialized() else -1
        with open(record, "a") as file:
            file.write(f"{rank}\n")

    run_cli(["fit", *args], commit_outputs=commit)


if __name__ == "__main__":
    main()
