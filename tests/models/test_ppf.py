"""PPF (METHOD.md 9): init identity per stage and frame part, fractional RoPE, stage dispatch, save/load."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from diffusers import WanTransformer3DModel
from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed

from pyramidal_wan.errors import CheckpointError, InputError
from pyramidal_wan.eval.flops import (
    ppf_forward_flops,
    ppf_schedule_flops,
    schedule_flops,
    transformer_forward_flops,
)
from pyramidal_wan.models.denoiser import WanVelocity
from pyramidal_wan.models.ppf import (
    PPF_CONFIG_NAME,
    PPF_LAYERS_NAME,
    PPFTransformer,
    StageGuidance,
    find_ppf_folder,
    ppf_num_tokens,
    ppf_positions,
    rope_tables,
)
from pyramidal_wan.models.presets import get_transformer_config
from pyramidal_wan.pyramid import PyramidConfig, get_ppf_grid, parse_schedule, ppf_stage_of, stage_geometry

TINY = {**get_transformer_config("toy-wan"), "num_layers": 2}
LATENT = (16, 5, 16, 16)  # (C, T, H, W): a 17x64x64 toy video
# Noise levels inside stages 0, 1 and 2 of the default equal-thirds split.
STAGE_SIGMA = {0: 0.2, 1: 0.5, 2: 0.9}
# Float32 tolerance of the init identity: the expanded conv sums 8 or 64 products where the reference
# averages first, so the two differ by rounding only (measured max abs error ~1e-6 on outputs of size ~1).
IDENTITY_ATOL = 1e-5


def tiny_transformer(seed=0):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return WanTransformer3DModel.from_config(TINY).eval()


def inputs(batch=2, seed=0, latent=LATENT):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, *latent, generator=g)  # (B, C, T, H, W)
    text = torch.randn(batch, 8, TINY["text_dim"], generator=g)  # (B, N_txt, text_dim)
    return x, text


def timesteps(stage, batch=2):
    return torch.full((batch,), 1000.0 * STAGE_SIGMA[stage])


def avg_pool(x, kernels):
    """The latent the original model sees at a stage: frame 0 pooled spatially, frames >= 1 in 3-D."""
    (k_t, k_h, k_w), _ = kernels
    r_h, r_w = k_h // 2, k_w // 2
    first = F.avg_pool3d(x[:, :, :1], (1, r_h, r_w))
    rest = F.avg_pool3d(x[:, :, 1:], (k_t, r_h, r_w))
    return torch.cat([first, rest], dim=2)


def upsample(y, kernels):
    """Nearest upsampling back to full resolution with the same frame-0 / frames >= 1 split."""
    (k_t, k_h, k_w), _ = kernels
    r_h, r_w = k_h // 2, k_w // 2
    y = y.repeat_interleave(r_h, dim=3).repeat_interleave(r_w, dim=4)
    return torch.cat([y[:, :, :1], y[:, :, 1:].repeat_interleave(k_t, dim=2)], dim=2)


class FixedRope(torch.nn.Module):
    """Stands in for the original model's RoPE module: returns given (cos, sin) tables."""

    def __init__(self, tables):
        super().__init__()
        self.tables = tables

    def forward(self, hidden_states):
        return self.tables


@pytest.mark.parametrize("head_dim", [128, 32])
def test_rope_tables_at_integer_positions_equal_diffusers(head_dim):
    # METHOD.md 1.1: 44 / 42 / 42 channels per 128-channel head; 12 / 10 / 10 for the toy's 32.
    latent = (21, 56, 104)
    kernels = PyramidConfig(kind="patch").kernels(0)
    cos, sin = rope_tables(ppf_positions(latent, kernels, (1, 2, 2)), head_dim)
    theirs = WanRotaryPosEmbed(head_dim, (1, 2, 2), 1024)(torch.empty(1, 16, *latent))
    assert torch.equal(cos, theirs[0]) and torch.equal(sin, theirs[1])  # bit for bit


