"""Running the real ``tinycats`` command on tiny configs: the overrides every such run needs."""

from pathlib import Path


def tiny_overrides(outputs: Path, sample: Path) -> list[str]:
    """Runs under ``outputs``, the data cache beside them, the real sample photos as the source."""
    return [
        f"--run.outputs={outputs}",
        f"--data.root={outputs / 'data'}",
        f"--data.source={sample}",
    ]
