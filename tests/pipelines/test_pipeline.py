"""PyramidalWanPipeline on tiny random components: diffusers consistency, shapes, seeds, save/load, errors."""

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline
from diffusers.hooks import FirstBlockCacheConfig
from helpers import nondefault_pyramid_config
from pipeline_helpers import PROMPT, SIZE, BaselineGridScheduler, build_pipeline
from torch._dynamo.utils import counters

from pyramidal_wan.errors import InputError
from pyramidal_wan.models.caching import CACHES
from pyramidal_wan.models.checkpoint import PLAIN_MODEL_CONFIG, PYRAMID_CONFIG_NAME
from pyramidal_wan.models.loading import load_wan_pipeline
from pyramidal_wan.pipelines import WAN21_NEGATIVE_PROMPT, PyramidalWanPipeline
from pyramidal_wan.pipelines import pipeline_pyramidal_wan as pipeline_module
from pyramidal_wan.pyramid import PyramidConfig

TEXT_LEN = 32  # the toy tokenizer's model_max_length


def generator(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("guidance_scale", [5.0, 1.0])
def test_plain_schedule_matches_diffusers_wan_pipeline(components, pipe, guidance_scale):
    steps = 4
    wan = WanPipeline(**components, scheduler=BaselineGridScheduler(shift=3.0))
    wan.set_progress_bar_config(disable=True)
    common = {"negative_prompt": "", "guidance_scale": guidance_scale, "max_sequence_length": TEXT_LEN}
    common.update(SIZE)
    # Decoding is checked once (with CFG): it is the slow part on a CPU.
    output_types = ("latent", "np") if guidance_scale > 1 else ("latent",)
    for output_type in output_types:
        theirs = wan(
            PROMPT, num_inference_steps=steps, generator=generator(), output_type=output_type, **common
        ).frames
        ours = pipe(PROMPT, schedule=f"0-0-{steps}", generator=generator(), output_type=output_type, **common)
        ours = ours.frames
        assert ours.shape == theirs.shape
        diff = np.abs(np.asarray(ours, dtype=np.float64) - np.asarray(theirs, dtype=np.float64)).max()
        print(f"w={guidance_scale} {output_type}: max abs diff {diff:.3g}")
        assert diff < 1e-4


def test_cfg_is_sequential_on_a_cpu_and_batched_on_accelerators(pipe, monkeypatch):
    batches = []
    handle = pipe.transformer.register_forward_pre_hook(
        lambda module, args, kwargs: batches.append(kwargs["hidden_states"].shape[0]), with_kwargs=True
    )

    def run(**kwargs):
        return pipe(PROMPT, schedule="2-2-1", generator=generator(), output_type="latent", **kwargs).frames

    try:
        sequential = run(guidance_scale=5.0)
        run(sampler="fewstep")
        assert batches == [1] * 10 + [1] * 5  # CPU: cond and uncond as two calls; few-step: no CFG
        batches.clear()
        # What an accelerator gets: one batched call per step, the same velocities up to float32 rounding.
        monkeypatch.setattr(pipeline_module, "batched_cfg_pays", lambda device: True)
        batched = run(guidance_scale=5.0)
    finally:
        handle.remove()
    assert batches == [2] * 5
    torch.testing.assert_close(batched, sequential, rtol=0, atol=1e-5)


def test_per_call_lookups_do_not_grow_with_the_steps(pipe, monkeypatch):
    """The transformer's dtype (diffusers walks the parameters) and the execution device (it walks the
    components) are looked up a fixed number of times per call, as WanPipeline does, not per evaluation."""
    lookups = []
    model_class, pipe_class = type(pipe.transformer), type(pipe)
    dtype, device = model_class.dtype, pipe_class._execution_device
    monkeypatch.setattr(
        model_class, "dtype", property(lambda self: lookups.append("dtype") or dtype.fget(self))
    )
    monkeypatch.setattr(
        pipe_class, "_execution_device", property(lambda self: lookups.append("device") or device.fget(self))
    )
    counts = []
    for steps in (2, 6):
        lookups.clear()
        pipe(PROMPT, schedule=f"0-0-{steps}", guidance_scale=5.0, generator=generator(), output_type="latent")
        counts.append((lookups.count("dtype"), lookups.count("device")))
    assert counts[0] == counts[1] and counts[0][1] == 1


@pytest.mark.parametrize(
    ("config", "schedule", "sampler"),
    [
        (PyramidConfig(num_stages=2, default_schedule="3-2"), None, None),
        (
            PyramidConfig(num_stages=2, factors=((1, 2, 2),), wavelet="db2", default_schedule="2-2"),
            None,
            "fewstep",
        ),
        (PyramidConfig(), "3-2-2", "multistep"),
        (PyramidConfig(sampler="fewstep", default_schedule="2-2-1"), None, None),
        (PyramidConfig(sampler="fewstep", default_schedule="1-1-1"), "0-0-2", None),
    ],
)
def test_pyramidal_runs_have_the_right_shapes_and_follow_the_seed(config, schedule, sampler):
    pipe = build_pipeline(config)

    def run(seed, output_type="latent"):
        kwargs = {"schedule": schedule, "sampler": sampler, "output_type": output_type}
        return pipe(PROMPT, generator=generator(seed), **kwargs).frames

    first, again, other = run(0), run(0), run(1)
    assert first.shape == (1, 16, 5, 16, 16)  # full-resolution latent, whatever stage sampling started at
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)
    assert torch.isfinite(first).all()
    video = run(0, "np")
    assert video.shape == (1, 17, 64, 64, 3) and video.min() >= 0.0 and video.max() <= 1.0


