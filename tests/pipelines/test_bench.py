"""`pyramidal-wan bench` mechanics on a tiny config: what is timed, with which calls; never how fast."""

import json
import time

import pytest
from pipeline_helpers import build_pipeline, build_ppf_pipeline

from pyramidal_wan.cli import build_parser, main
from pyramidal_wan.cli.bench import build_random_pipeline, build_text_stack, compute_bench, format_bench
from pyramidal_wan.eval.flops import plan_flops, ppf_schedule_flops
from pyramidal_wan.eval.timing import StageTimer
from pyramidal_wan.pyramid import PyramidConfig

SMALL = ["--num-frames", "17", "--height", "64", "--width", "64", "--forward-repeats", "1"]
SMALL += ["--wan-steps", "2", "--wan-repeats", "1"]


def bench_args(*extra):
    return build_parser().parse_args(["bench", *SMALL, *extra])


def test_bench_times_every_schedule_with_the_right_calls():
    pipe = build_pipeline(PyramidConfig())
    batches = []
    hook = pipe.transformer.register_forward_pre_hook(
        lambda module, args, kwargs: batches.append(
            kwargs.get("hidden_states", args[0] if args else None).shape[0]
        ),
        with_kwargs=True,
    )
    try:
        report = compute_bench(pipe, bench_args("--schedule", "0-0-6", "6-6-5", "2-2-1"), pipe.device)
    finally:
        hook.remove()

    # All batch-1 on a CPU, where ours runs CFG as cond and uncond calls (as WanPipeline): stage latencies
    # (3 x (1 warm-up + 1)); with CFG, 2 calls per step: warm-up 1-1-1 (3), 0-0-6 (6), 6-6-5 (17), ours
    # 0-0-2 (2), WanPipeline warm-up and timed run (2 x 2 steps); few-step warm-up 1-1-1 (3) and 2-2-1 (5).
    assert batches.count(2) == 0
    assert batches.count(1) == 6 + 2 * (3 + 6 + 17 + 2 + 4) + 3 + 5
    assert report["wan_pipeline"]["cfg_batched"] is False
    assert [s["tokens"] for s in report["stages"]] == [320, 48, 8]
    assert all(0 < s["p10"] <= s["median"] <= s["p90"] for s in report["stages"])

    rows = {r["schedule"]: r for r in report["schedules"]}
    assert [(r["sampler"], r["guidance_scale"], r["forwards"]) for r in rows.values()] == [
        ("multistep", 5.0, 12),
        ("multistep", 5.0, 34),
        ("fewstep", 1.0, 5),
    ]
    reference = rows["0-0-6"]
    assert reference["speedup"] == reference["predicted_speedup"] == reference["efficiency"] == 1.0
    for row in rows.values():
        plan = pipe.check_inputs(
            "a", None, 17, 64, 64, row["schedule"], row["sampler"], row["guidance_scale"]
        )
        assert row["tflops"] == pytest.approx(plan_flops(pipe.transformer.config, plan, 32)["total_tflops"])
        assert row["predicted_speedup"] == pytest.approx(reference["tflops"] / row["tflops"])
        assert row["speedup"] == pytest.approx(reference["seconds"] / row["seconds"])
        assert row["efficiency"] == pytest.approx(row["speedup"] / row["predicted_speedup"])
    assert rows["6-6-5"]["pyramidal"] and not rows["0-0-6"]["pyramidal"]

    wan = report["wan_pipeline"]
    assert wan["schedule"] == "0-0-2" and len(wan["ratios"]) == 1
    assert wan["ratio"] == pytest.approx(wan["ours_seconds"] / wan["wan_pipeline_seconds"])
    assert report["decode_seconds"] > 0
    # End to end, by part: each schedule's stages, the decode, and the transformer's share of the stages.
    assert list(rows["0-0-6"]["parts"]) == ["text", "stage 0", "decode"]
    assert list(rows["6-6-5"]["parts"]) == ["text", "stage 2", "stage 1", "stage 0", "decode"]
    for row in rows.values():
        parts = row["parts"]
        assert row["total_seconds"] == pytest.approx(sum(parts.values()))
        assert row["seconds"] == pytest.approx(row["total_seconds"] - parts["decode"])
        stages = sum(seconds for part, seconds in parts.items() if part.startswith("stage"))
        assert 0 < row["transformer_seconds"] <= stages
    assert rows["6-6-5"]["speedup_with_decode"] == pytest.approx(
        reference["total_seconds"] / rows["6-6-5"]["total_seconds"]
    )

    text = format_bench(report)
    for expected in ("ms/forward", "FLOPs-predicted", "measured/predicted", "ours 0-0-2", "WanPipeline"):
        assert expected in text
    assert "stage 2" in text and "decode" in text and "transformer" in text
    assert "target: 6-6-5 keeps" in text and "target: ours at 0-0-2" in text


