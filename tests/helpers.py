"""Helpers shared by tests of several areas; tests import it as `helpers` (tests/conftest.py puts tests/
on sys.path)."""

import os
import subprocess
import sys

import pytest
import torch
from diffusers import AutoencoderKLWan, WanTransformer3DModel

from pyramidal_wan.models.presets import get_transformer_config
from pyramidal_wan.pyramid import PyramidConfig
from pyramidal_wan.toy.text import build_text_encoder, build_tokenizer
from pyramidal_wan.training.config import load_config

# The torchrun of this Python's environment, not whichever is first on PATH.
TORCHRUN = os.path.join(os.path.dirname(sys.executable), "torchrun")
needs_torchrun = pytest.mark.skipif(
    not os.path.exists(TORCHRUN), reason="torchrun not installed beside this Python"
)


def nondefault_pyramid_config(guidance_scale: float) -> PyramidConfig:
    """A 2-stage few-step PyramidConfig with every field off its default, so a round trip must carry each."""
    return PyramidConfig(
        num_stages=2,
        factors=((1, 2, 2),),
        clean_ends=(0.4,),
        wavelet="db2",
        sampler="fewstep",
        default_schedule="2-1",
        shift=2.0,
        guidance_scale=guidance_scale,
    )


def record_sampling(pipe, prompt: str, **kwargs):
    """(latents, stages, token shapes): `pipe(prompt, **kwargs)` as latents from seed 0, the stage of every
    evaluation, and the (batch, tokens) of every transformer forward (CFG doubles the batch)."""
    stages, token_shapes = [], []
    hook = pipe.transformer.blocks[0].register_forward_pre_hook(
        lambda m, args: token_shapes.append(tuple(args[0].shape[:2]))
    )
    try:
        latents = pipe(
            prompt,
            generator=torch.Generator().manual_seed(0),
            output_type="latent",
            callback=lambda info: stages.append(info["stage"]),
            **kwargs,
        ).frames
    finally:
        hook.remove()
    return latents, stages, token_shapes


def run_cli_in_two_cpu_processes(
    cli_args: list[str], standalone: bool = False
) -> subprocess.CompletedProcess[str]:
    """`pyramidal-wan CLI_ARGS` as 2 gloo CPU processes under torchrun, one thread each; fails the test with
    the tail of stderr unless it exits 0. `standalone` makes torchrun pick a free rendezvous port (other
    torchrun jobs on the machine may hold the default)."""
    return run_in_two_cpu_processes(["-m", "pyramidal_wan.cli", *cli_args], standalone)


def run_in_two_cpu_processes(argv: list[str], standalone: bool = True) -> subprocess.CompletedProcess[str]:
    """`python ARGV` (a script or `-m module`) as 2 gloo CPU processes under torchrun; see above."""
    rendezvous = ["--standalone"] if standalone else []
    cmd = [TORCHRUN, *rendezvous, "--nproc_per_node", "2", *argv]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


TI2V_CHANNELS = 48  # Wan2.2-TI2V-5B latent channels


def build_ti2v_components(seed: int = 0) -> dict:
    """The toy text stack with a TI2V-5B-shaped transformer (48 channels in and out) and a narrow Wan2.2 VAE
    (z_dim 48, 2x2 pixel patchify, 4x16x16 compression, residual blocks) of random weights."""
    config = {**get_transformer_config("toy-wan"), "num_layers": 2}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = WanTransformer3DModel.from_config(
            {**config, "in_channels": TI2V_CHANNELS, "out_channels": TI2V_CHANNELS}
        ).eval()
        stats = torch.Generator().manual_seed(seed)
        vae = AutoencoderKLWan(
            base_dim=8,
            z_dim=TI2V_CHANNELS,
            dim_mult=[1, 2, 2, 2],
            num_res_blocks=1,
            is_residual=True,
            in_channels=12,
            out_channels=12,
            patch_size=2,
            scale_factor_spatial=16,
            latents_mean=(0.1 * torch.randn(TI2V_CHANNELS, generator=stats)).tolist(),
            latents_std=(1.0 + 0.2 * torch.rand(TI2V_CHANNELS, generator=stats)).tolist(),
        ).eval()
    return {
        "tokenizer": build_tokenizer(),
        "text_encoder": build_text_encoder(seed),
        "vae": vae,
        "transformer": transformer,
    }


def tiny_train_config(cache, out, *overrides):
    """A two-step training config on a tiny cache (checkpoint and log every step); overrides come last."""
    return load_config(
        None,
        [
            f"data.cache={cache}",
            f"train.out={out}",
            "train.batch_size=3",
            "train.steps=2",
            "train.log_every=1",
            "train.checkpoint_every=1",
            "model.pipeline=None",
            *overrides,
        ],
    )