def test_positions_are_the_centres_of_the_covered_fine_tokens():
    # Stage 2 of 81x448x832: kernels (4, 8, 8) / (1, 8, 8), token grid 6x7x13 (METHOD.md 9 table).
    kernels = PyramidConfig(kind="patch").kernels(2)
    assert kernels == ((4, 8, 8), (1, 8, 8))
    positions = ppf_positions((21, 56, 104), kernels, (1, 2, 2))
    assert positions.shape == (6 * 7 * 13, 3)
    times = positions[:, 0].unique().tolist()
    assert times == [0.0, 2.5, 6.5, 10.5, 14.5, 18.5]  # frame 0, then 1 + 4 (j - 1) + 1.5
    assert positions[:, 1].unique().tolist() == [1.5 + 4 * j for j in range(7)]  # j r + (r - 1) / 2, r = 4
    assert positions[:13, 0].eq(0).all() and positions[: 7 * 13, 0].eq(0).all()  # frame 0's tokens first
    grid = ppf_positions((21, 56, 104), kernels, (1, 2, 2), mode="grid")
    assert grid[:, 0].unique().tolist() == [0, 1, 2, 3, 4, 5] and grid[:, 1].max() == 6


def test_token_counts_equal_the_resolution_pyramid():
    config = PyramidConfig(kind="patch")
    geometry = stage_geometry(81, 448, 832)
    for stage, g in enumerate(geometry):
        assert ppf_num_tokens((21, 56, 104), config.kernels(stage)) == g.num_tokens
    assert [g.num_tokens for g in geometry] == [30_576, 4_004, 546]


def test_stage_zero_is_the_original_model():
    base = tiny_transformer()
    ppf = PPFTransformer(base)
    x, text = inputs()
    t = timesteps(0)
    with torch.no_grad():
        ours = ppf(x, t, text, return_dict=False)[0]
        theirs = base(x, t, text, return_dict=False)[0]
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize("stage", [1, 2])
def test_init_identity_with_grid_positions(stage):
    """At init, stage i == upsample(original(avg_pool(x))) exactly up to float rounding (METHOD.md 9)."""
    base = tiny_transformer()
    ppf = PPFTransformer(base, PyramidConfig(kind="patch", rope_positions="grid"))
    kernels = ppf.stage_kernels[stage]
    x, text = inputs()
    t = timesteps(stage)
    with torch.no_grad():
        ours = ppf(x, t, text, return_dict=False)[0]
        reference = upsample(base(avg_pool(x, kernels), t, text, return_dict=False)[0], kernels)
    assert ours.shape == x.shape
    # Frame 0 (its own conv and linear) and frames >= 1, each to float tolerance.
    assert (ours[:, :, :1] - reference[:, :, :1]).abs().max() < IDENTITY_ATOL
    assert (ours[:, :, 1:] - reference[:, :, 1:]).abs().max() < IDENTITY_ATOL
    assert reference.abs().mean() > 0.1  # a non-trivial output


@pytest.mark.parametrize("stage", [1, 2])
def test_init_identity_with_centre_positions(stage):
    """Default centre RoPE: the same identity, the original model given the PPF's position tables."""
    base = tiny_transformer()
    ppf = PPFTransformer(base)
    kernels = ppf.stage_kernels[stage]
    x, text = inputs()
    t = timesteps(stage)
    positions = ppf_positions(LATENT[1:], kernels, (1, 2, 2))
    original = tiny_transformer()
    original.rope = FixedRope(rope_tables(positions, TINY["attention_head_dim"]))
    with torch.no_grad():
        ours = ppf(x, t, text, return_dict=False)[0]
        reference = upsample(original(avg_pool(x, kernels), t, text, return_dict=False)[0], kernels)
        plain_rope = upsample(base(avg_pool(x, kernels), t, text, return_dict=False)[0], kernels)
    assert (ours - reference).abs().max() < IDENTITY_ATOL
    assert (ours - plain_rope).abs().max() > 1e-3  # the centre positions do change the attention


