"""Wan2.2-TI2V-5B's shape on a tiny random model: 48-channel latents of a 4x16x16 Wan2.2 VAE (patchified,
residual), per-token timesteps; diffusers consistency at 0-0-N, generation at each schedule, size errors."""

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline
from helpers import TI2V_CHANNELS as CHANNELS
from helpers import build_ti2v_components
from pipeline_helpers import PROMPT, BaselineGridScheduler

from pyramidal_wan.cli import main
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


def test_plain_schedule_matches_diffusers_with_expand_timesteps(components, diffusers_dir):
    steps = 3
    wan = WanPipeline(**components, scheduler=BaselineGridScheduler(shift=3.0), expand_timesteps=True)
    wan.set_progress_bar_config(disable=True)
    pipe = PyramidalWanPipeline.from_pretrained(diffusers_dir)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.config.expand_timesteps and pipe.vae_scale_factor_spatial == 16
    common = {"negative_prompt": "", "guidance_scale": 5.0, "max_sequence_length": 32, **SIZE_5B}
    theirs = wan(
        PROMPT,
        num_inference_steps=steps,
        generator=torch.Generator().manual_seed(0),
        output_type="latent",
        **common,
    ).frames
    ours = pipe(
        PROMPT,
        schedule=f"0-0-{steps}",
        generator=torch.Generator().manual_seed(0),
        output_type="latent",
        **common,
    ).frames
    assert ours.shape == theirs.shape == (1, CHANNELS, 5, 8, 8)
    diff = (ours - theirs).abs().max().item()
    print(f"TI2V-5B shape, 0-0-{steps}, w=5: max abs latent diff {diff:.3g}")
    assert diff < 1e-4


@pytest.mark.parametrize(("schedule", "sampler"), [("2-2-1", "fewstep"), ("2-2-2", "multistep")])
def test_generate_runs_each_schedule(model_dir, tmp_path, capsys, schedule, sampler):
    out = tmp_path / "video.mp4"
    args = ["--model", str(model_dir), "--out", str(out), "--schedule", schedule, "--sampler", sampler]
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
