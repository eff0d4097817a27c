"""MagCache and FasterCache in the pyramid sampler: calibration, per-stage state, CFG batching, errors."""

import ast
import json

import pytest
import torch
from diffusers.hooks import MagCacheConfig
from pipeline_helpers import PROMPT, build_pipeline

from pyramidal_wan.cli import main
from pyramidal_wan.errors import InputError
from pyramidal_wan.models.caching import CACHES, MAG_RATIOS_FILE, load_mag_ratios
from pyramidal_wan.pyramid import PyramidConfig


def generator(seed=0):
    return torch.Generator().manual_seed(seed)


def sample(pipe, schedule, **kwargs):
    return pipe(PROMPT, schedule=schedule, generator=generator(), output_type="latent", **kwargs).frames


def count_calls(module, run):
    """(batch sizes of `module`'s calls during `run()`, its result)."""
    batches = []
    handle = module.register_forward_pre_hook(
        lambda m, args, kwargs: batches.append((args[0] if args else kwargs["hidden_states"]).shape[0]),
        with_kwargs=True,
    )
    try:
        result = run()
    finally:
        handle.remove()
    return batches, result


def test_mag_ratios_are_diffusers_calibration_per_stage(pipe, monkeypatch, capsys):
    """Our ratios equal what diffusers' calibration mode prints for the conditional branch of each stage
    (its state starts afresh at every stage change), with CFG as two batch-1 calls on a CPU."""
    ratios = pipe.calibrate_mag_ratios(PROMPT, schedule="3-4-2", generator=generator())
    assert {stage: len(r) for stage, r in ratios.items()} == {2: 3, 1: 4, 0: 2}
    assert all(r[0] == 1.0 for r in ratios.values()) and all(x > 0 for r in ratios.values() for x in r)

    monkeypatch.setitem(
        CACHES, "magcache", lambda run: MagCacheConfig(calibrate=True, num_inference_steps=run.steps)
    )
    monkeypatch.setattr(pipe, "mag_ratios", ratios)
    capsys.readouterr()
    sample(pipe, "3-4-2", cache="magcache")
    lines = capsys.readouterr().out.splitlines()  # a "[MagCache] ..." line, then the ratios as a list
    printed = [ast.literal_eval(line) for line in lines if line.startswith("[") and "MagCache" not in line]
    # Per stage, the cond branch's context finishes first, then the uncond one's.
    assert len(printed) == 6
    for stage, diffusers_ratios in zip((2, 1, 0), printed[::2]):
        assert ratios[stage] == pytest.approx(diffusers_ratios, rel=1e-5)


def test_magcache_skips_steps_with_calibrated_ratios(pipe, monkeypatch):
    """With the model's own ratios and a loose threshold, MagCache skips the blocks on some steps of every
    stage (never on a stage's first: its state is fresh) and stays close to uncached sampling."""
    monkeypatch.setattr(
        pipe, "mag_ratios", pipe.calibrate_mag_ratios(PROMPT, schedule="6-6-6", generator=generator())
    )
    monkeypatch.setitem(
        CACHES,
        "magcache",
        lambda run: MagCacheConfig(
            mag_ratios=run.mag_ratios[run.stage],
            num_inference_steps=run.steps,
            threshold=0.5,
            retention_ratio=0.0,
        ),
    )
    plain = sample(pipe, "6-6-6")
    tail = pipe.transformer.blocks[-1].ffn  # runs only when the blocks are computed
    runs, cached = count_calls(tail, lambda: sample(pipe, "6-6-6", cache="magcache"))
    computed = len(runs)
    assert 6 <= computed < 36  # 2 branches x 18 steps without skips; at least the first step of each
    assert ((cached - plain).norm() / plain.norm()).item() < 0.05
    assert pipe.transformer._cache_config is None
    assert torch.equal(sample(pipe, "6-6-6"), plain)


def test_magcache_needs_ratios_for_every_sampled_stage(pipe, monkeypatch):
    with pytest.raises(InputError, match="calibrate-magcache"):
        sample(pipe, "4-4-4", cache="magcache")
    monkeypatch.setattr(pipe, "mag_ratios", {0: [1.0, 0.9]})
    with pytest.raises(InputError, match="no stage 2, 1"):
        sample(pipe, "4-4-4", cache="magcache")
    assert sample(pipe, "0-0-3", cache="magcache").shape[2:] == (5, 16, 16)  # plain sampling has stage 0


def test_fastercache_batches_cfg_and_skips_the_uncond_branch():
    """FasterCache needs [uncond; cond] in one call, so CFG is batched on a CPU too; on most steps inside its
    timestep range it runs the cond half only; its state starts afresh at every stage."""
    pipe = build_pipeline(PyramidConfig())
    plain = sample(pipe, "8-8-8")
    ffn = pipe.transformer.blocks[0].ffn  # sees the batch after FasterCache's split
    batches, cached = count_calls(ffn, lambda: sample(pipe, "8-8-8", cache="fastercache"))
    assert len(batches) == 24  # one call per step
    assert (
        set(batches) == {1, 2} and batches[0] == batches[8] == batches[16] == 2
    )  # each stage starts in full
    assert ((cached - plain).norm() / plain.norm()).item() < 0.2
    with pytest.raises(InputError, match="needs a guidance scale > 1"):
        sample(pipe, "4-4-4", cache="fastercache", guidance_scale=1.0)


def test_calibrate_magcache_command_writes_the_ratios_generate_reads(tmp_path, capsys):
    folder = tmp_path / "model"
    build_pipeline(PyramidConfig()).save_pretrained(folder)
    capsys.readouterr()
    video = tmp_path / "v.mp4"
    generate = ["generate", PROMPT, "--model", str(folder), "--out", str(video), "--threads", "1"]
    generate += ["--schedule", "3-3-3", "--sampler", "multistep", "--cache", "magcache"]
    assert main(generate) == 2  # before calibration: a one-line error, no file
    err = capsys.readouterr().err.strip()
    assert "calibrate-magcache" in err and len(err.splitlines()) == 1 and not video.exists()

    assert main(["calibrate-magcache", "--model", str(folder), "--schedule", "4-4-4", "--threads", "1"]) == 0
    assert "stage 2: 4 steps" in capsys.readouterr().out
    saved = json.loads((folder / MAG_RATIOS_FILE).read_text())
    assert saved["schedule"] == "4-4-4" and sorted(saved["stages"]) == ["0", "1", "2"]
    assert all(len(v) == 4 for v in load_mag_ratios(folder / MAG_RATIOS_FILE).values())
    assert main(generate) == 0 and video.is_file()

    (folder / MAG_RATIOS_FILE).write_text("{}")
    assert main(generate) == 2
    assert "not a MagCache ratios file" in capsys.readouterr().err