def test_stage_one_with_a_spatial_only_transition():
    # factors (1, 2, 2) then (2, 2, 2): stage 1 keeps every frame (k_t = 1), stage 2 pools time by 2.
    config = PyramidConfig(kind="patch", factors=((1, 2, 2), (2, 2, 2)), rope_positions="grid")
    base = tiny_transformer()
    ppf = PPFTransformer(base, config)
    assert ppf.stage_kernels[1:] == (((1, 4, 4), (1, 4, 4)), ((2, 8, 8), (1, 8, 8)))
    x, text = inputs()
    for stage in (1, 2):
        kernels = ppf.stage_kernels[stage]
        t = timesteps(stage)
        with torch.no_grad():
            ours = ppf(x, t, text, return_dict=False)[0]
            reference = upsample(base(avg_pool(x, kernels), t, text, return_dict=False)[0], kernels)
        assert (ours - reference).abs().max() < IDENTITY_ATOL


def test_a_mixed_batch_runs_each_sample_at_its_own_stage():
    ppf = PPFTransformer(tiny_transformer())
    x, text = inputs(batch=3)
    t = torch.tensor([1000.0 * STAGE_SIGMA[s] for s in (2, 0, 1)])
    with torch.no_grad():
        mixed = ppf(x, t, text, return_dict=False)[0]
        single = [ppf(x[i : i + 1], t[i : i + 1], text[i : i + 1], return_dict=False)[0] for i in range(3)]
    assert torch.allclose(mixed, torch.cat(single), atol=1e-6)


def test_stage_boundaries_go_to_the_stage_whose_noisy_end_they_are():
    clean_ends = (1 / 3, 2 / 3)
    sigma = torch.tensor([0.0, 1 / 3, 0.34, 2 / 3, 0.67, 1.0], dtype=torch.float32)  # float32-rounded ends
    assert ppf_stage_of(sigma, clean_ends).tolist() == [0, 0, 1, 1, 2, 2]
    # Every evaluation of a grid dispatches to the stage the schedule entry pays for, as float32 and as a
    # float32 timestep 1000 sigma (what WanVelocity hands the transformer).
    ppf = PPFTransformer(tiny_transformer())
    for sampler, schedule in (("multistep", "20-20-10"), ("fewstep", "2-2-1"), ("multistep", "3-3-3")):
        for stage_steps in get_ppf_grid(clean_ends, parse_schedule(schedule, 3), sampler, shift=2.0):
            evaluated = stage_steps.sigmas[:-1] if sampler == "multistep" else stage_steps.sigmas
            sigmas = torch.tensor(evaluated, dtype=torch.float32)
            assert ppf_stage_of(sigmas, clean_ends).eq(stage_steps.segment.stage).all()
            assert ppf.stages_of(1000.0 * sigmas).eq(stage_steps.segment.stage).all()


def test_the_stage_embedding_starts_at_zero_and_changes_only_its_stage():
    base = tiny_transformer()
    ppf = PPFTransformer(base, PyramidConfig(kind="patch", stage_embedding=True))
    x, text = inputs()
    with torch.no_grad():
        before = {s: ppf(x, timesteps(s), text, return_dict=False)[0] for s in (0, 1)}
        assert torch.equal(before[0], base(x, timesteps(0), text, return_dict=False)[0])
        ppf.stage_embedding.weight[1].normal_(generator=torch.Generator().manual_seed(0))
        after = {s: ppf(x, timesteps(s), text, return_dict=False)[0] for s in (0, 1)}
    assert torch.equal(after[0], before[0])
    assert (after[1] - before[1]).abs().max() > 1e-3


def test_wan_velocity_wraps_a_ppf_model():
    ppf = PPFTransformer(tiny_transformer())
    x, text = inputs()
    sigma = torch.tensor([0.9, 0.2])
    with torch.no_grad():
        v = WanVelocity(ppf)(x, sigma, text)
        direct = ppf(x, 1000.0 * sigma, text, return_dict=False)[0]
    assert torch.equal(v, direct)


def test_gradients_reach_only_the_stage_in_use():
    ppf = PPFTransformer(tiny_transformer())
    x, text = inputs()
    ppf(x, timesteps(2), text, return_dict=False)[0].square().mean().backward()
    grads = {n: p.grad is not None and p.grad.abs().sum() > 0 for n, p in ppf.named_parameters()}
    assert grads["patch_embeds.2.weight"] and grads["first_proj_outs.2.weight"]
    assert not grads["patch_embeds.1.weight"] and not grads["transformer.patch_embedding.weight"]
    assert grads["transformer.blocks.0.attn1.to_q.weight"]  # the shared blocks train at every stage


