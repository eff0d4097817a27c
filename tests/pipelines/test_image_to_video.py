"""Image-to-video on a tiny random model of Wan2.1-I2V's shape (a CLIP image branch, 16 + 4 + 16 input
channels): diffusers consistency at 0-0-N, the conditioning at every stage's own size in every sampler, the
pipeline's and the CLI's image checks; and, with a clean first latent frame on the toy family's trained VAE,
that the video's first frame is the image within the VAE's error. Wan2.2-TI2V-5B's shape is in
test_ti2v_5b.py."""

import numpy as np
import pytest
import torch
from diffusers import (
    AutoencoderKLWan,
    FlowMatchEulerDiscreteScheduler,
    WanImageToVideoPipeline,
    WanPipeline,
    WanTransformer3DModel,
)
from PIL import Image
from pipeline_helpers import (
    PROMPT,
    SIZE,
    TINY_TRANSFORMER,
    BaselineGridScheduler,
    build_components,
    build_i2v_components,
    build_pipeline,
    conditioning_image,
)

from pyramidal_wan.cli import main
from pyramidal_wan.data.stages import stage_videos
from pyramidal_wan.errors import InputError
from pyramidal_wan.models.bundled import REPO_ROOT
from pyramidal_wan.models.conditioning import LatentEncoder, first_frame_mask
from pyramidal_wan.pipelines import PyramidalWanPipeline
from pyramidal_wan.pyramid import PyramidConfig
from pyramidal_wan.toy.world import seeded_scene
from pyramidal_wan.utils.video import read_video

SIZE_ARGS = ["--num-frames", "17", "--height", "64", "--width", "64"]


@pytest.fixture(scope="module")
def components():
    return build_i2v_components()


@pytest.fixture(scope="module")
def i2v_dir(tmp_path_factory, components):
    """The folder diffusers writes for Wan2.1-I2V: a WanImageToVideoPipeline (no pyramid_config.json)."""
    folder = tmp_path_factory.mktemp("i2v")
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    WanImageToVideoPipeline(**components, scheduler=scheduler).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def pipe(i2v_dir):
    pipe = PyramidalWanPipeline.from_pretrained(i2v_dir)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sample(pipe, image, **kwargs):
    common = {"negative_prompt": "", "max_sequence_length": 32, "output_type": "latent"}
    return pipe(PROMPT, image=image, generator=torch.Generator().manual_seed(0), **common, **kwargs).frames


def test_plain_schedule_matches_wan_image_to_video_pipeline(components, pipe):
    steps = 3
    wan = WanImageToVideoPipeline(**components, scheduler=BaselineGridScheduler(shift=3.0))
    wan.set_progress_bar_config(disable=True)
    assert pipe.image_mode == "clip" and pipe.image_encoder is not None
    common = {"negative_prompt": "", "guidance_scale": 5.0, "max_sequence_length": 32, **SIZE}
    theirs = wan(
        image=conditioning_image(),
        prompt=PROMPT,
        num_inference_steps=steps,
        generator=torch.Generator().manual_seed(0),
        output_type="latent",
        **common,
    ).frames
    ours = sample(pipe, conditioning_image(), schedule=f"0-0-{steps}", guidance_scale=5.0, **SIZE)
    assert ours.shape == theirs.shape == (1, 16, 5, 16, 16)
    diff = (ours - theirs).abs().max().item()
    print(f"Wan2.1-I2V shape, 0-0-{steps}, w=5: max abs latent diff vs WanImageToVideoPipeline {diff:.3g}")
    assert diff < 1e-4
    other = sample(pipe, conditioning_image(seed=1), schedule=f"0-0-{steps}", guidance_scale=5.0, **SIZE)
    assert (other - ours).abs().max() > 1e-2  # the image conditions the video


def expected_conditions(pipe, image, plan) -> dict:
    """Per stage latent size: mask + latent of the stage video of [image, zeros...] as the training data's
    stage pyramid makes it (`data.stages.stage_videos` of the full-size video, then VAE-encoded)."""
    frames, height, width = plan.geometry[0].pixel
    pixels = pipe.video_processor.preprocess(image, height=height, width=width)[:, :, None]  # (1, 3, 1, H, W)
    video = torch.cat([pixels, pixels.new_zeros(1, 3, frames - 1, height, width)], dim=2)
    factors = [t.factors for t in pipe.pyramid_config.pyramid().transfers][: len(plan.geometry) - 1]
    encode = LatentEncoder(pipe.vae)
    conditions = {}
    for stage, stage_video in zip(plan.geometry, stage_videos(video, factors)):
        mask = first_frame_mask(1, stage.latent, pipe.vae_scale_factor_temporal)
        conditions[stage.latent] = torch.cat([mask, encode(stage_video)], dim=1)
    return conditions


