"""Runs on disk: where a run lives (``run_dir``), how it checkpoints (``checkpointing``), and
which checkpoint it continues from or a command loads (``resume``)."""