def test_stage_guidance_uses_each_stage_scale():
    calls = []

    def velocity(x, sigma, text, **kwargs):
        calls.append(x.shape[0])
        return text.mean(dim=(1, 2)).view(-1, 1, 1, 1, 1) * torch.ones_like(x)  # cond text 1, uncond 0

    x = torch.zeros(1, *LATENT)
    cond, uncond = torch.ones(1, 8, 4), torch.zeros(1, 8, 4)
    guided = StageGuidance(velocity, scales=(1.0, 3.0, 5.0), clean_ends=(1 / 3, 2 / 3))
    for sigma, expected, batch in ((0.9, 5.0, 2), (0.5, 3.0, 2), (0.2, 1.0, 1)):
        v = guided(x, sigma, cond, uncond)
        assert torch.allclose(v, torch.full_like(x, expected)) and calls[-1] == batch  # w = 1: cond only


def test_save_and_load_round_trip(tmp_path):
    ppf = PPFTransformer(
        tiny_transformer(), PyramidConfig(kind="patch", clean_ends=(0.3, 0.7), stage_embedding=True)
    )
    with torch.no_grad():  # trained-looking layers, so a load that re-initialised them would show
        for p in ppf.parameters():
            if not p.is_floating_point():
                continue
            p.add_(0.01 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    ppf.save_pretrained(tmp_path / "ppf")
    assert {PPF_CONFIG_NAME, PPF_LAYERS_NAME, "config.json"} <= {p.name for p in (tmp_path / "ppf").iterdir()}
    assert find_ppf_folder(tmp_path / "ppf") == tmp_path / "ppf"
    loaded = PPFTransformer.from_pretrained(tmp_path / "ppf")
    assert loaded.pyramid_config == ppf.pyramid_config
    x, text = inputs(batch=3)
    t = torch.tensor([900.0, 500.0, 100.0])
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), ppf.state_dict().values()))
    with torch.no_grad():
        ours, theirs = loaded(x, t, text, return_dict=False)[0], ppf(x, t, text, return_dict=False)[0]
    # Equal weights; diffusers memory-maps the loaded base, and BLAS picks other kernels for unaligned
    # weights, so outputs agree to float32 rounding (~1e-7) rather than bit for bit.
    assert (ours - theirs).abs().max() < 1e-5
    # The base folder still loads as a plain diffusers Wan transformer (the PPF files are extra).
    WanTransformer3DModel.from_pretrained(tmp_path / "ppf")


def _corrupt(folder, name, text):
    (folder / name).write_bytes(text)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        (PPF_CONFIG_NAME, None, "file not found"),
        (PPF_CONFIG_NAME, b"{not json", "not valid JSON"),
        (PPF_CONFIG_NAME, b'{"num_stages": 3, "colour": 1}', "unknown PPF config keys"),
        (PPF_CONFIG_NAME, b'{"rope_positions": "edges"}', "invalid PPF config"),
        (PPF_CONFIG_NAME, b'{"num_stages": 2}', "do not match"),
        (PPF_LAYERS_NAME, None, "file not found"),
        (PPF_LAYERS_NAME, b"\x08\x00\x00\x00\x00\x00\x00\x00{}", "truncated or corrupt"),
    ],
)
def test_broken_folders_raise_one_line_checkpoint_errors(tmp_path, name, content, message):
    folder = tmp_path / "ppf"
    PPFTransformer(tiny_transformer()).save_pretrained(folder)
    if content is None:
        (folder / name).unlink()
    else:
        _corrupt(folder, name, content)
    with pytest.raises(CheckpointError) as err:
        PPFTransformer.from_pretrained(folder)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_invalid_settings_and_sizes_raise_input_errors():
    with pytest.raises(InputError, match="2 clean-end levels"):
        PyramidConfig(kind="patch", clean_ends=(0.5,))
    with pytest.raises(InputError, match="increase strictly"):
        PyramidConfig(kind="patch", clean_ends=(0.6, 0.4))
    ppf = PPFTransformer(tiny_transformer())
    x, text = inputs(latent=(16, 5, 12, 16))  # 12 rows: not divisible by stage 2's 8
    with pytest.raises(InputError, match="not divisible by the PPF kernel 8x8"):
        ppf(x, timesteps(2), text)
    x, text = inputs(latent=(16, 3, 16, 16))  # 2 frames >= 1: not a multiple of stage 2's 4
    with pytest.raises(InputError, match="multiple of the PPF kernel's 4"):
        ppf(x, timesteps(2), text)