def test_bench_times_ppf_stages_with_their_kernels():
    """A PPF model: every stage forward takes the full-resolution latent at its stage kernel's token count,
    and the FLOPs predictions count the PPF stage forwards (patch layers included)."""
    pipe = build_ppf_pipeline()
    tokens = []
    hook = pipe.transformer.blocks[0].register_forward_pre_hook(
        lambda module, args: tokens.append(tuple(args[0].shape[:2]))
    )
    try:
        report = compute_bench(pipe, bench_args("--schedule", "0-0-2", "2-2-1"), pipe.device)
    finally:
        hook.remove()
    assert report["kind"] == "patch" and "patch pyramid" in format_bench(report)
    # The stage latencies come first: one warm-up and one timed batch-1 forward per stage.
    assert tokens[:6] == [(1, 320), (1, 320), (1, 48), (1, 48), (1, 8), (1, 8)]
    assert [s["latent"] for s in report["stages"]] == [[5, 16, 16]] * 3
    assert [s["tokens"] for s in report["stages"]] == [320, 48, 8]
    assert {n for _, n in tokens} == {320, 48, 8}  # every pipeline forward ran at a stage kernel too
    rows = {r["schedule"]: r for r in report["schedules"]}
    ppf = ppf_schedule_flops(pipe.transformer.config, (16, 5, 16, 16), (1, 2, 2), False, text_len=32)
    assert rows["2-2-1"]["tflops"] == pytest.approx(ppf["total_tflops"])
    assert rows["2-2-1"]["predicted_speedup"] == pytest.approx(rows["0-0-2"]["tflops"] / ppf["total_tflops"])


def test_bench_kind_patch_builds_ppf_components_and_a_folder_keeps_its_kind(tmp_path, capsys):
    code = main(
        ["bench", *SMALL, "--transformer", "toy-wan", "--kind", "patch", "--schedule", "1-1-1", "--json"]
    )
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["kind"] == "patch" and [s["latent"] for s in report["stages"]] == [[5, 16, 16]] * 3
    build_pipeline(PyramidConfig()).save_pretrained(tmp_path / "resolution")
    assert main(["bench", *SMALL, "--model", str(tmp_path / "resolution"), "--kind", "patch"]) == 2
    err = capsys.readouterr().err.strip()
    assert "is a resolution-pyramid model" in err and len(err.splitlines()) == 1


