"""A small class-conditional diffusion transformer (DiT) with adaLN-Zero blocks.

The network maps a noisy image x_t, a flow time t in [0, 1] and a class label y to a velocity of
the same shape as x_t (see `tinycats.networks.flow` for the objective). Label index `num_classes`
is reserved as the null class for classifier-free guidance.
"""

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

MLP_RATIO = 4  # each block's MLP is this many times the token width, as in every DiT config


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """Apply a per-sample shift and scale, given as (B, D), to every token of x (B, N, D)."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


# ----------------------------------------------------------------------------------------------
# Patches
# ----------------------------------------------------------------------------------------------


def unpatchify(tokens: Tensor, patch_size: int) -> Tensor:
    """Reassemble row-major tokens (B, N, p * p * C) of a square grid into images (B, C, H, W)."""
    b, n, d = tokens.shape
    p = patch_size
    grid = math.isqrt(n)
    if grid * grid != n or d % (p * p):
        raise ValueError(
            f"cannot unpatchify {n} tokens of size {d} with patch size {p}: expected a square "
            f"number of tokens whose size is a multiple of {p * p}"
        )
    c = d // (p * p)
    x = tokens.reshape(b, grid, grid, p, p, c)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(b, c, grid * p, grid * p)


# ----------------------------------------------------------------------------------------------
# Embedding layers for positions, timesteps and class labels
# ----------------------------------------------------------------------------------------------


def _sincos_1d(positions: Tensor, dim: int) -> Tensor:
    """Embed 1-D positions (N,) as (N, dim) sines and cosines over geometric frequencies."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim // 2))
    angles = positions.to(torch.float64)[:, None] * omega[None]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


def _sincos_2d(grid_size: int, dim: int) -> Tensor:
    """Embed a row-major grid_size x grid_size grid as (grid_size**2, dim), half per axis."""
    if dim % 4:
        raise ValueError(f"2-D sin-cos embedding needs a width divisible by 4, got {dim}")
    rows, cols = torch.meshgrid(torch.arange(grid_size), torch.arange(grid_size), indexing="ij")
    half = dim // 2
    emb = torch.cat([_sincos_1d(rows.flatten(), half), _sincos_1d(cols.flatten(), half)], dim=1)
    return emb.float()


class TimestepEmbedder(nn.Module):
    """Embed a flow time t in [0, 1] with a sinusoid followed by an MLP."""

    def __init__(self, width: int, frequency_dim: int = 256) -> None:
        super().__init__()
        self.frequency_dim = frequency_dim
        self.mlp = nn.Sequential(
            nn.Linear(frequency_dim, width), nn.SiLU(), nn.Linear(width, width)
        )

    def forward(self, t: Tensor) -> Tensor:
        """Map times (B,) to embeddings (B, width)."""
        half = self.frequency_dim // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(half, device=t.device) / half)
        # The periods span 1 to 10000 "steps"; scaling t by 1000 spreads [0, 1] over a range in
        # which both fast and slow frequencies change, as with the usual 1000 diffusion steps.
        # Unscaled, all but the fastest few sinusoids would be nearly constant over [0, 1].
        angles = 1000 * t.float()[:, None] * freqs[None]
        features = torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)
        return self.mlp(features.to(self.mlp[0].weight.dtype))


class LabelEmbedder(nn.Module):
    """Embed class labels, with one extra row for the null (unconditional) class."""

    def __init__(self, num_classes: int, width: int) -> None:
        super().__init__()
        self.table = nn.Embedding(num_classes + 1, width)

    def forward(self, y: Tensor) -> Tensor:
        """Map labels (B,) in [0, num_classes] to embeddings (B, width)."""
        return self.table(y)


# ----------------------------------------------------------------------------------------------
# Transformer blocks
# ----------------------------------------------------------------------------------------------


