"""The real ``tinycats`` command on tiny configs and the shipped real photos."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tinycats.models import CatClassifier
from tinycats.models.performance import auto_precision

from helpers.commands import tiny_overrides
from helpers.photos import make_broken_images

TINY = "tests/configs/classifier_tiny.yaml"
TIMEOUT = 300


def tinycats(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m tinycats`` (the console script's code) and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "tinycats", *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        cwd=cwd,
    )


def tiny_args(tmp: Path, sample: Path, *extra: str) -> list[str]:
    return ["-c", TINY, *tiny_overrides(tmp / "outputs", sample), *extra]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, pets_sample: Path) -> tuple[Path, Path]:
    """One tiny classifier run through ``tinycats fit``: (its tmp folder, its run directory)."""
    tmp = tmp_path_factory.mktemp("cli")
    done = tinycats("fit", *tiny_args(tmp, pets_sample, "--run.date=2026-01-02"))
    assert done.returncode == 0, done.stderr[-3000:]
    return tmp, tmp / "outputs/checkpoints/classifier/2026-01-02/tiny"


def test_fit_leaves_a_complete_run_directory(trained) -> None:
    _, run = trained
    names = {p.name for p in run.iterdir()}
    assert {"last.ckpt", "config.yaml", "metrics.csv", "summary.json"} <= names
    steps = [f"step={s:08d}.ckpt" for s in (2, 4, 6, 8)]
    assert sorted(n for n in names if n.startswith("step=")) == sorted(
        [*steps, *(f"{step}.sha256" for step in steps)]
    )
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["global_step"] == 8
    assert 0 <= summary["metrics"]["val/acc"] <= 1


def test_rerunning_a_finished_run_trains_nothing(trained, pets_sample: Path) -> None:
    tmp, run = trained
    # A time stamp set in the past: a rewrite shows at any clock resolution.
    os.utime(run / "last.ckpt", ns=(10**18, 10**18))
    before = (run / "last.ckpt").stat().st_mtime_ns
    again = tinycats("fit", *tiny_args(tmp, pets_sample, "--run.date=2026-01-02"))
    assert again.returncode == 0, again.stderr[-2000:]
    assert "already finished at step 8" in again.stderr
    assert (run / "last.ckpt").stat().st_mtime_ns == before


@pytest.mark.slow  # three more Trainer runs, ~30 s
def test_validate_test_and_predict_use_the_checkpoint(trained, pets_sample: Path) -> None:
    tmp, run = trained
    chosen = auto_precision(None, model=CatClassifier()) or "32-true"
    for command, prefix in (("validate", "val"), ("test", "test")):
        done = tinycats(command, *tiny_args(tmp, pets_sample, f"--ckpt_path={run / 'last.ckpt'}"))
        assert done.returncode == 0, done.stderr[-2000:]
        assert f"{prefix}/acc" in done.stdout
        assert f"Precision: {chosen}, as " in done.stderr  # the machine's choice, logged
    photos = [sorted(pets_sample.glob("Sphynx_*.jpg"))[0], sorted(pets_sample.glob("pug_*.jpg"))[0]]
    done = tinycats(
        "predict",
        *tiny_args(
            tmp,
            pets_sample,
            f"--ckpt_path={run / 'last.ckpt'}",
            f"--data.predict_paths=[{photos[0]},{photos[1]}]",
        ),
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [line.split("\t") for line in done.stdout.splitlines() if "\t" in line]
    assert [Path(line[0]) for line in lines] == photos
    assert all(line[1] in ("cat", "dog") and 0.5 <= float(line[2]) <= 1 for line in lines)
    assert done.stderr.count(f"Precision: {chosen}, as ") == 1


def test_an_explicit_precision_wins(trained, pets_sample: Path) -> None:
    tmp, run = trained
    other = "32-true" if auto_precision(None, model=CatClassifier()) else "bf16-mixed"
    done = tinycats(
        "validate",
        *tiny_args(
            tmp, pets_sample, f"--ckpt_path={run / 'last.ckpt'}", f"--trainer.precision={other}"
        ),
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"Precision: {other}, as set by trainer.precision" in done.stderr


def test_predict_on_a_file_that_is_not_an_image_fails_clearly(trained, pets_sample: Path) -> None:
    tmp, run = trained
    bad = make_broken_images(tmp / "bad")["not_an_image"]
    done = tinycats(
        "predict",
        *tiny_args(
            tmp, pets_sample, f"--ckpt_path={run / 'last.ckpt'}", f"--data.predict_paths=[{bad}]"
        ),
    )
    assert done.returncode == 2
    assert "not readable images" in done.stderr and bad.name in done.stderr
    assert "Traceback" not in done.stderr


def test_an_unknown_config_key_is_refused(tmp_path: Path, pets_sample: Path) -> None:
    done = tinycats("fit", *tiny_args(tmp_path, pets_sample, "--model.init_args.lrr=0.1"))
    assert done.returncode != 0 and "lrr" in done.stderr
    assert not (tmp_path / "outputs").exists()


def test_missing_data_without_network_names_the_fix(tmp_path: Path) -> None:
    done = tinycats(
        "fit",
        "-c",
        TINY,
        f"--run.outputs={tmp_path / 'o'}",
        f"--data.root={tmp_path / 'd'}",
        "--data.source=oxford-pets",
        "--data.base_url=http://127.0.0.1:9/",
    )
    assert done.returncode == 1 and "Traceback" not in done.stderr  # 1: worth trying again
    assert "http://127.0.0.1:9/images.tar.gz" in done.stderr and str(tmp_path / "d") in done.stderr


def test_help_lists_every_command_and_its_examples_each_on_a_line(capsys) -> None:
    from tinycats.cli import TOOLS, main

    with pytest.raises(SystemExit) as stop:
        main(["--help"])
    assert stop.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    listed = {line.split()[0] for line in lines if line.startswith("  ") and len(line.split()) > 1}
    commands = {"fit", "validate", "test", "predict", "sample", "evaluate", "export", "serve"}
    assert commands | set(TOOLS) - {"evaluate-generator"} <= listed  # the alias stays unlisted
    examples = [line.strip() for line in lines[lines.index("examples:") + 1 :]]
    assert "tinycats fit -c configs/classifier_sample.yaml" in examples
    assert "tinycats serve" in examples


def test_help_and_print_config() -> None:
    top = tinycats("--help")
    assert top.returncode == 0 and "tinycats COMMAND --help" in top.stdout
    printed = tinycats("fit", "-c", TINY, "--print_config")
    assert printed.returncode == 0 and "class_path: tinycats.models.CatClassifier" in printed.stdout
    assert "every_n_train_steps: 2" in printed.stdout
