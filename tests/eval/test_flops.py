"""FLOPs counted on the meta device: attention is counted, the §10.1 formula and the paper's table agree."""

import json
import math

import pytest

from pyramidal_wan.cli import main
from pyramidal_wan.errors import InputError
from pyramidal_wan.eval.flops import (
    analytic_forward_flops,
    default_cfg,
    num_tokens,
    plan_flops,
    ppf_forward_flops,
    ppf_schedule_flops,
    schedule_flops,
    transformer_forward_flop_breakdown,
    transformer_forward_flops,
)
from pyramidal_wan.models.ppf import ppf_num_tokens, ppf_token_grids
from pyramidal_wan.models.presets import get_transformer_config
from pyramidal_wan.pipelines import PyramidalWanPipeline
from pyramidal_wan.pyramid import PyramidConfig
from pyramidal_wan.toy.family import assemble_toy_pipeline

# Latents of the default 3-stage pyramid at 81x448x832 (METHOD.md §1.2), index 0 = full resolution.
PAPER_SHAPES = [(16, 21, 56, 104), (16, 11, 28, 52), (16, 6, 14, 26)]
# The paper's FLOPs table [P] (TFLOPs; CFG rows as 2 x per-branch) and whether the row uses CFG.
PAPER_TABLE = {
    "0-0-50": (2 * 12_592, True),
    "20-20-10": (2 * 2_821, True),
    "0-0-2": (504, False),
    "2-2-1": (282, False),
    "1-1-1": (267, False),
}


def test_token_counts_match_method():
    config = get_transformer_config("wan2.1-1.3b")
    assert [num_tokens(config, s) for s in PAPER_SHAPES] == [30_576, 4_004, 546]


def test_attention_is_counted_exactly():
    # Self-attention QK^T and AV (4 N^2 d) and cross-attention (4 N N_txt d) per layer must all appear as
    # bmm FLOPs; anything less means SDPA went uncounted.
    config = get_transformer_config("wan2.1-1.3b")
    d = config["num_attention_heads"] * config["attention_head_dim"]
    n, n_txt = 546, 512
    counts = transformer_forward_flop_breakdown("wan2.1-1.3b", PAPER_SHAPES[2], text_len=n_txt)
    assert counts["aten.bmm"] == config["num_layers"] * (4 * n * n * d + 4 * n * n_txt * d)


def test_cross_attention_grows_linearly_with_text_length():
    small = transformer_forward_flop_breakdown("toy-wan", (16, 2, 8, 8), text_len=8)["aten.bmm"]
    large = transformer_forward_flop_breakdown("toy-wan", (16, 2, 8, 8), text_len=16)["aten.bmm"]
    # toy: L=4, d=128, N=32 tokens; only the cross-attention term depends on the text length.
    assert large - small == 4 * (4 * 32 * 8 * 128)


@pytest.mark.parametrize("preset", ["wan2.1-1.3b", "wan2.1-14b"])
@pytest.mark.parametrize("shape", PAPER_SHAPES)
def test_counted_matches_analytic_formula(preset, shape):
    counted = transformer_forward_flops(preset, shape, text_len=512)
    analytic = analytic_forward_flops(preset, num_tokens(get_transformer_config(preset), shape), 512)
    # The formula omits embeddings, patchify, modulation and the head: < 1% of the count.
    assert counted >= analytic
    assert counted == pytest.approx(analytic, rel=0.01)


def test_per_forward_tflops_match_method():
    expected = [251.82, 13.49, 1.62]  # METHOD.md §10.1, formula values
    counted = [transformer_forward_flops("wan2.1-1.3b", s) / 1e12 for s in PAPER_SHAPES]
    assert counted == pytest.approx(expected, rel=0.01)


@pytest.mark.parametrize("schedule", list(PAPER_TABLE))
def test_paper_flops_table(schedule):
    expected, cfg = PAPER_TABLE[schedule]
    steps = [int(n) for n in schedule.split("-")][::-1]  # schedule strings run lowest resolution first
    assert default_cfg(steps) == cfg
    result = schedule_flops("wan2.1-1.3b", PAPER_SHAPES, steps, cfg=cfg, text_len=512)
    assert result["total_tflops"] == pytest.approx(expected, rel=0.01)
    assert result["forwards"] == (2 if cfg else 1) * sum(steps)


