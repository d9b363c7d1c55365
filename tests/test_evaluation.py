"""Evaluation: the classifier's report, FID/KID plumbing with a small feature extractor in place of
Inception, the memorisation check, and the `tinycats test` / `evaluate` commands."""

import io
import json
from contextlib import redirect_stdout
from pathlib import Path

import lightning
import pytest
import torch
from PIL import Image
from torch import Tensor, nn
from torchmetrics.classification import MulticlassConfusionMatrix
from torchmetrics.functional.classification import multiclass_accuracy, multiclass_f1_score
from torchmetrics.image.fid import FrechetInceptionDistance

import tinycats.commands.evaluate
from tinycats.cli import EXIT_USAGE, main
from tinycats.errors import TinyCatsError
from tinycats.evaluation.generator_metrics import (
    extract_features,
    fid_kid,
    format_scores,
    inception_extractor,
    scores_by_class,
)
from tinycats.evaluation.memorisation import (
    distance_summary,
    nearest_neighbours,
    save_nearest_pairs,
)
from tinycats.models import DiTGenerator
from tinycats.models.report import classification_report, write_report

from helpers.dit import TINY_DIT, TINY_SIZE

CONFIGS = Path(__file__).parent / "configs"
SIZE = 16


class SmallFeatures(nn.Module):
    """A fixed random convolutional net standing in for Inception: uint8 images → 32 features."""

    def __init__(self) -> None:
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(0)
            self.net = nn.Sequential(
                nn.Conv2d(3, 8, 4, stride=4), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten()
            )
        self.num_features = 32

    def forward(self, images: Tensor) -> Tensor:
        return self.net(images.float() / 255)


