"""``tinycats export``: the classifier, or one velocity step of the DiT, as an ONNX graph that runs
without PyTorch, checked against PyTorch, optionally with int8 weights.

The DiT is exported as a single evaluation of its network, (x, t, y) → velocity, not as a whole
sampler: the number of steps and the guidance scale stay choices of whoever samples, and
``tinycats.commands.onnx_sampler`` runs the loop with onnxruntime alone.
"""

import json
import tempfile
import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tinycats.commands.parsing import call_with_args
from tinycats.errors import TinyCatsError
from tinycats.models import CatClassifier, DiTGenerator
from tinycats.networks.dit import TinyDiT
from tinycats.networks.flow import sample
from tinycats.runs.loading import load_trained

try:
    import onnxruntime as ort
    import onnxscript  # noqa: F401  (torch's ONNX exporter imports it when it runs)
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from tinycats.commands.onnx_sampler import load_velocity, onnx_sample
except ImportError as err:  # the CLI prints this as a one-line error
    raise TinyCatsError(
        f"tinycats export needs onnx, onnxscript and onnxruntime ({err}): "
        "pip install onnx onnxscript onnxruntime"
    ) from err


PARITY_BATCH = 4  # random inputs of the parity check printed after each export
PARITY_STEPS = 10  # sampler steps of the DiT's sampler check

DESCRIPTION = """\
Export a trained model as ONNX, to run with onnxruntime (or any ONNX runtime) without PyTorch:

  classifier  classifier.onnx: float32 RGB images (N, 3, H, W) in [0, 1] → logits (N, classes)
  DiT         dit_velocity.onnx: one velocity evaluation (EMA weights), inputs x (N, 3, H, W)
              in the flow's scale (noise at t = 1), t (N,) float32 in [0, 1], y (N,) int64
              labels, where the null class (its index is in the metadata) is the unconditional
              label for guidance. `tinycats.commands.onnx_sampler.onnx_sample` integrates it.

Class names, the image size and the null class are stored in the graph's metadata. After the
export the graph is run on random inputs and compared with PyTorch (the largest absolute
difference is printed); for the DiT, the onnxruntime sampler is also compared with the
PyTorch sampler from the same noise. --quantize adds a copy with int8 weights (onnxruntime's
dynamic quantisation) and prints both sizes and its difference from PyTorch.

examples:
  tinycats export --ckpt_path outputs/checkpoints/classifier/2026-01-31/cat-vs-dog/best.ckpt --out export
  tinycats export --ckpt_path outputs/checkpoints/dit/2026-01-31/dit-s4-64 --out export --quantize true
"""


# ----------------------------------------------------------------------------------------------
# Export
# ----------------------------------------------------------------------------------------------


def export_classifier(model: CatClassifier, image_size: int, path: Path) -> Path:
    """Write the classifier as ONNX: float images (N, 3, H, W) in [0, 1] → logits (N, classes)."""
    metadata = {
        "model": "tinycats CatClassifier",
        "class_names": json.dumps(model.class_labels),
        "image_size": str(image_size),
        "input": "images: float32 RGB (N, 3, H, W) in [0, 1], H = W = image_size",
        "output": "logits: (N, classes); softmax gives the class probabilities",
    }
    example = (torch.rand(2, 3, image_size, image_size),)
    return _export(model, example, ("images",), "logits", metadata, path)


def export_velocity(model: TinyDiT, class_names: list[str], path: Path) -> Path:
    """Write one velocity evaluation of the DiT as ONNX: (x, t, y) → velocity, any batch size."""
    size, channels = model.image_size, model.in_channels
    metadata = {
        "model": "tinycats TinyDiT velocity",
        "class_names": json.dumps(class_names),
        "null_class": str(model.null_class),
        "image_size": str(size),
        "in_channels": str(channels),
        "convention": "x_t = (1 - t) * image + t * noise with images in [-1, 1]; the velocity "
        "is noise - image; sample from t = 1 to t = 0",
    }
    example = (
        torch.randn(2, channels, size, size),
        torch.rand(2),
        torch.tensor([0, model.null_class]),
    )
    return _export(model, example, ("x", "t", "y"), "velocity", metadata, path)


def quantize_int8(source: Path, target: Path) -> tuple[int, int]:
    """Store a graph's weights as int8 (dynamic quantisation); returns both file sizes in bytes."""
    with tempfile.TemporaryDirectory() as scratch:
        # onnxruntime's recommended first pass: shape inference and graph clean-up.
        prepared = Path(scratch) / "prepared.onnx"
        quant_pre_process(str(source), str(prepared))
        quantize_dynamic(prepared, target, weight_type=QuantType.QInt8)
    return source.stat().st_size, target.stat().st_size


def _export(
    model: nn.Module,
    example: tuple[torch.Tensor, ...],
    input_names: tuple[str, ...],
    output_name: str,
    metadata: dict[str, str],
    path: Path,
) -> Path:
    """Export ``model`` with a dynamic batch dimension and metadata, as one self-contained file."""
    model = model.eval().cpu()
    batch = torch.export.Dim("batch")
    with warnings.catch_warnings():
        # Every input shares the one batch dimension, which the exporter remarks on.
        warnings.filterwarnings("ignore", message=".*will not be used, since it shares")
        program = torch.onnx.export(
            model,
            example,
            input_names=list(input_names),
            output_names=[output_name],
            dynamic_shapes=[{0: batch} for _ in example],
            dynamo=True,
            verbose=False,
        )
    program.model.metadata_props.update(metadata)
    path.parent.mkdir(parents=True, exist_ok=True)
    program.save(str(path), external_data=False)  # one file, not a graph plus a weights file
    return path