def test_solver_comes_from_the_call_or_the_model(pipe, components):
    """A model whose pyramid_config names dpm2m samples as a call passing solver="dpm2m"; Euler differs
    (from 4 steps per stage: the first two and the last step of a stage are Euler steps in both)."""
    dpm_model = build_pipeline(PyramidConfig(solver="dpm2m"), components=components)

    def run(p, **kwargs):
        return p(PROMPT, schedule="4-4-4", generator=generator(), output_type="latent", **kwargs).frames

    dpm = run(pipe, solver="dpm2m")
    assert torch.equal(run(dpm_model), dpm)
    assert torch.equal(run(dpm_model, solver="euler"), run(pipe))
    assert not torch.allclose(dpm, run(pipe), atol=1e-4)
    assert torch.isfinite(dpm).all()


def test_step_cache_resets_at_every_stage_change(pipe, monkeypatch):
    """With a first-block cache that always reuses, the tail blocks run exactly once per stage and CFG branch
    (cond, uncond: one cache state each): at the first step of each stage, where the token grid changed and
    the cache was reset (else: a shape error)."""
    monkeypatch.setitem(CACHES, "first-block", lambda run: FirstBlockCacheConfig(threshold=1e9))
    tail_runs = []
    handle = pipe.transformer.blocks[-1].ffn.register_forward_pre_hook(
        lambda module, args: tail_runs.append(args[0].shape)
    )
    stages = []
    try:
        pipe(
            PROMPT,
            schedule="4-3-2",
            cache="first-block",
            generator=generator(),
            output_type="latent",
            callback=lambda info: stages.append(info["stage"]),
        )
    finally:
        handle.remove()
    assert stages == [2] * 4 + [1] * 3 + [0] * 2
    assert len(tail_runs) == 6 and len({shape[1] for shape in tail_runs}) == 3  # one per stage's tokens
    assert pipe.transformer._cache_config is None  # the cache is removed after the call


@pytest.mark.parametrize(("cache", "computed"), [("first-block", 48), ("taylorseer", 24)])
def test_step_caches_stay_close_to_uncached_sampling(pipe, cache, computed):
    """diffusers' default settings on 8-8-8 with CFG (two branches on a CPU). First-block: the tiny random
    model's first-block residual changes by more than 0.05 every step, so all 2 x 24 calls compute (error
    0). TaylorSeer (warm-up 3, interval 5, restarted per stage) computes 4 of 8 steps per stage and branch;
    relative latent error measured 0.0019.
    """
    attention_runs = []
    handle = pipe.transformer.blocks[0].attn1.to_q.register_forward_pre_hook(
        lambda module, args: attention_runs.append(1)
    )

    def run(**kwargs):
        return pipe(PROMPT, schedule="8-8-8", generator=generator(), output_type="latent", **kwargs).frames

    try:
        plain = run()
        attention_runs.clear()
        cached = run(cache=cache)
    finally:
        handle.remove()
    assert len(attention_runs) == computed
    assert ((cached - plain).norm() / plain.norm()).item() < 0.01
    assert torch.equal(run(), plain)  # the cache is gone after the call


