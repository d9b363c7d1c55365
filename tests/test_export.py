"""ONNX export through the real `tinycats export` command: parity with PyTorch for the classifier
and the DiT's velocity, the onnxruntime sampler against the PyTorch one, int8 quantisation."""

import io
import re
import subprocess
import sys
from contextlib import redirect_stdout
from pathlib import Path

import lightning
import numpy as np
import onnxruntime as ort
import pytest
import torch

from tinycats.cli import EXIT_USAGE, main
from tinycats.commands.export import classifier_difference, quantize_int8
from tinycats.commands.onnx_sampler import class_names, load_velocity, onnx_sample
from tinycats.models import CatClassifier, DiTGenerator
from tinycats.networks.flow import sample

from helpers.dit import TINY_DIT, TINY_SIZE

TOLERANCE = 1e-4  # largest absolute difference allowed between onnxruntime and PyTorch
CLASSIFIER_SIZE = 32


def _randomise(module: torch.nn.Module) -> None:
    """Give every weight a random value: the DiT starts with a zero output layer, which would
    make any two graphs agree."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)


def _save(model: torch.nn.Module, path: Path, **extra: object) -> Path:
    """A checkpoint laid out like Lightning's (weights and hyperparameters)."""
    hparams = {"_class_path": f"tinycats.models.{type(model).__name__}", **model.hparams}
    version = {"pytorch-lightning_version": lightning.__version__}
    torch.save(
        {"state_dict": model.state_dict(), "hyper_parameters": hparams, **version, **extra}, path
    )
    return path


@pytest.fixture(scope="module")
def classifier_export(tmp_path_factory) -> tuple[CatClassifier, Path, str]:
    """A random 3-class classifier, its graph from `tinycats export --quantize`, and the output."""
    tmp = tmp_path_factory.mktemp("classifier")
    model = CatClassifier(num_classes=3, class_names=["a", "b", "c"], backbone="resnet18").eval()
    ckpt = _save(
        model, tmp / "model.ckpt", datamodule_hyper_parameters={"image_size": CLASSIFIER_SIZE}
    )
    printed = _run_export(ckpt, tmp / "export", "--quantize", "true")
    return model, tmp / "export" / "classifier.onnx", printed


@pytest.fixture(scope="module")
def dit_export(tmp_path_factory) -> tuple[DiTGenerator, Path, str]:
    """A random tiny DiT, its velocity graph made by `tinycats export`, and the output."""
    tmp = tmp_path_factory.mktemp("dit")
    model = DiTGenerator(num_classes=12, **TINY_DIT, image_size=TINY_SIZE).eval()
    _randomise(model)
    printed = _run_export(_save(model, tmp / "last.ckpt"), tmp / "export")
    return model, tmp / "export" / "dit_velocity.onnx", printed


def _run_export(ckpt: Path, out: Path, *options: str) -> str:
    """Run `tinycats export` and return what it printed."""
    with redirect_stdout(io.StringIO()) as printed:
        main(["export", "--ckpt_path", str(ckpt), "--out", str(out), *options])
    return printed.getvalue()


def test_classifier_graph_matches_pytorch(classifier_export):
    model, path, printed = classifier_export
    images = torch.rand(5, 3, CLASSIFIER_SIZE, CLASSIFIER_SIZE)  # another batch size than exported
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits = session.run(None, {"images": images.numpy()})[0]
    with torch.no_grad():
        assert np.abs(logits - model(images).numpy()).max() < TOLERANCE
    assert class_names(session) == ["a", "b", "c"]
    assert "ONNX vs PyTorch on 4 random inputs: max abs difference" in printed


def test_quantised_classifier_is_smaller_and_still_runs(classifier_export):
    _, path, printed = classifier_export
    quantised = path.with_name("classifier.int8.onnx")
    assert quantised.stat().st_size < path.stat().st_size / 3  # int8 weights instead of float32
    session = ort.InferenceSession(str(quantised), providers=["CPUExecutionProvider"])
    images = np.random.default_rng(0).random((2, 3, CLASSIFIER_SIZE, CLASSIFIER_SIZE))
    assert session.run(None, {"images": images.astype(np.float32)})[0].shape == (2, 3)
    assert "int8 weights" in printed and " MB → " in printed


def test_the_int8_difference_printed_is_the_quantised_graphs(classifier_export):
    model, path, printed = classifier_export
    shown = float(re.search(r"int8 weights: .* difference from PyTorch (\S+)", printed)[1])
    quantised = path.with_name("classifier.int8.onnx")
    int8, plain = (classifier_difference(model, CLASSIFIER_SIZE, p) for p in (quantised, path))
    assert shown == float(f"{int8:.2e}") and int8 > 10 * plain  # not the float graph's


def test_quantize_int8_reports_both_sizes(dit_export, tmp_path: Path):
    _, path, _ = dit_export
    before, after = quantize_int8(path, tmp_path / "q.onnx")
    assert before == path.stat().st_size and after == (tmp_path / "q.onnx").stat().st_size
    assert after < before


def test_velocity_graph_matches_pytorch(dit_export):
    model, path, printed = dit_export
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(3, 3, 16, 16, generator=generator)
    t = torch.rand(3, generator=generator)
    y = torch.tensor([0, 5, model.model.null_class])
    velocity = load_velocity(str(path)).run(None, {"x": x.numpy(), "t": t.numpy(), "y": y.numpy()})
    with torch.no_grad():
        expected = model.model(x, t, y)
    assert expected.abs().max() > 0.1  # the random weights make a non-trivial velocity
    assert np.abs(velocity[0] - expected.numpy()).max() < TOLERANCE
    assert "onnxruntime sampler vs PyTorch sampler" in printed


@pytest.mark.parametrize("cfg_scale", [1.0, 3.0])
def test_onnx_sampler_matches_the_pytorch_sampler(dit_export, cfg_scale: float):
    model, path, _ = dit_export
    noise = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    labels = torch.tensor([1, 7])
    expected = sample(
        model.model, noise, labels, steps=5, cfg_scale=cfg_scale, null_class=model.model.null_class
    )
    found = onnx_sample(
        load_velocity(str(path)), noise.numpy(), labels.numpy(), steps=5, cfg_scale=cfg_scale
    )
    assert found.dtype == np.float32
    assert np.abs(found - expected.numpy()).max() < TOLERANCE


def test_onnx_sampler_needs_no_torch():
    code = "import sys, tinycats.commands.onnx_sampler; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_export_refuses_a_missing_checkpoint(tmp_path: Path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["export", "--ckpt_path", str(tmp_path / "nope.ckpt")])
    assert stop.value.code == EXIT_USAGE
    assert "does not exist" in capsys.readouterr().err


def test_export_help_explains_the_graphs(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["export", "--help"])
    assert stop.value.code == 0
    text = capsys.readouterr().out
    for words in ("--ckpt", "--out", "--quantize", "logits", "velocity", "null class"):
        assert words in text
