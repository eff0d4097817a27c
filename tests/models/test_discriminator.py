"""Discriminator features and heads (METHOD.md 8): hooks, early stop, token layout, smallest stage grid."""

import pytest
import torch
from diffusers import WanTransformer3DModel

from pyramidal_wan.models.denoiser import WanVelocity
from pyramidal_wan.models.discriminator import (
    Discriminator,
    DiscriminatorHead,
    block_features,
    default_blocks,
    token_grid,
)
from pyramidal_wan.models.presets import get_transformer_config

SMALLEST = (2, 16, 2, 4, 4)  # the tiny cache's lowest stage: token grid 2x2x2


@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    return (
        WanVelocity(WanTransformer3DModel(**get_transformer_config("toy-wan"))).requires_grad_(False).eval()
    )


def inputs(shape=SMALLEST, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(shape, generator=g),
        torch.tensor([0.9, 0.4]),
        torch.randn(shape[0], 8, 32, generator=g),
    )


def test_default_blocks():
    assert default_blocks(30) == (14, 21, 29)
    assert default_blocks(4) == (1, 2, 3)
    assert default_blocks(1) == (0,)


def test_features_equal_block_outputs_and_the_forward_stops_early(backbone):
    x, sigma, text = inputs()
    transformer = backbone.transformer
    outputs, calls = {}, []
    handles = [
        block.register_forward_hook(lambda m, a, out, j=j: outputs.__setitem__(j, out))
        for j, block in enumerate(transformer.blocks)
    ]
    with torch.no_grad():
        backbone(x, sigma, text)
    for h in handles:
        h.remove()
    handles = [
        b.register_forward_hook(lambda m, a, o, j=j: calls.append(j))
        for j, b in enumerate(transformer.blocks)
    ]
    handles.append(transformer.proj_out.register_forward_hook(lambda m, a, o: calls.append("proj_out")))
    with torch.no_grad():
        features = block_features(backbone, x, sigma, text, (0, 1))
    for h in handles:
        h.remove()
    assert calls == [0, 1]  # blocks 2, 3 and the output projection never ran
    for j, f in zip((0, 1), features):
        torch.testing.assert_close(f, outputs[j], rtol=0, atol=0)
    # The last block is read at the output norm's input; hooks are removed afterwards.
    with torch.no_grad():
        (last,) = block_features(backbone, x, sigma, text, (3,))
    torch.testing.assert_close(last, outputs[3].float(), rtol=0, atol=0)
    assert (
        not any(b._forward_pre_hooks for b in transformer.blocks)
        and not transformer.norm_out._forward_pre_hooks
    )
    with pytest.raises(ValueError, match="hooked blocks"):
        block_features(backbone, x, sigma, text, (4,))


@pytest.mark.parametrize("checkpointing", [False, True])
def test_gradient_reaches_the_input_but_not_the_frozen_backbone(backbone, checkpointing):
    x, sigma, text = inputs()
    if checkpointing:
        backbone.transformer.enable_gradient_checkpointing()
    try:
        x = x.requires_grad_(True)
        heads = Discriminator(128, (1, 3), channels=32)
        features = block_features(backbone, x, sigma, text, heads.blocks)
        logits = heads(features, token_grid(x, (1, 2, 2)))
        logits.mean().backward()
    finally:
        backbone.transformer.disable_gradient_checkpointing()
    assert logits.shape == (2, 2, 2, 2, 2, 2)  # (B, blocks, branches, T', H', W') on the smallest grid
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in backbone.parameters())
    assert all(p.grad is not None for p in heads.parameters())


def test_head_branches_follow_wans_token_order():
    """Spatial logits of a frame depend only on that frame's tokens; temporal logits of a location only on
    that location's tokens (t-major, then h, then w)."""
    torch.manual_seed(0)
    head = DiscriminatorHead(16, channels=8).eval()
    t, h, w = 3, 2, 4
    tokens = torch.randn(1, t * h * w, 16)
    base = head(tokens, (t, h, w))
    frame1 = tokens.clone()
    frame1[:, h * w : 2 * h * w] = torch.randn(1, h * w, 16)  # every token of frame 1
    changed = (head(frame1, (t, h, w)) - base).abs() > 1e-6
    assert not changed[0, 0, [0, 2]].any() and changed[0, 0, 1].all()
    spot = tokens.clone()
    spot[:, [j * h * w + 1 * w + 2 for j in range(t)]] = torch.randn(1, t, 16)  # (h=1, w=2), every frame
    changed = (head(spot, (t, h, w)) - base).abs() > 1e-6
    mask = torch.zeros(h, w, dtype=torch.bool)
    mask[1, 2] = True
    assert changed[0, 1][:, mask].all() and not changed[0, 1][:, ~mask].any()
    with pytest.raises(ValueError, match="do not fill"):
        head(tokens, (2, 2, 4))