@pytest.mark.parametrize(
    ("schedule", "sampler", "solver"),
    [("2-2-2", "multistep", "euler"), ("2-2-2", "multistep", "dpm2m"), ("2-2-1", "fewstep", None)],
)
def test_every_evaluation_sees_the_image_at_its_stage_size(pipe, i2v_dir, schedule, sampler, solver):
    plan = PyramidalWanPipeline.plan_from_folder(
        i2v_dir, *SIZE.values(), schedule=schedule, sampler=sampler, solver=solver, image=True
    )
    calls = []

    def record(module, args, kwargs):
        calls.append((kwargs["hidden_states"], kwargs["encoder_hidden_states_image"]))

    hook = pipe.transformer.register_forward_pre_hook(record, with_kwargs=True)
    try:
        sample(pipe, conditioning_image(), plan=plan)
    finally:
        hook.remove()
    expected = expected_conditions(pipe, conditioning_image(), plan)
    clip = pipe.encode_image(conditioning_image(), torch.device("cpu"))  # (1, 17, 32): made once
    assert len(calls) == sum(plan.steps) * (2 if plan.guidance_scale > 1 else 1)
    assert {tuple(h.shape[2:]) for h, _ in calls} == set(expected)  # every stage's size was sampled
    for hidden, image_tokens in calls:
        assert hidden.shape[1] == 36
        condition = expected[tuple(hidden.shape[2:])].expand(hidden.shape[0], -1, -1, -1, -1)
        torch.testing.assert_close(hidden[:, 16:], condition, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(image_tokens, clip.expand(hidden.shape[0], -1, -1))


def test_the_pipeline_checks_the_image_at_its_entry(pipe, components):
    with pytest.raises(InputError, match="needs a conditioning image; pass one"):
        pipe(PROMPT, **SIZE, schedule="0-0-1")
    with pytest.raises(InputError, match="image must be a PIL image, got ndarray"):
        pipe(PROMPT, image=np.asarray(conditioning_image()), **SIZE, schedule="0-0-1")
    t2v = build_pipeline(components={**build_components(0)})
    with pytest.raises(InputError, match="a text-to-video model takes no conditioning image"):
        t2v(PROMPT, image=conditioning_image(), schedule="0-0-1")
    without_clip = {k: v for k, v in components.items() if k not in ("image_encoder", "image_processor")}
    with pytest.raises(InputError, match="CLIP image branch .* needs image_encoder and image_processor"):
        PyramidalWanPipeline(**without_clip)


def test_generate_with_an_image_writes_the_video(i2v_dir, tmp_path, capsys):
    image, out = tmp_path / "first.png", tmp_path / "out" / "video.mp4"
    conditioning_image().save(image)
    args = ["--model", str(i2v_dir), "--image", str(image), "--out", str(out), "--schedule", "2-2-1"]
    assert main(["generate", PROMPT, *args, "--sampler", "fewstep", *SIZE_ARGS, "--threads", "1"]) == 0
    assert read_video(out).shape == (17, 64, 64, 3)
    assert "schedule 2-2-1 (fewstep, no CFG)" in capsys.readouterr().out


@pytest.fixture(scope="module")
def t2v_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("t2v")
    build_pipeline().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def channels_dir(tmp_path_factory):
    """A Wan2.2-I2V-style folder (36 input channels, no CLIP branch) written by WanPipeline."""
    parts = build_components(0)
    parts["transformer"] = WanTransformer3DModel.from_config({**TINY_TRANSFORMER, "in_channels": 36})
    folder = tmp_path_factory.mktemp("channels")
    WanPipeline(**parts, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0)).save_pretrained(folder)
    return folder