# ----------------------------------------------------------------------------------------------
# Parity with PyTorch
# ----------------------------------------------------------------------------------------------


@torch.no_grad()
def classifier_difference(
    model: CatClassifier, image_size: int, path: Path, seed: int = 0
) -> float:
    """The largest absolute difference between ONNX and PyTorch logits on random images."""
    images = torch.rand(
        PARITY_BATCH, 3, image_size, image_size, generator=torch.Generator().manual_seed(seed)
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    onnx_logits = session.run(None, {"images": images.numpy()})[0]
    return float(np.abs(onnx_logits - model.eval().cpu()(images).numpy()).max())


@torch.no_grad()
def velocity_difference(model: TinyDiT, path: Path, seed: int = 0) -> float:
    """The largest absolute difference between ONNX and PyTorch velocities on random inputs."""
    x, t, y = _random_dit_inputs(model, seed)
    onnx_v = load_velocity(str(path)).run(None, {"x": x.numpy(), "t": t.numpy(), "y": y.numpy()})
    return float(np.abs(onnx_v[0] - model.eval().cpu()(x, t, y).numpy()).max())


@torch.no_grad()
def sampler_difference(
    model: TinyDiT, path: Path, steps: int = PARITY_STEPS, cfg_scale: float = 3.0, seed: int = 0
) -> float:
    """The largest absolute difference between the onnxruntime and the PyTorch Euler samplers."""
    noise, _, labels = _random_dit_inputs(model, seed)
    expected = sample(
        model.eval().cpu(),
        noise,
        labels,
        steps=steps,
        cfg_scale=cfg_scale,
        null_class=model.null_class,
    )
    found = onnx_sample(
        load_velocity(str(path)), noise.numpy(), labels.numpy(), steps=steps, cfg_scale=cfg_scale
    )
    return float(np.abs(found - expected.numpy()).max())


def _random_dit_inputs(model: TinyDiT, seed: int) -> tuple[torch.Tensor, ...]:
    """Noise-like images, times in [0, 1] and labels including the null class."""
    generator = torch.Generator().manual_seed(seed)
    size, channels = model.image_size, model.in_channels
    x = torch.randn(PARITY_BATCH, channels, size, size, generator=generator)
    t = torch.rand(PARITY_BATCH, generator=generator)
    y = torch.randint(0, model.null_class + 1, (PARITY_BATCH,), generator=generator)
    return x, t, y


# ----------------------------------------------------------------------------------------------
# The command
# ----------------------------------------------------------------------------------------------


def main(argv: list[str]) -> None:
    """Parse the ``tinycats export`` arguments (or a ``--config`` file) and export."""
    call_with_args(export, argv, "tinycats export", DESCRIPTION)


def export(ckpt_path: Path, out: Path = Path("export"), quantize: bool = False) -> None:
    """Export a trained model as ONNX, check it against PyTorch and optionally quantise it.

    Args:
        ckpt_path: a checkpoint of the classifier or the DiT, or a run directory (its best.ckpt,
            else its newest checkpoint).
        out: folder for the .onnx files.
        quantize: also write a copy with int8 weights (*.int8.onnx): about 4x smaller, slightly
            less exact.
    """
    model = load_trained(Path(ckpt_path), prefer_best=True)
    out = Path(out)
    if isinstance(model, DiTGenerator):
        path = export_velocity(model.model, model.class_labels, out / "dit_velocity.onnx")
        check = partial(velocity_difference, model.model)
        print(f"Exported the DiT's velocity (EMA weights of {ckpt_path}) to {path}")
        _print_parity(path, check)
        print(
            f"onnxruntime sampler vs PyTorch sampler ({PARITY_BATCH} samples, {PARITY_STEPS} "
            f"Euler steps, cfg_scale 3): max abs difference "
            f"{sampler_difference(model.model, path):.2e}"
        )
    else:
        image_size = model.trained_image_size
        if image_size is None:
            raise TinyCatsError(
                f"{ckpt_path} does not record the image size it was "
                "trained at: it was not written by `tinycats fit`."
            )
        path = export_classifier(model, image_size, out / "classifier.onnx")
        check = partial(classifier_difference, model, image_size)
        print(f"Exported the classifier ({ckpt_path}) to {path}")
        _print_parity(path, check)
    if quantize:
        quantized = path.with_name(f"{path.stem}.int8.onnx")
        before, after = quantize_int8(path, quantized)
        print(
            f"int8 weights: {quantized}, {_megabytes(before)} → {_megabytes(after)}; max abs "
            f"difference from PyTorch {check(quantized):.2e}"
        )


def _print_parity(path: Path, check: Callable[[Path], float]) -> None:
    print(
        f"ONNX vs PyTorch on {PARITY_BATCH} random inputs: max abs difference "
        f"{check(path):.2e}; {_megabytes(path.stat().st_size)}"
    )


def _megabytes(size: int) -> str:
    return f"{size / 1e6:.1f} MB"