@pytest.mark.slow  # dynamo traces three block graphs: 22 s alone on one core, minutes on a loaded one
def test_compiled_blocks_compile_once_per_stage_shape():
    """compile_blocks: one graph per stage token grid during the first video, no recompiles after (the
    "eager" backend traces with dynamo like inductor, without its C++ compile)."""
    torch._dynamo.reset()
    counters.clear()
    pipe = build_pipeline(PyramidConfig())
    pipe.compile_blocks(backend="eager")

    def run(seed):
        return pipe(PROMPT, schedule="2-2-1", generator=generator(seed), output_type="latent").frames

    first = run(0)
    graphs = counters["stats"]["unique_graphs"]
    assert graphs == 3  # stages 2, 1, 0
    second = run(1)
    assert counters["stats"]["unique_graphs"] == graphs and not counters["recompiles"]
    assert not torch.allclose(first, second)
    torch._dynamo.reset()


def test_batches_generators_and_output_types(pipe):
    prompts = [PROMPT, "a green square moving up on a black background"]
    out = pipe(
        prompts,
        schedule="1-1-1",
        num_videos_per_prompt=2,
        generator=[generator(s) for s in range(4)],
        output_type="latent",
    ).frames
    assert out.shape == (4, 16, 5, 16, 16)
    # One generator per video: video 2 (prompt 1, copy 0) alone with generator 2 gives the same sample.
    single = pipe(prompts[1], schedule="1-1-1", generator=generator(2), output_type="latent").frames
    torch.testing.assert_close(out[2:3], single, atol=1e-5, rtol=0)

    pil = pipe(PROMPT, schedule="1-1-1", generator=generator(), output_type="pil").frames
    assert len(pil) == 1 and len(pil[0]) == 17 and pil[0][0].size == (64, 64)
    pt = pipe(PROMPT, schedule="1-1-1", generator=generator(), output_type="pt", return_dict=False)[0]
    assert pt.shape == (1, 17, 3, 64, 64)


def test_prompt_embeds_and_latents_can_be_given(pipe):
    embeds, negative = pipe.encode_prompt(PROMPT, "", do_classifier_free_guidance=True)
    assert embeds.shape == negative.shape == (1, TEXT_LEN, 32)
    latents = torch.randn(1, 16, 2, 4, 4, generator=generator(5))  # the lowest stage of 17x64x64
    from_text = pipe(
        PROMPT,
        negative_prompt="",
        schedule="1-1-1",
        latents=latents,
        generator=generator(),
        output_type="latent",
    )
    from_embeds = pipe(
        prompt_embeds=embeds,
        negative_prompt_embeds=negative,
        schedule="1-1-1",
        latents=latents,
        generator=generator(),
        output_type="latent",
    )
    torch.testing.assert_close(from_text.frames, from_embeds.frames, atol=0, rtol=0)


def test_callback_sees_every_evaluation_with_its_stage(pipe):
    seen = []
    pipe(
        PROMPT,
        schedule="2-2-1",
        generator=generator(),
        output_type="latent",
        callback=lambda info: seen.append((info["stage"], tuple(info["denoised"].shape))),
    )
    assert [s for s, _ in seen] == [2, 2, 1, 1, 0]
    assert seen[0][1] == (1, 16, 2, 4, 4) and seen[-1][1] == (1, 16, 5, 16, 16)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_frames": 16}, "4k+1"),
        ({"num_frames": 13}, "halved in time"),
        ({"height": 48}, "height 48 must be divisible by 32"),
        ({"schedule": "1-1"}, "2 entries but the model has 3 stages"),
        ({"schedule": "2-2-1-1"}, "4 entries"),
        ({"schedule": "0-2-1"}, "zero entry"),
        ({"schedule": "a-b-c"}, "integers"),
        ({"sampler": "ddim"}, "unknown sampler"),
        ({"solver": "heun"}, "unknown solver"),
        ({"sampler": "fewstep", "solver": "dpm2m"}, "applies to multistep sampling"),
        ({"cache": "teacache"}, "unknown cache"),
        ({"sampler": "fewstep", "cache": "first-block"}, "needs multistep sampling"),
        ({"guidance_scale": 0.5}, "guidance_scale"),
        ({"generator": [torch.Generator()] * 2}, "2 generators for 1 videos"),
        ({"output_type": "gif"}, "output_type"),
        ({"latents": torch.zeros(1, 16, 5, 16, 16)}, "starts from noise of shape (1, 16, 2, 4, 4)"),
        ({"prompt": None}, "exactly one of prompt and prompt_embeds"),
        ({"negative_prompt": ["", ""]}, "2 negative prompts for 1 prompts"),
        ({"num_videos_per_prompt": 0}, "num_videos_per_prompt"),
    ],
)
def test_bad_inputs_raise_one_line_errors_before_model_work(pipe, monkeypatch, kwargs, message):
    def no_model_work(*args, **kwargs):
        raise AssertionError("model work started before the inputs were checked")

    for module in (pipe.text_encoder, pipe.transformer, pipe.vae):
        monkeypatch.setattr(module, "forward", no_model_work)
    call = {"prompt": PROMPT, **kwargs}
    with pytest.raises(InputError) as err:
        pipe(**call)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_plain_sizes_need_only_full_resolution_geometry(pipe):
    # 17x48x48 cannot be split into three stages, but plain sampling never leaves full resolution.
    out = pipe(PROMPT, height=48, width=48, schedule="0-0-1", generator=generator(), output_type="latent")
    assert out.frames.shape == (1, 16, 5, 12, 12)