@pytest.mark.parametrize(
    ("model", "image", "message"),
    [
        ("i2v", None, "an image-to-video model (image conditioning 'clip') needs a conditioning image"),
        ("channels", None, "an image-to-video model (image conditioning 'channels') needs a conditioning"),
        ("t2v", "png", "a text-to-video model takes no conditioning image; drop the image (--image)"),
        ("i2v", "missing", "missing.png: not a readable image (No such file or directory)"),
        ("i2v", "text", "text.png: not a readable image (cannot identify image file"),
    ],
)
def test_a_bad_image_combination_is_a_one_line_error(request, tmp_path, capsys, model, image, message):
    folder = {"i2v": "i2v_dir", "channels": "channels_dir", "t2v": "t2v_dir"}[model]
    folder = request.getfixturevalue(folder)
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    conditioning_image().save(inputs / "png.png")
    (inputs / "text.png").write_text("not an image")
    image_args = [] if image is None else ["--image", str(inputs / f"{image}.png")]
    out = tmp_path / "out" / "video.mp4"
    assert main(["generate", PROMPT, "--model", str(folder), "--out", str(out), *image_args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not out.parent.exists()


SHARED_VAE = REPO_ROOT / "models" / "toy" / "shared" / "vae"


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio (dB) of two images in [0, 1]."""
    return float(10 * np.log10(1.0 / np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)))


@pytest.mark.skipif(
    not (SHARED_VAE / "config.json").is_file(), reason="the toy family's trained VAE is absent"
)
@pytest.mark.parametrize(
    ("schedule", "sampler"), [("0-0-2", "fewstep"), ("2-2-1", "fewstep"), ("2-2-2", "multistep")]
)
def test_first_frame_decodes_back_to_the_image_within_the_vae_error(schedule, sampler):
    """With a clean first latent frame (expand_timesteps) and the toy family's trained VAE, the video's first
    frame is the VAE's own reconstruction of the image: the causal decoder makes pixel frame 0 from latent
    frame 0 alone, which is the image's latent. A random VAE would reconstruct nothing, so the trained one
    measures the property: its reconstruction of a toy frame is ~32.5 dB."""
    parts = build_components(0)
    parts["vae"] = AutoencoderKLWan.from_pretrained(SHARED_VAE).eval()
    defaults = {f"default_{k}": v for k, v in SIZE.items()}
    pipe = PyramidalWanPipeline(**parts, pyramid_config=PyramidConfig(), expand_timesteps=True, **defaults)
    pipe.set_progress_bar_config(disable=True)
    image = Image.fromarray(seeded_scene(0, 0).render()[0])  # a 64x64 toy frame
    target = np.asarray(image) / 255.0
    pixels = pipe.video_processor.preprocess(image, height=64, width=64)[:, :, None]  # (1, 3, 1, 64, 64)
    with torch.no_grad():
        decoded = pipe.vae.decode(pipe.vae.encode(pixels).latent_dist.mean).sample
    reconstruction = pipe.video_processor.postprocess_video(decoded, output_type="np")[0, 0]

    def first_frame(**image_arg):
        generator = torch.Generator().manual_seed(0)
        video = pipe(PROMPT, schedule=schedule, sampler=sampler, generator=generator, **image_arg).frames
        return video[0, 0]

    frame = first_frame(image=image)
    vae_psnr = psnr(reconstruction, target)
    print(f"{schedule}: first frame {psnr(frame, target):.2f} dB, VAE reconstruction {vae_psnr:.2f} dB")
    assert np.abs(frame - reconstruction).max() < 1e-5
    assert vae_psnr > 30.0
    assert psnr(first_frame(), target) < 20.0  # without the image, frame 0 is not the image


def test_two_expert_image_to_video_matches_diffusers(tmp_path):
    """Wan2.2-I2V-A14B's shape: two 36-channel experts without CLIP, boundary 0.9, against diffusers'
    `WanImageToVideoPipeline` at 0-0-4 with CFG (levels 1 and 0.9 take the high-noise expert)."""
    parts = build_components(0)
    experts = []
    for seed in (0, 1):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            config = {**TINY_TRANSFORMER, "in_channels": 36}
            experts.append(WanTransformer3DModel.from_config(config).eval())
    parts.update(transformer=experts[0], transformer_2=experts[1], boundary_ratio=0.9)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    WanImageToVideoPipeline(**parts, scheduler=scheduler).save_pretrained(tmp_path)
    pipe = PyramidalWanPipeline.from_pretrained(tmp_path)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.image_mode == "channels" and pipe.transformer_2 is not None
    wan = WanImageToVideoPipeline(**parts, scheduler=BaselineGridScheduler(shift=3.0))
    wan.set_progress_bar_config(disable=True)
    common = {"negative_prompt": "", "guidance_scale": 5.0, "max_sequence_length": 32, **SIZE}
    theirs = wan(
        image=conditioning_image(),
        prompt=PROMPT,
        num_inference_steps=4,
        generator=torch.Generator().manual_seed(0),
        output_type="latent",
        **common,
    ).frames
    ours = sample(pipe, conditioning_image(), schedule="0-0-4", guidance_scale=5.0, **SIZE)
    diff = (ours - theirs).abs().max().item()
    print(f"Wan2.2-I2V-A14B shape, 0-0-4, w=5: max abs latent diff vs WanImageToVideoPipeline {diff:.3g}")
    assert diff < 1e-4
    pyramid = sample(pipe, conditioning_image(), schedule="2-2-1", sampler="fewstep", **SIZE)
    assert pyramid.shape == ours.shape