def _images(count: int, seed: int, shift: int = 0) -> Tensor:
    """Random uint8 images, made brighter by ``shift`` grey levels."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 196, (count, 3, SIZE, SIZE), generator=generator)
    return (images + shift).clamp(0, 255).to(torch.uint8)


@pytest.fixture(scope="module")
def extractor() -> SmallFeatures:
    return SmallFeatures().eval()


# --- FID and KID -----------------------------------------------------------------------------


def test_fid_of_a_set_with_itself_is_zero_and_grows_with_a_shift(extractor):
    real = extract_features(extractor, _images(200, seed=0), batch_size=64)
    scores = [
        fid_kid(real, extract_features(extractor, _images(200, 0, shift))) for shift in (0, 20, 60)
    ]
    (fid_same, kid_same, _), (fid_small, kid_small, _), (fid_large, kid_large, _) = scores
    assert abs(fid_same) < 1e-6
    assert 0 < fid_small < fid_large
    assert abs(kid_same) < 0.1 * kid_small and kid_small < kid_large  # KID orders them alike


def test_fid_through_precomputed_features_equals_torchmetrics_on_images(extractor):
    real, fake = _images(64, seed=1), _images(64, seed=2, shift=30)
    direct = FrechetInceptionDistance(feature=extractor)
    direct.update(real, real=True)
    direct.update(fake, real=False)
    fid, _, _ = fid_kid(extract_features(extractor, real), extract_features(extractor, fake))
    assert fid == pytest.approx(direct.compute().item(), rel=1e-4)


def test_kid_is_repeatable():
    real, fake = torch.randn(50, 8, dtype=torch.float64), torch.randn(40, 8, dtype=torch.float64)
    assert fid_kid(real, fake) == fid_kid(real, fake)


def test_scores_by_class_and_their_table(extractor):
    labels = torch.arange(3).repeat_interleave(10)
    real = extract_features(extractor, _images(30, seed=3))
    fake = extract_features(extractor, _images(30, seed=4, shift=10))
    scores = scores_by_class(
        real, labels, fake, labels, ["Bengal", "Birman", "Sphynx"], steps=20, cfg_scale=2.5
    )
    assert [s.group for s in scores] == ["all", "Bengal", "Birman", "Sphynx"]
    assert [(s.num_samples, s.num_real) for s in scores] == [(30, 30), *[(10, 10)] * 3]
    assert all(s.steps == 20 and s.cfg_scale == 2.5 and s.fid > 0 for s in scores)
    table = format_scores(scores).splitlines()
    assert table[0].split()[:5] == ["group", "samples", "real", "steps", "guidance"]
    assert table[2].split()[:5] == ["Bengal", "10", "10", "20", "2.5"]


def test_missing_inception_weights_are_a_clear_error(tmp_path: Path):
    pytest.importorskip("torch_fidelity")
    with pytest.raises(TinyCatsError, match="--inception_weights"):
        inception_extractor(str(tmp_path / "missing.pth"))


# --- Memorisation ----------------------------------------------------------------------------


def test_memorisation_finds_an_exact_copy_of_a_training_image(extractor, tmp_path: Path):
    train = _images(40, seed=5)
    samples = _images(6, seed=6)
    samples[3] = train[17]
    distances, indices = nearest_neighbours(
        extract_features(extractor, samples), extract_features(extractor, train)
    )
    assert distances[3].item() == pytest.approx(0, abs=1e-9) and indices[3].item() == 17
    assert (distances[[0, 1, 2, 4, 5]] > 1e-3).all()
    summary = distance_summary(distances)
    assert summary["count"] == 6 and summary["min"] == pytest.approx(0, abs=1e-9)
    save_nearest_pairs(samples[:2], train[indices[:2]], ["one", "two"], tmp_path / "pairs.png")
    with Image.open(tmp_path / "pairs.png") as picture:
        assert picture.format == "PNG" and picture.height > 2 * 96  # two enlarged rows


# --- The classifier's report -----------------------------------------------------------------


def test_report_scores_equal_torchmetrics_on_the_predictions(tmp_path: Path):
    generator = torch.Generator().manual_seed(0)
    target = torch.randint(0, 3, (50,), generator=generator)  # class 3 never occurs
    preds = torch.where(
        torch.rand(50, generator=generator) < 0.6,
        target,
        torch.randint(0, 4, (50,), generator=generator),
    )
    matrix = MulticlassConfusionMatrix(4)(preds, target)
    names = ["cat", "dog", "fox", "owl"]
    report = write_report(matrix, names, tmp_path, "test")
    assert report == json.loads((tmp_path / "report_test.json").read_text())
    assert report["accuracy"] == pytest.approx(
        multiclass_accuracy(preds, target, 4, average="micro").item()
    )
    assert report["macro_f1"] == pytest.approx(multiclass_f1_score(preds, target, 4).item())
    assert report["per_class"]["cat"]["support"] == (target == 0).sum().item()
    assert report["num_images"] == 50 and report["confusion_matrix"] == matrix.tolist()
    with Image.open(tmp_path / "confusion_test.png") as picture:
        assert picture.format == "PNG" and picture.width > 4 * 44 and picture.height > 4 * 44


def test_report_refuses_an_empty_matrix():
    with pytest.raises(ValueError, match="non-empty 2x2"):
        classification_report(torch.zeros(2, 2), ["cat", "dog"])


def test_tinycats_test_writes_the_report_and_a_png(run_tinycats, tmp_path: Path):
    config = CONFIGS / "classifier_tiny.yaml"
    summary = run_tinycats("fit", config, tmp_path, "--trainer.max_steps", "2")
    run = Path(summary["run_dir"])
    run_tinycats("test", config, tmp_path, "--ckpt_path", str(run / "last.ckpt"))
    (found,) = run.rglob("report_test.json")  # where the test's logs go: the run or a subfolder
    logs = found.parent
    report = json.loads(found.read_text())
    assert report["stage"] == "test" and report["classes"] == ["cat", "dog"]
    assert report["num_images"] == sum(map(sum, report["confusion_matrix"])) > 0
    metrics = (logs / "metrics.csv").read_text().splitlines()
    logged = dict(zip(metrics[0].split(","), metrics[-1].split(","), strict=True))
    assert report["accuracy"] == pytest.approx(float(logged["test/acc"]))
    assert report["macro_f1"] == pytest.approx(float(logged["test/f1"]))
    with Image.open(logs / "confusion_test.png") as picture:
        picture.verify()
        assert picture.format == "PNG"


# --- tinycats evaluate (also as evaluate-generator) ---------------------------------------


def test_evaluate_generator_scores_a_tiny_run(run_tinycats, tmp_path: Path, monkeypatch):
    run_tinycats("fit", CONFIGS / "dit_tiny.yaml", tmp_path)
    (run,) = (tmp_path / "checkpoints" / "dit").glob("*/tiny")
    # Inception's weights would need a download: the small extractor takes its place.
    monkeypatch.setattr(
        tinycats.commands.evaluate, "inception_extractor", lambda weights_path: SmallFeatures()
    )
    with redirect_stdout(io.StringIO()) as printed:
        main(
            [
                "evaluate",
                "--ckpt_path",
                str(run),
                "--n",
                "3",
                "--steps",
                "2",
                "--sweep",
                "[1,3]",
                "--show",
                "4",
                "--out",
                str(tmp_path / "eval"),
            ]
        )
    report = json.loads((tmp_path / "eval" / "generator_eval.json").read_text())
    assert report["setting"]["num_train"] == 72 and report["setting"]["num_held_out"] == 24
    assert [s["group"] for s in report["scores"]][:2] == ["all", "Abyssinian"]
    assert len(report["scores"]) == 13 and report["scores"][0]["num_samples"] == 36
    assert [s["cfg_scale"] for s in report["sweep"]] == [1.0, 3.0]
    assert report["reference"][0]["group"] == "held-out real"
    assert set(report["memorisation"]) == {"samples", "held-out real"}
    assert len(report["closest_samples"]) == 4
    text = printed.getvalue()
    assert (
        "group samples real steps guidance" in " ".join(text.split()) and "Guidance sweep" in text
    )
    with Image.open(tmp_path / "eval" / "nearest_training_images.png") as picture:
        assert picture.format == "PNG"


def test_evaluate_generator_needs_the_runs_config(tmp_path: Path, capsys):
    ckpt = tmp_path / "last.ckpt"
    model = DiTGenerator(num_classes=12, **TINY_DIT, image_size=TINY_SIZE)
    hparams = dict(model.hparams)
    version = {"pytorch-lightning_version": lightning.__version__}
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": hparams, **version}, ckpt)
    with pytest.raises(SystemExit) as stop:
        main(["evaluate-generator", "--ckpt_path", str(ckpt)])
    assert stop.value.code == EXIT_USAGE
    assert "config.yaml does not exist" in capsys.readouterr().err


def test_evaluate_generator_help_explains_the_figures(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["evaluate", "--help"])
    assert stop.value.code == 0
    text = capsys.readouterr().out
    for words in (
        "--ckpt",
        "--n",
        "--steps",
        "--cfg_scale",
        "--sweep",
        "--inception_weights",
        "FID",
        "KID",
        "memorisation",
    ):
        assert words in text
