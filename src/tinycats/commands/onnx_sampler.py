"""Drawing cats from an exported TinyDiT with onnxruntime and NumPy alone: no PyTorch needed.

The graph written by ``tinycats export`` computes one velocity of the flow, (x, t, y) → v; this
module integrates the flow ODE with it exactly as ``tinycats.networks.flow.sample`` does with the
PyTorch model (Euler steps from noise at t = 1 to an image at t = 0, classifier-free guidance).
The graph's metadata says which label is the null class and what the images look like.
"""

import itertools
import json

import numpy as np
import onnxruntime as ort


def load_velocity(path: str) -> ort.InferenceSession:
    """An onnxruntime session of an exported velocity graph, on the CPU."""
    return ort.InferenceSession(path, providers=["CPUExecutionProvider"])


def class_names(session: ort.InferenceSession) -> list[str]:
    """The class names stored in an exported graph's metadata (their index is the label)."""
    return json.loads(session.get_modelmeta().custom_metadata_map["class_names"])


def onnx_sample(
    session: ort.InferenceSession,
    noise: np.ndarray,
    labels: np.ndarray,
    *,
    steps: int = 50,
    cfg_scale: float = 1.0,
) -> np.ndarray:
    """Integrate the flow from noise (N, C, H, W) at t = 1 to images in about [-1, 1] at t = 0."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    null_class = int(session.get_modelmeta().custom_metadata_map["null_class"])
    # Python floats (from float32 times, as torch.linspace makes them) keep the arrays float32.
    times = np.linspace(1.0, 0.0, steps + 1, dtype=np.float32).tolist()
    x = noise.astype(np.float32)
    y = labels.astype(np.int64)
    for t, t_next in itertools.pairwise(times):
        x = x + (t_next - t) * _guided_velocity(session, x, t, y, cfg_scale, null_class)
    return x


def _guided_velocity(
    session: ort.InferenceSession,
    x: np.ndarray,
    t: float,
    y: np.ndarray,
    cfg_scale: float,
    null_class: int,
) -> np.ndarray:
    """The velocity at time t, guided towards the labels when cfg_scale != 1."""
    t_batch = np.full(x.shape[0], t, dtype=np.float32)
    if cfg_scale == 1.0:
        return session.run(None, {"x": x, "t": t_batch, "y": y})[0]
    # One call over [conditional; unconditional], as the PyTorch sampler does.
    inputs = {
        "x": np.concatenate([x, x]),
        "t": np.concatenate([t_batch, t_batch]),
        "y": np.concatenate([y, np.full_like(y, null_class)]),
    }
    v_cond, v_uncond = np.split(session.run(None, inputs)[0], 2)
    return v_uncond + cfg_scale * (v_cond - v_uncond)
