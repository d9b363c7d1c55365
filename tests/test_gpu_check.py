"""The GPU check (`python -m benchmarks.gpu`) without a GPU: what it refuses, where it writes,
and that one failing part neither hides nor stops the others. Its dry run runs in CI."""

from pathlib import Path

import pytest
import torch

from benchmarks import checkpoint, derived_configs, gpu


def test_without_a_gpu_it_names_the_dry_run_and_exits_2(monkeypatch, capsys) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu.main([]) == 2
    assert "--dry-run" in capsys.readouterr().err


def test_it_writes_under_out_else_the_env_out_else_a_new_folder(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("OUT", str(tmp_path / "env"))
    assert gpu.output_folder(tmp_path / "given") == tmp_path / "given"
    assert gpu.output_folder(None) == tmp_path / "env"
    monkeypatch.delenv("OUT")
    made = gpu.output_folder(None)
    assert made.is_dir() and made.name.startswith("tinycats-gpu-")
    made.rmdir()


def test_a_failing_part_is_reported_and_the_next_still_runs(monkeypatch) -> None:
    def broken(setup) -> str:
        raise RuntimeError("no such kernel")

    monkeypatch.setattr(
        gpu, "parts", lambda plan, out: {"first": broken, "second": lambda setup: "fine"}
    )
    (first, first_text, first_failed), second = gpu.run_parts(None, gpu.DRY_PLAN, Path("."))
    assert first == "first" and first_failed and first_text.startswith("FAILED")
    assert "RuntimeError: no such kernel" in first_text
    assert second[0] == "second" and second[1].startswith("fine") and not second[2]


def test_the_checkpoint_stall_is_the_writers_part_where_it_exists(monkeypatch) -> None:
    monkeypatch.delattr(checkpoint, "stall_table", raising=False)
    assert gpu.checkpoint_stall(None).startswith("not available")
    monkeypatch.setattr(checkpoint, "stall_table", lambda setup: "| sync | async |", raising=False)
    assert gpu.checkpoint_stall(None) == "| sync | async |"


@pytest.mark.parametrize("plan", [gpu.GPU_PLAN, gpu.DRY_PLAN])
def test_each_plan_names_configs_that_exist(plan) -> None:
    for config in (plan.dit, plan.classifier):
        assert (gpu.REPO / config).is_file()
    kill = plan.kill_config
    assert kill in derived_configs.names() if isinstance(kill, str) else (gpu.REPO / kill).is_file()
    assert set(plan.kill_modes) <= set(gpu.gpu_runs.MODES)