def test_cfg_doubles_and_zero_stages_cost_nothing():
    with_cfg = schedule_flops("toy-wan", [(16, 5, 16, 16), (16, 3, 8, 8)], [0, 4], cfg=True, text_len=8)
    without = schedule_flops("toy-wan", [(16, 5, 16, 16), (16, 3, 8, 8)], [0, 4], cfg=False, text_len=8)
    assert with_cfg["total_flops"] == 2 * without["total_flops"]
    assert with_cfg["stages"][0]["tflops"] == 0
    assert without["total_flops"] == 4 * transformer_forward_flops("toy-wan", (16, 3, 8, 8), text_len=8)


@pytest.mark.parametrize(
    "shape, match",
    [((16, 5, 15, 16), "not divisible"), ((4, 5, 16, 16), "channels"), ((16, 5, 16), "4 positive")],
)
def test_bad_latent_shapes_raise(shape, match):
    with pytest.raises(InputError, match=match):
        transformer_forward_flops("toy-wan", shape)


def test_bad_schedule_lengths_raise():
    with pytest.raises(InputError, match="step counts"):
        schedule_flops("toy-wan", [(16, 5, 16, 16)], [1, 1], cfg=False)


def test_cli_json_reproduces_paper_row(capsys):
    assert main(["flops", "--schedule", "20-20-10", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["total_tflops"] == pytest.approx(2 * 2_821, rel=0.01)
    assert [s["tokens"] for s in report["stages"]] == [30_576, 4_004, 546]
    assert [s["latent"] for s in report["stages"]] == [list(s[1:]) for s in PAPER_SHAPES]


def test_cli_table_rows_and_speedups(capsys):
    assert main(["flops", "--schedule", "0-0-50", "20-20-10", "--schedule", "2-2-1"]) == 0
    out = capsys.readouterr().out
    assert "2 x 12,591" in out and "2 x 2,820" in out and "282.1" in out
    assert "4.46x" in out  # 20-20-10 is ~4.5x cheaper than 0-0-50 [P]


def test_cli_cfg_flag_overrides_default(capsys):
    main(["flops", "--schedule", "20-20-10", "--no-cfg", "--json"])
    no_cfg = json.loads(capsys.readouterr().out)
    main(["flops", "--schedule", "2-2-1", "--cfg", "--json"])
    cfg = json.loads(capsys.readouterr().out)
    assert no_cfg["total_tflops"] == pytest.approx(2_821, rel=0.01)
    assert cfg["total_tflops"] == pytest.approx(2 * 282, rel=0.01)


def test_cli_counts_a_model_folder_at_its_own_size_vae_and_text_length(tmp_path, capsys):
    # The toy folder: 17x64x64 by default, a 4x spatial VAE, 32 text tokens: what `evaluate` records.
    folder = assemble_toy_pipeline(tmp_path / "toy")
    assert main(["flops", "--model", str(folder), "--schedule", "0-0-50", "20-20-10", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["size"] == [17, 64, 64] and report["text_len"] == 32
    assert [s["latent"] for s in report["stages"]] == [[5, 16, 16], [3, 8, 8], [2, 4, 4]]
    plan = PyramidalWanPipeline.plan_from_folder(folder, schedule="20-20-10")
    expected = plan_flops(get_transformer_config(folder), plan, 32)["total_tflops"]
    assert report["schedules"][1]["total_tflops"] == pytest.approx(expected)


def test_cli_toy_model_and_two_stages(capsys):
    assert (
        main(
            [
                "flops",
                "--model",
                "toy-wan",
                "--num-frames",
                "17",
                "--height",
                "64",
                "--width",
                "64",
                "--stages",
                "2",
                "--text-len",
                "8",
                "--json",
            ]
        )
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    assert report["schedules"][0]["schedule"] == "0-50"
    assert [s["latent"] for s in report["stages"]] == [[5, 8, 8], [3, 4, 4]]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--schedule", "20-20"], "3 stages"),
        (["--height", "480"], "divisible by 64"),
        (["--num-frames", "80"], "4k+1"),
        (["--model", "no-such-model"], "wan2.1-1.3b"),
        (["--text-len", "0"], "argument --text-len: 0 must be at least 1"),
    ],
)
def test_cli_bad_input_exits_2_with_one_line(capsys, argv, message):
    assert main(["flops", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and message in err


# Latents of the toy pyramid at 17x64x64 (toy VAE: 4x time, 4x space), index 0 = full resolution.
TOY_SHAPES = [(16, 5, 16, 16), (16, 3, 8, 8), (16, 2, 4, 4)]


def patch_layer_excess(preset, latent_thw, stage) -> int:
    """FLOPs by which a PPF stage's patch layers exceed the original ones at the same token count.

    Patchify conv and proj_out each cost 2 N d C k per part (frame 0 and frames >= 1, k = k_t k_h k_w
    elements per token), against 2 N d C p_t p_h p_w for the original patch (METHOD.md 9).
    """
    config = get_transformer_config(preset)
    d = config["num_attention_heads"] * config["attention_head_dim"]
    patch = math.prod(config["patch_size"])
    kernels = PyramidConfig(kind="patch").kernels(stage, config["patch_size"])
    grids = ppf_token_grids(latent_thw, kernels)
    rest, first = kernels
    return sum(
        2 * 2 * math.prod(grid) * d * config["in_channels"] * (math.prod(kernel) - patch)
        for grid, kernel in zip(grids, (first, rest))
    )


@pytest.mark.parametrize(
    "preset, shapes, text_len", [("toy-wan", TOY_SHAPES, 32), ("wan2.1-1.3b", PAPER_SHAPES, 512)]
)
def test_ppf_flops_are_the_resolution_pyramids_plus_the_patch_layers(preset, shapes, text_len):
    """At equal token counts every PPF stage forward costs exactly the resolution pyramid's stage forward
    plus its larger patch layers (counted on meta, no weights).

    Per token the excess is linear in the width d and the kernel size, the blocks quadratic in d, so how
    close the two are depends on the model: for wan2.1-1.3b (d = 1536) within 2% (stage 2 +0.73% per
    forward, 20-20-10 +0.02%; also tests/models/test_ppf.py); for the toy model (d = 128 against a
    16 x 256-element stage-2 kernel) +11% at stage 1, +48% at stage 2 and +4.4% over a 20-20-10 or 2-2-1
    schedule at 17x64x64 with 32 text tokens. The 2% match is a property of the full-size model.
    """
    config = get_transformer_config(preset)
    for stage, shape in enumerate(shapes):
        ppf = ppf_forward_flops(preset, shapes[0], stage, text_len=text_len)
        resolution = transformer_forward_flops(preset, shape, text_len=text_len)
        kernels = PyramidConfig(kind="patch").kernels(stage, config["patch_size"])
        assert ppf_num_tokens(shapes[0][1:], kernels) == num_tokens(config, shape)
        assert ppf - resolution == patch_layer_excess(preset, shapes[0][1:], stage)
        if preset == "wan2.1-1.3b":
            assert ppf == pytest.approx(resolution, rel=0.02)
    for steps in ((10, 20, 20), (1, 2, 2)):  # by stage: 20-20-10 and 2-2-1
        ppf = ppf_schedule_flops(preset, shapes[0], steps, cfg=False, text_len=text_len)
        resolution = schedule_flops(preset, shapes, steps, cfg=False, text_len=text_len)
        excess = sum(n * patch_layer_excess(preset, shapes[0][1:], i) for i, n in enumerate(steps))
        assert ppf["total_flops"] - resolution["total_flops"] == excess
        rel = 0.02 if preset == "wan2.1-1.3b" else 0.05
        assert ppf["total_tflops"] == pytest.approx(resolution["total_tflops"], rel=rel)


def test_per_stage_cfg_doubles_only_the_guided_stages():
    steps = (1, 2, 2)  # by stage: 2-2-1
    guided = ppf_schedule_flops("toy-wan", TOY_SHAPES[0], steps, cfg=[False, True, True], text_len=8)
    per_forward = [s["tflops_per_forward"] for s in guided["stages"]]
    assert guided["forwards"] == 1 + 4 + 4
    assert guided["total_tflops"] == pytest.approx(per_forward[0] + 4 * per_forward[1] + 4 * per_forward[2])
    with pytest.raises(InputError, match="2 CFG flags for 3 stages"):
        ppf_schedule_flops("toy-wan", TOY_SHAPES[0], steps, cfg=[True, True], text_len=8)
