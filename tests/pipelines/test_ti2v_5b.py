"""Wan2.2-TI2V-5B's shape on a tiny random model: 48-channel latents of a 4x16x16 Wan2.2 VAE (patchified,
residual), per-token timesteps; diffusers consistency at 0-0-N (text- and image-to-video), the clean image
latent and timestep 0 on the first latent frame of every stage, generation at each schedule, size errors."""

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, WanImageToVideoPipeline, WanPipeline
from helpers import TI2V_CHANNELS as CHANNELS
from helpers import build_ti2v_components
from pipeline_helpers import PROMPT, BaselineGridScheduler, conditioning_image

from pyramidal_wan.cli import main
from pyramidal_wan.models.conditioning import LatentEncoder, stage_image
from pyramidal_wan.pipelines import PyramidalWanPipeline
from pyramidal_wan.pyramid import PyramidConfig
from pyramidal_wan.utils.video import read_video

SIZE_5B = {"num_frames": 17, "height": 128, "width": 128}  # the smallest 3-stage size at 16x VAE, patch 2


@pytest.fixture(scope="module")
def components():
    return build_ti2v_components()


@pytest.fixture(scope="module")
def diffusers_dir(tmp_path_factory, components):
    """The folder diffusers writes for TI2V-5B: WanPipeline with expand_timesteps."""
    folder = tmp_path_factory.mktemp("ti2v")
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    WanPipeline(**components, scheduler=scheduler, expand_timesteps=True).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, components):
    """A pyramidal TI2V-5B-shaped model folder whose defaults are 17x128x128."""
    folder = tmp_path_factory.mktemp("ti2v-pyramid")
    pipe = PyramidalWanPipeline(
        **components,
        pyramid_config=PyramidConfig(sampler="fewstep", default_schedule="2-2-1"),
        expand_timesteps=True,
        default_num_frames=SIZE_5B["num_frames"],
        default_height=SIZE_5B["height"],
        default_width=SIZE_5B["width"],
        default_negative_prompt="",
    )
    pipe.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("image", [False, True], ids=["text-to-video", "image-to-video"])
def test_plain_schedule_matches_diffusers_with_expand_timesteps(components, diffusers_dir, image):
    """Against `WanPipeline(expand_timesteps=True)`, and with an image against `WanImageToVideoPipeline`'s."""
    steps = 3
    reference = WanImageToVideoPipeline if image else WanPipeline
    wan = reference(**components, scheduler=BaselineGridScheduler(shift=3.0), expand_timesteps=True)
    wan.set_progress_bar_config(disable=True)
    pipe = PyramidalWanPipeline.from_pretrained(diffusers_dir)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.image_mode == "first_frame" and pipe.vae_scale_factor_spatial == 16
    common = {"negative_prompt": "", "guidance_scale": 5.0, "max_sequence_length": 32, **SIZE_5B}
    common.update({"image": conditioning_image(150, 140)} if image else {})
    generator = torch.Generator().manual_seed(0)
    theirs = wan(
        prompt=PROMPT, num_inference_steps=steps, generator=generator, output_type="latent", **common
    )
    generator = torch.Generator().manual_seed(0)
    ours = pipe(PROMPT, schedule=f"0-0-{steps}", generator=generator, output_type="latent", **common)
    assert ours.frames.shape == theirs.frames.shape == (1, CHANNELS, 5, 8, 8)
    diff = (ours.frames - theirs.frames).abs().max().item()
    print(
        f"TI2V-5B shape, {'image' if image else 'text'}-to-video, 0-0-{steps}, w=5: max abs diff {diff:.3g}"
    )
    assert diff < 1e-4


@pytest.mark.parametrize(
    ("schedule", "sampler", "image"),
    [("2-2-1", "fewstep", False), ("2-2-2", "multistep", False), ("2-2-1", "fewstep", True)],
)
def test_generate_runs_each_schedule(model_dir, tmp_path, capsys, schedule, sampler, image):
    out = tmp_path / "video.mp4"
    args = ["--model", str(model_dir), "--out", str(out), "--schedule", schedule, "--sampler", sampler]
    if image:  # TI2V-5B runs text-to-video and image-to-video
        conditioning_image().save(tmp_path / "first.png")
        args += ["--image", str(tmp_path / "first.png")]
    assert main(["generate", PROMPT, *args, "--threads", "1"]) == 0
    assert read_video(out).shape == (17, 128, 128, 3)
    assert f"schedule {schedule} ({sampler}" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--height", "192"],
            "height 192 must be divisible by 128 (16x VAE x 2 patch x 4 pyramid); use 128 or 256",
        ),
        (["--num-frames", "21"], "num_frames 21 cannot be halved in time 2 times"),
    ],
)
def test_a_size_that_cannot_be_three_stages_is_a_one_line_error(model_dir, tmp_path, capsys, args, message):
    out = tmp_path / "video.mp4"
    assert main(["generate", PROMPT, "--model", str(model_dir), "--out", str(out), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("schedule", "sampler"), [("2-2-1", "fewstep"), ("2-2-2", "multistep")])
def test_every_stage_keeps_the_clean_image_latent_at_timestep_zero(model_dir, schedule, sampler):
    pipe = PyramidalWanPipeline.from_pretrained(model_dir)
    pipe.set_progress_bar_config(disable=True)
    image = conditioning_image(150, 140)
    pixels = pipe.video_processor.preprocess(image, height=128, width=128)  # (1, 3, 128, 128)
    encode = LatentEncoder(pipe.vae)
    calls = []

    def record(module, args, kwargs):
        calls.append((kwargs["hidden_states"], kwargs["timestep"]))

    hook = pipe.transformer.register_forward_pre_hook(record, with_kwargs=True)
    try:
        generator = torch.Generator().manual_seed(0)
        out = pipe(PROMPT, image=image, schedule=schedule, sampler=sampler, generator=generator)
        latents = pipe(
            PROMPT,
            image=image,
            schedule=schedule,
            sampler=sampler,
            generator=torch.Generator().manual_seed(0),
            output_type="latent",
        ).frames
    finally:
        hook.remove()
    assert out.frames.shape == (1, 17, 128, 128, 3)
    sizes = set()
    for hidden, timestep in calls:
        height, width = hidden.shape[-2:]
        sizes.add((height, width))
        clean = encode(stage_image(pixels, 16 * height, 16 * width)[:, :, None])  # (1, 48, 1, h, w)
        torch.testing.assert_close(hidden[:, :, :1], clean.expand(hidden.shape[0], -1, -1, -1, -1))
        first = height * width // 4  # tokens of latent frame 0 (patch 1x2x2)
        assert timestep.shape == (hidden.shape[0], hidden.shape[2] * first)
        assert (timestep[:, :first] == 0).all() and (timestep[:, first:] > 0).all()
    assert sizes == {(8, 8), (4, 4), (2, 2)}  # every stage
    full = encode(pixels[:, :, None])
    torch.testing.assert_close(latents[:, :, :1], full)  # the video starts at the clean image latent