class Attention(nn.Module):
    """Multi-head self-attention."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: Tensor) -> Tensor:
        """Attend over tokens (B, N, D) and return (B, N, D)."""
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class DiTBlock(nn.Module):
    """A transformer block whose norms are shifted, scaled and gated by the conditioning."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        # The affine part of the norms comes from the conditioning instead of fixed parameters.
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(width, heads)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        hidden = MLP_RATIO * width
        # The exact (erf) GELU, not DiT's tanh approximation: the same on a GPU, and on a CPU
        # the tanh form made each MLP's forward and backward ~10% slower (plans/0009).
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 6 * width))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        """Update tokens (B, N, D) given the conditioning vector c (B, D)."""
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = self.modulation(c).chunk(6, dim=1)
        x = x + gate_a.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_a, scale_a))
        return x + gate_m.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_m, scale_m))


class FinalLayer(nn.Module):
    """Project tokens to patch velocities after a conditioned norm."""

    def __init__(self, width: int, patch_size: int, out_channels: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        self.linear = nn.Linear(width, patch_size * patch_size * out_channels)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        """Map tokens (B, N, D) to patch values (B, N, p * p * C)."""
        shift, scale = self.modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm(x), shift, scale))


# ----------------------------------------------------------------------------------------------
# The network
# ----------------------------------------------------------------------------------------------


class TinyDiT(nn.Module):
    """A class-conditional diffusion transformer that predicts a rectified-flow velocity."""

    def __init__(
        self,
        image_size: int = 64,
        patch_size: int = 4,
        in_channels: int = 3,
        width: int = 384,
        depth: int = 12,
        heads: int = 6,
        num_classes: int = 12,
    ) -> None:
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not divisible by patch_size {patch_size}")
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.image_size = image_size
        self.patch_size = patch_size
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.null_class = num_classes

        self.patch_embed = nn.Conv2d(in_channels, width, kernel_size=patch_size, stride=patch_size)
        # Fixed, not learned: attention alone is blind to where a patch sits in the image.
        pos_embed = _sincos_2d(image_size // patch_size, width).unsqueeze(0)
        self.register_buffer("pos_embed", pos_embed, persistent=False)
        self.t_embedder = TimestepEmbedder(width)
        self.label_embedder = LabelEmbedder(num_classes, width)
        self.blocks = nn.ModuleList(DiTBlock(width, heads) for _ in range(depth))
        self.final_layer = FinalLayer(width, patch_size, in_channels)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """Initialise as in DiT, zeroing every modulation and the output so the net outputs 0."""

        def xavier_linear(module: nn.Module) -> None:
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

        self.apply(xavier_linear)
        # A stride-p convolution is a linear map of each flattened patch: initialise it as one.
        conv_weight = self.patch_embed.weight
        nn.init.xavier_uniform_(conv_weight.view(conv_weight.shape[0], -1))
        nn.init.zeros_(self.patch_embed.bias)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        nn.init.normal_(self.label_embedder.table.weight, std=0.02)

        # adaLN-Zero: zero gates make every block start as the identity, and a zero output
        # layer makes the initial velocity exactly 0; gradients still reach all of them.
        zeroed = [block.modulation[-1] for block in self.blocks]
        zeroed += [self.final_layer.modulation[-1], self.final_layer.linear]
        for linear in zeroed:
            nn.init.zeros_(linear.weight)
            nn.init.zeros_(linear.bias)

    def forward(self, x: Tensor, t: Tensor, y: Tensor) -> Tensor:
        """Predict the velocity (B, C, H, W) for images x, times t (B,) and labels y (B,)."""
        expected = (self.in_channels, self.image_size, self.image_size)
        if tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"expected images of shape (B, {', '.join(map(str, expected))}), "
                f"got {tuple(x.shape)}"
            )
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos_embed
        c = self.t_embedder(t) + self.label_embedder(y)
        for block in self.blocks:
            tokens = block(tokens, c)
        return unpatchify(self.final_layer(tokens, c), self.patch_size)
