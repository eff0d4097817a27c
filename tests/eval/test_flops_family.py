"""`flops` over the Wan family presets: stage geometry from each VAE and patch, image tokens of Wan2.1-I2V,
and the expert that runs each stage of a two-expert Wan2.2 A14B model."""

import json

import pytest

from pyramidal_wan.cli import main
from pyramidal_wan.eval.flops import transformer_forward_flop_breakdown
from pyramidal_wan.models.presets import get_transformer_config
from pyramidal_wan.models.wan_family import CLIP_IMAGE_TOKENS, VARIANTS, variant_video_settings
from pyramidal_wan.pyramid import stage_geometry


def flops_json(capsys, *args):
    assert main(["flops", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_ti2v_5b_stages_follow_its_vae_and_patch():
    config = get_transformer_config("wan2.2-ti2v-5b")
    assert (config["in_channels"], config["out_channels"]) == (48, 48)
    video = variant_video_settings("wan2.2-ti2v-5b")
    assert (video["vae_scale_temporal"], video["vae_scale_spatial"]) == (4, 16)
    stages = stage_geometry(**video, patch_size=config["patch_size"])
    # 129x768x1280 -> latent (33, 48, 80) at 4x16x16, halved twice; tokens halve H and W by the patch.
    assert [g.latent for g in stages] == [(33, 48, 80), (17, 24, 40), (9, 12, 20)]
    assert [g.num_tokens for g in stages] == [33 * 24 * 40, 17 * 12 * 20, 9 * 6 * 10]


@pytest.mark.parametrize(
    ("size", "messages"),
    [
        # Wan2.2-TI2V-5B's own 121x704x1280: neither its frames nor its height split into three stages, and
        # the one line names both.
        (
            ("121", "704", "1280"),
            [
                "num_frames 121 cannot be halved in time 2 times (num_frames - 1 must be a positive multiple "
                "of 16); use 113 or 129",
                "height 704 must be divisible by 128 (16x VAE x 2 patch x 4 pyramid); use 640 or 768",
            ],
        ),
        (("129", "768", "1200"), ["width 1200 must be divisible by 128"]),
    ],
)
def test_a_ti2v_5b_size_that_cannot_be_three_stages_is_a_one_line_error(capsys, size, messages):
    frames, height, width = size
    args = ["--model", "wan2.2-ti2v-5b", "--num-frames", frames, "--height", height, "--width", width]
    assert main(["flops", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert all(m in err for m in messages) and len(err.splitlines()) == 1


def test_wan21_i2v_counts_the_clip_image_tokens():
    shape = (6, 14, 26)  # stage 2 of 81x448x832
    i2v = transformer_forward_flop_breakdown("wan2.1-i2v-14b", (36, *shape))
    t2v = transformer_forward_flop_breakdown("wan2.1-14b", (16, *shape))
    config = get_transformer_config("wan2.1-i2v-14b")
    d = config["num_attention_heads"] * config["attention_head_dim"]
    tokens = 6 * 7 * 13
    # Each layer's cross-attention also attends to the 257 image tokens: QK^T and AV add 4 N 257 d.
    assert i2v["aten.bmm"] - t2v["aten.bmm"] == config["num_layers"] * 4 * tokens * CLIP_IMAGE_TOKENS * d


def test_a14b_reports_which_expert_runs_each_stage(capsys):
    report = flops_json(capsys, "--model", "wan2.2-t2v-a14b", "--schedule", "0-0-50", "20-20-10", "2-2-1")
    assert report["boundary_ratio"] == 0.875
    experts = {
        r["schedule"]: [(e["stage"], e["high"], e["low"]) for e in r["experts"]] for r in report["schedules"]
    }
    # Plain: phi_3(1 - k/50) >= 0.875 for k <= 15. Pyramid: only the lowest stage is that noisy.
    assert experts["0-0-50"] == [(0, 16, 34)]
    assert experts["20-20-10"] == [(2, 8, 12), (1, 0, 20), (0, 0, 10)]
    assert experts["2-2-1"] == [(2, 1, 1), (1, 0, 2), (0, 0, 1)]
    # The experts share one architecture: the FLOPs are Wan2.1-14B's.
    assert report["schedules"][0]["forwards"] == 100


@pytest.mark.slow
@pytest.mark.parametrize("preset", sorted(VARIANTS))
def test_every_family_preset_prints_its_table(capsys, preset):
    assert main(["flops", "--model", preset, "--schedule", "0-0-50", "20-20-10", "2-2-1"]) == 0
    printed = capsys.readouterr().out
    frames, height, width = VARIANTS[preset].size
    assert printed.startswith(f"{preset} at {frames}x{height}x{width}")
    assert ("experts per stage" in printed) == (VARIANTS[preset].experts == 2)
    for schedule in ("0-0-50", "20-20-10", "2-2-1"):
        assert f"\n{schedule:>8}  " in printed
