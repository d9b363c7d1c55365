"""tinycats benchmarks: ``python -m benchmarks`` runs them all; ``python -m benchmarks.<part>`` one.

Parts: throughput, step_split, checkpoint, data_pipeline, cold_start; harness holds what
they share (the configs as benchmarked, their data, the timing).
"""
