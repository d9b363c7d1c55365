"""Runs on disk: where a run lives (``run_dir``), how it checkpoints (``checkpointing``), which
checkpoint it continues from (``resume``), and how a command loads a trained module
(``loading``)."""
