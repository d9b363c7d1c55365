"""Tests for `tinycats sample` and the labelled grid, on a tiny DiT trained by the real `tinycats fit`."""

import logging
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image
from torchvision.transforms.functional import pil_to_tensor

from tinycats.cli import EXIT_USAGE, main
from tinycats.errors import TinyCatsError
from tinycats.models import CatClassifier, DiTGenerator, performance
from tinycats.models.grid import PADDING, save_labelled_grid
from tinycats.runs.loading import load_trained

from helpers.dit import TINY_DIT

TINY_CONFIG = Path(__file__).parent / "configs" / "dit_tiny.yaml"
SIZE = 16  # the tiny config's image size
BREEDS = 12


@pytest.fixture(scope="module")
def run_dir(run_tinycats, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run directory of a 4-step `tinycats fit` of the tiny config on the sample photos."""
    outputs = tmp_path_factory.mktemp("outputs")
    run_tinycats("fit", TINY_CONFIG, outputs)
    (found,) = (outputs / "checkpoints" / "dit").glob("*/tiny")
    return found


def _sample(tmp_path: Path, ckpt: Path, out: str, *options: str) -> Path:
    main(
        ["sample", "--ckpt_path", str(ckpt), "--out", str(tmp_path / out), "--steps", "3", *options]
    )
    return tmp_path / out


def test_fit_writes_checkpoints_and_an_ema_sample_grid(run_dir: Path):
    assert {
        "last.ckpt",
        "step=00000002.ckpt",
        "step=00000004.ckpt",
        "config.yaml",
        "metrics.csv",
        "summary.json",
    } <= {p.name for p in run_dir.iterdir()}
    with Image.open(run_dir / "samples" / "step=00000004.png") as grid:
        assert grid.height == BREEDS * (SIZE + PADDING) + PADDING  # one row per breed


def test_sample_loads_the_ema_weights(run_dir: Path):
    checkpoint = torch.load(run_dir / "last.ckpt", weights_only=True)
    loaded = load_trained(run_dir / "last.ckpt", DiTGenerator).state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in checkpoint["state_dict"].items())
    live = checkpoint["current_model_state"]
    assert any(not torch.equal(loaded[k], live[k]) for k in live)


def test_sample_writes_a_grid_of_a_row_per_breed(run_dir: Path, tmp_path: Path):
    out = _sample(tmp_path, run_dir / "last.ckpt", "all.png", "--breed", "all", "--n", "3")
    with Image.open(out) as grid:
        assert grid.format == "PNG" and grid.mode == "RGB"
        assert grid.height == BREEDS * (SIZE + PADDING) + PADDING
        assert grid.width > 3 * (SIZE + PADDING) + PADDING  # the images and the breed names


def test_sample_is_deterministic_for_a_seed(run_dir: Path, tmp_path: Path):
    first = _sample(tmp_path, run_dir / "last.ckpt", "a.png", "--breed", "Bengal", "--n", "4")
    again = _sample(tmp_path, run_dir, "b.png", "--breed", "bengal", "--n", "4")  # the run dir
    other = _sample(tmp_path, run_dir, "c.png", "--breed", "Bengal", "--n", "4", "--seed", "1")
    assert first.read_bytes() == again.read_bytes()
    assert first.read_bytes() != other.read_bytes()
    with Image.open(first) as grid:
        assert grid.height == SIZE + 2 * PADDING


def test_a_run_dir_skips_a_truncated_newest_checkpoint(run_dir: Path, tmp_path: Path, caplog):
    copy = shutil.copytree(run_dir, tmp_path / "run")
    last = copy / "last.ckpt"
    last.write_bytes(last.read_bytes()[:1000])  # also makes it the newest file
    model = load_trained(copy, DiTGenerator)
    assert f"Skipping checkpoint {last}: its SHA-256 differs" in caplog.text
    (copy / "last.ckpt.sha256").unlink()  # as written before checksums: truncation still shows
    caplog.clear()
    load_trained(copy, DiTGenerator)
    assert f"Skipping checkpoint {last}: unreadable" in caplog.text
    assert model.hparams.width == TINY_DIT["width"]


def _classifier_checkpoint(path: Path) -> Path:
    """A checkpoint laid out like Lightning's, of the cat classifier."""
    model = CatClassifier(num_classes=2, backbone="mobilenet_v3_small")
    hparams = {"_class_path": "tinycats.models.CatClassifier", **model.hparams}
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": hparams}, path)
    return path


@pytest.mark.parametrize(
    ("problem", "message"),
    [
        ("classifier", "checkpoint of CatClassifier, not of the DiT generator"),
        ("missing", "does not exist"),
        ("breed", "Unknown breed 'Tabby'. This model knows: all, Abyssinian, Bengal"),
    ],
)
def test_sample_refuses_clearly(run_dir: Path, tmp_path: Path, capsys, problem: str, message: str):
    ckpt = {
        "classifier": _classifier_checkpoint(tmp_path / "classifier.ckpt"),
        "missing": tmp_path / "nope.ckpt",
        "breed": run_dir,
    }[problem]
    with pytest.raises(SystemExit) as stop:
        _sample(tmp_path, ckpt, "x.png", "--breed", "Tabby" if problem == "breed" else "all")
    assert stop.value.code == EXIT_USAGE
    error = capsys.readouterr().err
    assert message in error and "Traceback" not in error
    assert not (tmp_path / "x.png").exists()


def test_sample_help_explains_the_options(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["sample", "--help"])
    assert stop.value.code == 0
    text = capsys.readouterr().out
    for option in (
        "--ckpt",
        "--breed",
        "--n",
        "--steps",
        "--cfg_scale",
        "--seed",
        "--method",
        "--out",
    ):
        assert option in text


def test_the_old_cfg_name_still_sets_the_guidance_scale_with_a_warning(
    run_dir: Path, tmp_path: Path, caplog
):
    new = _sample(
        tmp_path, run_dir, "new.png", "--breed", "Bengal", "--n", "2", "--cfg_scale", "30"
    )
    config = tmp_path / "old.yaml"
    config.write_text("cfg: 30\n")
    with caplog.at_level(logging.WARNING, logger="tinycats"):
        flag = _sample(
            tmp_path, run_dir, "flag.png", "--breed", "Bengal", "--n", "2", "--cfg", "30"
        )
        key = _sample(
            tmp_path, run_dir, "key.png", "--breed", "Bengal", "--n", "2", "-c", str(config)
        )
    default = _sample(tmp_path, run_dir, "default.png", "--breed", "Bengal", "--n", "2")
    assert flag.read_bytes() == key.read_bytes() == new.read_bytes() != default.read_bytes()
    assert caplog.text.count("--cfg is deprecated: use --cfg_scale") == 2


def test_grid_labels_each_row(tmp_path: Path):
    images = torch.zeros(6, 3, SIZE, SIZE)  # black images: any dark pixel in the margin is text
    save_labelled_grid(images, ["Bengal", "Maine_Coon"], tmp_path / "grid.png")
    with Image.open(tmp_path / "grid.png") as grid:
        pixels = pil_to_tensor(grid.convert("L"))[0]
    assert grid.height == 2 * (SIZE + PADDING) + PADDING
    margin = grid.width - (3 * (SIZE + PADDING) + PADDING)
    for row in range(2):
        top = PADDING + row * (SIZE + PADDING)
        assert (pixels[top : top + SIZE, :margin] < 128).any(), f"row {row} has no label"


def test_sample_reads_its_options_from_a_config_file(run_dir: Path, tmp_path: Path):
    config = tmp_path / "sample.yaml"
    config.write_text(f"ckpt_path: {run_dir}\nbreed: Bengal\nn: 2\nsteps: 2\n")
    main(["sample", "--config", str(config), "--out", str(tmp_path / "grid.png")])
    with Image.open(tmp_path / "grid.png") as grid:
        assert grid.height == SIZE + 2 * PADDING  # one breed: one row
        assert grid.width > 2 * (SIZE + PADDING)


def test_a_checkpoint_of_a_named_dit_shape_is_refused_clearly(run_dir: Path, tmp_path: Path):
    """Checkpoints written before the shapes moved into the configs hold ``arch`` instead."""
    checkpoint = torch.load(run_dir / "last.ckpt", weights_only=True)
    hparams = checkpoint["hyper_parameters"]
    for key in TINY_DIT:
        del hparams[key]
    hparams["arch"] = "tiny"
    torch.save(checkpoint, tmp_path / "old.ckpt")
    with pytest.raises(TinyCatsError, match="older tinycats: DiTGenerator no longer takes arch"):
        load_trained(tmp_path / "old.ckpt", DiTGenerator)


def test_sample_runs_in_the_precision_the_machine_chooses(
    run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    autocast_seen = []
    generate = DiTGenerator.generate

    def spy(self, *args, **kwargs):
        autocast_seen.append(torch.is_autocast_enabled("cpu"))
        return generate(self, *args, **kwargs)

    monkeypatch.setattr(DiTGenerator, "generate", spy)
    monkeypatch.setattr(performance, "cpu_bf16_features", lambda: ("amx_bf16",))
    # The tiny DiT as if it were wide enough for bf16 to pay, then as it is.
    for min_width, bf16 in ((0, True), (10**6, False)):
        monkeypatch.setattr(DiTGenerator, "cpu_bf16_min_width", min_width)
        _sample(tmp_path, run_dir / "last.ckpt", "p.png", "--breed", "Bengal", "--n", "1")
        assert autocast_seen.pop() is bf16