def test_kernels_follow_the_cumulative_factors():
    config = PyramidConfig(
        kind="patch", num_stages=4, factors=((2, 2, 2), (1, 2, 2), (2, 1, 2)), clean_ends=(0.25, 0.5, 0.75)
    )
    assert [config.kernels(i) for i in range(4)] == [
        ((1, 2, 2), (1, 2, 2)),
        ((2, 4, 4), (1, 4, 4)),
        ((2, 8, 8), (1, 8, 8)),
        ((4, 8, 16), (1, 8, 16)),
    ]
    assert math.prod(config.kernels(3)[0]) // 4 == 4 * 4 * 8  # Phi_t Phi_h Phi_w stage-0 tokens per token


# Latents of the paper's 3-stage pyramid at 81x448x832 (METHOD.md 1.2), index 0 = full resolution.
PAPER_SHAPES = [(16, 21, 56, 104), (16, 11, 28, 52), (16, 6, 14, 26)]


def test_flops_match_the_resolution_pyramid_within_2_percent():
    """Same token counts, so the same FLOPs up to the patch layers (METHOD.md 9, 10.1); counted on meta.

    Measured with wan2.1-1.3b: stage 0 equal, stage 1 +0.08%, stage 2 +0.73% (its bigger patch layers
    weigh most against its 546 tokens); 20-20-10 with CFG +0.02%.
    """
    for stage, shape in enumerate(PAPER_SHAPES):
        ppf = ppf_forward_flops("wan2.1-1.3b", PAPER_SHAPES[0], stage)
        resolution = transformer_forward_flops("wan2.1-1.3b", shape)
        assert ppf == pytest.approx(resolution, rel=0.02)
        assert ppf >= resolution  # the coarse kernels' patch layers cost slightly more
    assert ppf_forward_flops("wan2.1-1.3b", PAPER_SHAPES[0], 0) == transformer_forward_flops(
        "wan2.1-1.3b", PAPER_SHAPES[0]
    )
    for steps, cfg in (((10, 20, 20), True), ((1, 2, 2), False)):  # by stage: 20-20-10 and 2-2-1
        ppf = ppf_schedule_flops("wan2.1-1.3b", PAPER_SHAPES[0], steps, cfg)
        resolution = schedule_flops("wan2.1-1.3b", PAPER_SHAPES, steps, cfg)
        assert ppf["total_tflops"] == pytest.approx(resolution["total_tflops"], rel=0.02)
        assert [s["tokens"] for s in ppf["stages"]] == [30_576, 4_004, 546]


def test_a_folder_saved_with_the_old_ppf_config_json_still_loads(tmp_path):
    """Before PyramidConfig described PPF too, a PPF folder carried ppf_config.json (PPFConfig fields)."""
    ppf = PPFTransformer(
        tiny_transformer(), PyramidConfig(kind="patch", clean_ends=(0.3, 0.7), stage_embedding=True)
    )
    ppf.save_pretrained(tmp_path / "ppf")
    (tmp_path / "ppf" / PPF_CONFIG_NAME).unlink()
    old = {"num_stages": 3, "factors": [[2, 2, 2]] * 2, "clean_ends": [0.3, 0.7], "stage_embedding": True}
    (tmp_path / "ppf" / "ppf_config.json").write_text(json.dumps({**old, "rope_positions": "centre"}))
    assert find_ppf_folder(tmp_path / "ppf") == tmp_path / "ppf"
    loaded = PPFTransformer.from_pretrained(tmp_path / "ppf")
    assert loaded.pyramid_config.layout() == ppf.pyramid_config.layout()
    loaded.save_pretrained(tmp_path / "resaved")  # a re-save writes the one current file
    assert (tmp_path / "resaved" / PPF_CONFIG_NAME).is_file()
    assert not (tmp_path / "resaved" / "ppf_config.json").exists()
