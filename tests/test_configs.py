"""Every shipped config resolves and trains a step, from a bare clone, on the CPU, offline."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tinycats.cli import run_cli

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted(str(path.relative_to(REPO)) for path in (REPO / "configs").rglob("*.yaml"))


def small_and_offline(config: str, tmp: Path) -> list[str]:
    """Overrides that keep the config's shapes but make one step cheap and download nothing."""
    spec = yaml.safe_load((REPO / config).read_text())
    overrides = [
        f"--run.outputs={tmp / 'outputs'}",
        f"--data.root={tmp / 'data'}",
        "--data.source=data/sample/images",
        "--data.image_size=32",
        "--data.batch_size=4",
    ]
    if spec["model"].get("init_args", {}).get("weights") is not None:
        overrides.append("--model.init_args.weights=null")  # pretrained weights need the internet
    return overrides


def test_the_configs_folder_holds_configs() -> None:
    assert "configs/classifier_sample.yaml" in CONFIGS and len(CONFIGS) >= 4


@pytest.mark.parametrize("config", CONFIGS)
def test_a_shipped_config_prints_its_resolved_config(config: str, tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as done:
        run_cli(
            [
                "fit",
                "-c",
                str(REPO / config),
                *small_and_offline(config, tmp_path),
                "--print_config",
            ]
        )
    assert done.value.code in (None, 0)
    resolved = yaml.safe_load(capsys.readouterr().out)
    given = yaml.safe_load((REPO / config).read_text())
    assert resolved["model"]["class_path"] == given["model"]["class_path"]
    assert resolved["data"]["source"] == "data/sample/images"


@pytest.mark.slow
@pytest.mark.parametrize("config", CONFIGS)
def test_a_shipped_config_trains_one_step_on_the_sample(config: str, tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tinycats",
            "fit",
            "-c",
            config,
            *small_and_offline(config, tmp_path),
            "--trainer.max_steps=1",
            "--trainer.limit_val_batches=1",
            "--trainer.enable_progress_bar=false",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(next((tmp_path / "outputs").rglob("summary.json")).read_text())
    assert summary["status"] == "finished" and summary["global_step"] == 1