def test_save_and_from_pretrained_round_trip(tmp_path):
    config = nondefault_pyramid_config(guidance_scale=4.0)
    pipe = build_pipeline(config)
    pipe.save_pretrained(tmp_path / "model")
    assert (tmp_path / "model" / PYRAMID_CONFIG_NAME).is_file()

    loaded = PyramidalWanPipeline.from_pretrained(tmp_path / "model")
    loaded.set_progress_bar_config(disable=True)
    assert loaded.pyramid_config == config
    assert (loaded.config.default_num_frames, loaded.config.default_height, loaded.config.default_width) == (
        17,
        64,
        64,
    )
    assert loaded.config.default_negative_prompt == ""
    before = pipe(PROMPT, generator=generator(), output_type="latent").frames
    after = loaded(PROMPT, generator=generator(), output_type="latent").frames
    # Same weights; transformers picks its attention kernel per load path, so allow float rounding.
    torch.testing.assert_close(before, after, atol=1e-5, rtol=0)

    # Settings can be checked against the folder before any weights are loaded.
    plan = PyramidalWanPipeline.plan_from_folder(tmp_path / "model")
    assert plan == loaded.check_inputs(PROMPT, None, 17, 64, 64)
    assert (plan.schedule, plan.sampler, plan.guidance_scale) == ("2-1", "fewstep", 1.0)
    with pytest.raises(InputError, match="num_frames 19"):
        PyramidalWanPipeline.plan_from_folder(tmp_path / "model", num_frames=19)

    # The folder is still a plain diffusers Wan folder.
    wan = load_wan_pipeline(tmp_path / "model")
    assert isinstance(wan, WanPipeline)


def test_a_wan_folder_without_pyramid_config_is_plain_wan(tmp_path, components):
    WanPipeline(**components, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0)).save_pretrained(tmp_path)
    pipe = PyramidalWanPipeline.from_pretrained(tmp_path)
    assert pipe.pyramid_config == PLAIN_MODEL_CONFIG
    assert pipe.resolve_sampling() == ((0, 0, 50), "multistep", 5.0)
    # Wan2.1's defaults: the paper's size and Wan's negative prompt.
    config = pipe.config
    assert (config.default_num_frames, config.default_height, config.default_width) == (81, 448, 832)
    assert pipe.config.default_negative_prompt == WAN21_NEGATIVE_PROMPT
    assert pipe.resolve_sampling("2-2-1", "fewstep") == ((2, 2, 1), "fewstep", 1.0)
    assert pipe.resolve_sampling("2-2-1", "fewstep", 3.0) == ((2, 2, 1), "fewstep", 3.0)


def test_a_plain_pipeline_saves_no_pyramid_config(tmp_path):
    folder = tmp_path / "model"
    build_pipeline(PyramidConfig(default_schedule="2-2-1")).save_pretrained(folder)
    assert (folder / PYRAMID_CONFIG_NAME).is_file()
    build_pipeline().save_pretrained(folder)  # plain: the stale file goes
    assert not (folder / PYRAMID_CONFIG_NAME).exists()
    assert PyramidalWanPipeline.from_pretrained(folder).pyramid_config == PLAIN_MODEL_CONFIG


def test_from_pretrained_reports_missing_folders(tmp_path):
    from pyramidal_wan.errors import CheckpointError

    with pytest.raises(CheckpointError, match="not found"):
        PyramidalWanPipeline.from_pretrained(tmp_path / "nothing")
