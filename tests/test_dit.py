"""Tests for the DiT network: patches, positions, adaLN-Zero init, labels and named configs."""

from pathlib import Path

import pytest
import torch
import yaml

from tinycats.networks.dit import TinyDiT, unpatchify

from helpers.dit import TINY_CONFIG, TINY_DIT, TINY_SIZE, patchify


def _inputs(model: TinyDiT, batch: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    size = (batch, model.in_channels, model.image_size, model.image_size)
    x = torch.randn(size, generator=g)
    t = torch.rand(batch, generator=g)
    y = torch.randint(0, model.num_classes, (batch,), generator=g)
    return x, t, y


def _perturb_zero_init(model: TinyDiT, seed: int = 0) -> None:
    """Give the zero-initialised modulation and output layers small random weights."""
    g = torch.Generator().manual_seed(seed)
    zeroed = [block.modulation[-1] for block in model.blocks]
    zeroed += [model.final_layer.modulation[-1], model.final_layer.linear]
    with torch.no_grad():
        for linear in zeroed:
            linear.weight.copy_(0.1 * torch.randn(linear.weight.shape, generator=g))
            linear.bias.copy_(0.1 * torch.randn(linear.bias.shape, generator=g))


# ---- patches ---------------------------------------------------------------------------------


def test_unpatchify_inverts_patchify_exactly():
    x = torch.randn(2, 3, 16, 16)
    tokens = patchify(x, 4)
    assert tokens.shape == (2, 16, 4 * 4 * 3)
    assert torch.equal(unpatchify(tokens, 4), x)


def test_patchify_tokens_are_row_major_image_blocks():
    # Two mutually inverse but scrambling functions would pass the round trip: check the layout.
    x = torch.randn(2, 3, 16, 16)
    tokens = patchify(x, 4)
    for row in range(4):
        for col in range(4):
            block = x[:, :, 4 * row : 4 * row + 4, 4 * col : 4 * col + 4]
            assert torch.equal(tokens[:, 4 * row + col], block.permute(0, 2, 3, 1).reshape(2, -1))


def test_patch_embedding_sees_tokens_in_patchify_order():
    # The conv embedding, the positional table and unpatchify must all use one token order.
    model = TinyDiT(**TINY_DIT, image_size=TINY_SIZE)
    x, _, _ = _inputs(model, batch=1)
    conv = model.patch_embed
    with torch.no_grad():
        conv_tokens = conv(x).flatten(2).transpose(1, 2)
        weight = conv.weight.permute(0, 2, 3, 1).reshape(conv.out_channels, -1)
        linear_tokens = patchify(x, model.patch_size) @ weight.T + conv.bias
    torch.testing.assert_close(conv_tokens, linear_tokens, atol=1e-5, rtol=1e-5)


def test_unpatchify_rejects_non_square_token_count():
    with pytest.raises(ValueError, match="square"):
        unpatchify(torch.zeros(1, 15, 48), 4)


# ---- positions -------------------------------------------------------------------------------


def test_positional_embedding_is_a_fixed_buffer():
    model = TinyDiT(**TINY_DIT, image_size=TINY_SIZE)
    assert "pos_embed" in dict(model.named_buffers())
    assert "pos_embed" not in dict(model.named_parameters())
    assert model.pos_embed.shape == (1, 16, 64)
    assert len(torch.unique(model.pos_embed[0], dim=0)) == 16  # every position is distinct


def _permuted_output_mismatch(model: TinyDiT) -> float:
    """Largest gap between f(permuted patches) and the permuted f(patches)."""
    x, t, y = _inputs(model, batch=2)
    perm = torch.randperm(16, generator=torch.Generator().manual_seed(1))
    x_perm = unpatchify(patchify(x, 4)[:, perm], 4)
    with torch.no_grad():
        out = patchify(model(x, t, y), 4)
        out_perm = patchify(model(x_perm, t, y), 4)
    return (out_perm - out[:, perm]).abs().max().item()


def test_model_knows_where_patches_are():
    model = TinyDiT(**TINY_DIT, image_size=TINY_SIZE)
    _perturb_zero_init(model)
    assert _permuted_output_mismatch(model) > 1e-2


def test_without_positional_embedding_model_is_permutation_equivariant():
    # Control for the test above: the positional table is the only source of position.
    model = TinyDiT(**TINY_DIT, image_size=TINY_SIZE)
    _perturb_zero_init(model)
    model.pos_embed.zero_()
    assert _permuted_output_mismatch(model) < 1e-5


# ---- adaLN-Zero initialisation -----------------------------------------------------------------


def test_output_is_exactly_zero_at_init():
    model = TinyDiT(**TINY_DIT, image_size=TINY_SIZE)
    out = model(*_inputs(model, batch=3))
    assert out.shape == (3, 3, 16, 16)
    assert torch.count_nonzero(out) == 0


def test_every_block_starts_as_the_identity():
    model = TinyDiT(**TINY_DIT, image_size=TINY_SIZE)
    x, t, y = _inputs(model, batch=3)
    tokens = model.patch_embed(x).flatten(2).transpose(1, 2) + model.pos_embed
    c = model.t_embedder(t) + model.label_embedder(y)
    assert c.abs().sum() > 0  # a real conditioning: only the zero gates can silence the block
    for i, block in enumerate(model.blocks):
        assert torch.equal(block(tokens, c), tokens), f"block {i} is not the identity at init"
        gates = block.modulation(c).chunk(6, dim=1)[2::3]
        assert all(torch.count_nonzero(gate) == 0 for gate in gates), f"block {i} gates"


def test_zero_init_still_trains_the_output_layer():
    model = TinyDiT(**TINY_DIT, image_size=TINY_SIZE)
    x, t, y = _inputs(model, batch=2)
    (model(x, t, y) - x).square().mean().backward()
    assert model.final_layer.linear.weight.grad.abs().sum() > 0


def test_initialize_weights_restores_zero_output():
    model = TinyDiT(**TINY_DIT, image_size=TINY_SIZE)
    _perturb_zero_init(model)
    inputs = _inputs(model, batch=2)
    assert torch.count_nonzero(model(*inputs)) > 0
    model.initialize_weights()
    assert torch.count_nonzero(model(*inputs)) == 0


def test_time_features_vary_across_the_unit_interval():
    # The sinusoid periods span 1 to 10000 steps; times in [0, 1] are scaled to 1000 steps so
    # that most features change between t = 0 and t = 1, not only the fastest few.
    model = TinyDiT(**TINY_DIT, image_size=TINY_SIZE)
    features: list[torch.Tensor] = []
    model.t_embedder.mlp[0].register_forward_hook(lambda m, inputs, out: features.append(inputs[0]))
    model.t_embedder(torch.linspace(0, 1, 21))
    spread = features[0].max(0).values - features[0].min(0).values
    assert (spread > 1).float().mean() > 0.5


# ---- labels ----------------------------------------------------------------------------------


def test_null_class_is_an_extra_label_row():
    model = TinyDiT(**TINY_DIT, image_size=TINY_SIZE, num_classes=5)
    assert model.null_class == 5
    assert model.label_embedder.table.num_embeddings == 6
    _perturb_zero_init(model)
    x, t, _ = _inputs(model, batch=2)
    with torch.no_grad():
        out_null = model(x, t, torch.full((2,), model.null_class))
        out_real = model(x, t, torch.zeros(2, dtype=torch.long))
    assert torch.isfinite(out_null).all()
    assert not torch.allclose(out_null, out_real)


def test_labels_and_time_change_the_output():
    model = TinyDiT(**TINY_DIT, image_size=TINY_SIZE)
    _perturb_zero_init(model)
    x, t, y = _inputs(model, batch=2)
    with torch.no_grad():
        out = model(x, t, y)
        assert not torch.allclose(out, model(x, t, (y + 1) % model.num_classes))
        assert not torch.allclose(out, model(x, 1 - t, y))


# ---- variants and named configs --------------------------------------------------------------


def test_wrong_image_size_is_rejected():
    model = TinyDiT(**TINY_DIT, image_size=TINY_SIZE)
    with pytest.raises(ValueError, match="expected images of shape"):
        model(torch.zeros(1, 3, 32, 32), torch.zeros(1), torch.zeros(1, dtype=torch.long))


DIT_CONFIGS = sorted(
    path
    for path in [*Path(__file__).parents[1].glob("configs/*.yaml"), TINY_CONFIG]
    if "DiTGenerator" in path.read_text()
)


@pytest.mark.parametrize("config", DIT_CONFIGS, ids=lambda path: path.name)
def test_each_configs_dit_shape_runs_a_forward(config: Path):
    spec = yaml.safe_load(config.read_text())
    shape = {key: spec["model"]["init_args"][key] for key in TINY_DIT}
    torch.manual_seed(0)
    model = TinyDiT(**shape, image_size=spec["data"]["image_size"])
    assert (model.image_size, model.patch_size) == (spec["data"]["image_size"], shape["patch_size"])
    assert len(model.blocks) == shape["depth"]
    assert model.pos_embed.shape[-1] == shape["width"]
    with torch.no_grad():
        out = model(*_inputs(model, batch=1))
    assert out.shape == (1, 3, model.image_size, model.image_size)