def test_bench_command_builds_random_components_and_prints_json(capsys):
    code = main(["bench", *SMALL, "--transformer", "toy-wan", "--schedule", "0-0-5", "1-1-1", "--json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["model"] == "random weights" and report["size"] == [17, 64, 64]
    assert report["transformer"]["width"] == 128 and report["transformer"]["layers"] == 4
    assert [r["schedule"] for r in report["schedules"]] == ["0-0-5", "1-1-1"]


def test_bench_times_the_decode_of_a_tiny_decoder(tmp_path, capsys):
    from pyramidal_wan.models.tiny_decoder import TinyWanDecoder

    TinyWanDecoder().save_pretrained(tmp_path / "decoder")
    args = ["bench", *SMALL, "--transformer", "toy-wan", "--schedule", "1-1-1", "--json"]
    assert main([*args, "--decoder", str(tmp_path / "decoder")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["decode_seconds"] > 0
    assert main([*args, "--decoder", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err.strip()
    assert "not a tiny-decoder folder" in err and len(err.splitlines()) == 1


def test_random_components_default_to_the_bench_config():
    pipe = build_random_pipeline()
    config = pipe.transformer.config
    assert (config.num_attention_heads * config.attention_head_dim, config.num_layers) == (384, 2)
    assert (pipe.config.default_num_frames, pipe.config.default_height, pipe.config.default_width) == (
        17,
        128,
        128,
    )
    tokenizer, encoder = build_text_stack(64)
    assert encoder.config.d_model == 64 and len(tokenizer) == encoder.config.vocab_size


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--repeats", "0"], "argument --repeats: 0 must be at least 1"),
        (["--schedule", "2-1"], "2 entries"),
        (["--height", "48"], "divisible by 32"),
        (["--model", "m", "--transformer", "toy-wan"], "cannot be combined"),
        (["--transformer", "no-such-preset"], "unknown model"),
    ],
)
def test_bad_bench_arguments_are_one_line_errors(capsys, args, message):
    assert (
        main(
            ["bench", *SMALL, "--transformer", "toy-wan", *args]
            if "--model" not in args
            else ["bench", *args]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_stage_timer_splits_a_call_into_parts_and_transformer_time():
    """The parts of one call add up to its time, in the order they ran; the transformer's seconds of each
    stage are part of that stage and counted once per forward (hooks removed after the `with`)."""
    pipe = build_pipeline(PyramidConfig())
    with StageTimer(pipe) as timer:
        started = time.perf_counter()
        timer.start()
        pipe("a", schedule="2-1-1", output_type="pt", callback=timer.callback)
        parts = timer.stop()
        elapsed = time.perf_counter() - started
        hooks = len(pipe.transformer._forward_pre_hooks)
    assert hooks == 1 and not pipe.transformer._forward_pre_hooks
    assert list(parts) == ["text", "stage 2", "stage 1", "stage 0", "decode"]
    assert 0 < sum(parts.values()) <= elapsed
    assert list(timer.transformer) == ["stage 2", "stage 1", "stage 0"]
    for part, seconds in timer.transformer.items():
        assert 0 < seconds <= parts[part]


def test_bench_compile_row_times_every_schedule_compiled_without_recompiles():
    """--compile: after the eager rows, every schedule again with the blocks compiled; the first video of
    each schedule compiles one graph per stage shape and the timed ones recompile nothing ("eager" traces
    with dynamo like inductor, without its C++ compile)."""
    pipe = build_pipeline(PyramidConfig())
    report = compute_bench(
        pipe, bench_args("--schedule", "0-0-2", "2-2-1", "--compile", "eager"), pipe.device
    )
    compiled = report["compiled"]
    assert compiled["backend"] == "eager"
    assert compiled["graphs"] == 3  # the three stage shapes; 0-0-2's is 2-2-1's full-resolution one
    assert compiled["recompiles_after_first_videos"] == 0
    for row in report["schedules"]:
        assert row["compiled_seconds"] > 0
        assert row["compile_speedup"] == pytest.approx(row["seconds"] / row["compiled_seconds"])
    text = format_bench(report)
    assert "compiled/eager" in text and "recompiles after them: 0" in text


def test_bench_compile_backend_is_checked_before_any_work(capsys):
    assert main(["bench", *SMALL, "--transformer", "toy-wan", "--compile", "no-such-backend"]) == 2
    err = capsys.readouterr().err
    assert "--compile no-such-backend: not a torch.compile backend" in err and "inductor" in err
