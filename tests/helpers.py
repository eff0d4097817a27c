"""Helpers shared by tests of several areas; tests import it as `helpers` (tests/conftest.py puts tests/
on sys.path)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKLWan, WanTransformer3DModel
from PIL import Image
from safetensors.torch import save_file
from transformers import CLIPImageProcessorPil, CLIPVisionConfig, CLIPVisionModel

from pyramidal_wan.models.presets import get_transformer_config
from pyramidal_wan.pyramid import PyramidConfig
from pyramidal_wan.toy.text import build_text_encoder, build_tokenizer
from pyramidal_wan.toy.vae import LATENT_CHANNELS, build_vae
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


# Tiny random Wan components (a 2-layer toy-size transformer, the toy VAE and text stack), shared by the
# pipeline and training tests.
TINY_TRANSFORMER = {**get_transformer_config("toy-wan"), "num_layers": 2}


def build_components(seed: int = 0) -> dict:
    """tokenizer, text_encoder, vae, transformer with random weights drawn from `seed`."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = WanTransformer3DModel.from_config(TINY_TRANSFORMER).eval()
    vae = build_vae(seed).eval()
    # Non-trivial latent statistics, so decoding exercises the un-normalisation.
    generator = torch.Generator().manual_seed(seed)
    vae.register_to_config(
        latents_mean=(0.1 * torch.randn(LATENT_CHANNELS, generator=generator)).tolist(),
        latents_std=(1.0 + 0.2 * torch.rand(LATENT_CHANNELS, generator=generator)).tolist(),
    )
    return {
        "tokenizer": build_tokenizer(),
        "text_encoder": build_text_encoder(seed),
        "vae": vae,
        "transformer": transformer,
    }


# Wan2.1-I2V's shape at toy size: 16 latent + 4 mask + 16 image-latent input channels, a CLIP image branch
# (a 2-layer CLIP ViT of width 32 at 32 px, patch 8: 17 tokens) whose K/V projections have the model's width.
I2V_IN_CHANNELS = 36
CLIP_WIDTH = 32
TINY_I2V_TRANSFORMER = {
    **TINY_TRANSFORMER,
    "in_channels": I2V_IN_CHANNELS,
    "image_dim": CLIP_WIDTH,
    "added_kv_proj_dim": TINY_TRANSFORMER["num_attention_heads"] * TINY_TRANSFORMER["attention_head_dim"],
}


def build_i2v_components(seed: int = 0) -> dict:
    """`build_components` for a Wan2.1-I2V-shaped model: the I2V transformer, a tiny CLIP vision encoder and
    its image processor, all random from `seed` (the VAE and text stack as in `build_components`)."""
    components = build_components(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        components["transformer"] = WanTransformer3DModel.from_config(TINY_I2V_TRANSFORMER).eval()
        clip = CLIPVisionConfig(
            hidden_size=CLIP_WIDTH,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        )
        components["image_encoder"] = CLIPVisionModel(clip).eval()
    components["image_processor"] = CLIPImageProcessorPil(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    )
    return components


def conditioning_image(height: int = 80, width: int = 96, seed: int = 0) -> Image.Image:
    """A smooth random RGB image (not the video size, so resizing is exercised)."""
    generator = np.random.default_rng(seed)
    coarse = generator.uniform(0, 255, size=(4, 4, 3)).astype(np.uint8)
    return Image.fromarray(coarse).resize((width, height), Image.BILINEAR)


TI2V_CHANNELS = 48  # Wan2.2-TI2V-5B latent channels


def build_ti2v_components(seed: int = 0) -> dict:
    """The toy text stack with a TI2V-5B-shaped transformer (48 channels in and out) and a narrow Wan2.2 VAE
    (z_dim 48, 2x2 pixel patchify, 4x16x16 compression, residual blocks) of random weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = WanTransformer3DModel.from_config(
            {**TINY_TRANSFORMER, "in_channels": TI2V_CHANNELS, "out_channels": TI2V_CHANNELS}
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


# ---- the original (non-diffusers) Wan release layout ----------------------------------------------------

# diffusers -> original Wan names: the inverse of diffusers' convert_wan_transformer_to_diffusers, written out
# here so the tests do not reuse the code under test. Applied in order.
TO_ORIGINAL = [
    ("condition_embedder.time_embedder.linear_1", "time_embedding.0"),
    ("condition_embedder.time_embedder.linear_2", "time_embedding.2"),
    ("condition_embedder.text_embedder.linear_1", "text_embedding.0"),
    ("condition_embedder.text_embedder.linear_2", "text_embedding.2"),
    ("condition_embedder.time_proj", "time_projection.1"),
    ("attn1", "self_attn"),
    ("attn2", "cross_attn"),
    (".to_out.0.", ".o."),
    (".to_q.", ".q."),
    (".to_k.", ".k."),
    (".to_v.", ".v."),
    ("ffn.net.0.proj", "ffn.0"),
    ("ffn.net.2", "ffn.2"),
    ("norm2", "norm3"),  # the original calls the cross-attention norm norm3
    ("proj_out", "head.head"),
]


def to_original_names(state_dict):
    """`state_dict` in the original Wan names (contiguous copies, as safetensors stores them)."""
    out = {}
    for key, value in state_dict.items():
        name = (
            "head.modulation"
            if key == "scale_shift_table"
            else key.replace("scale_shift_table", "modulation")
        )
        for new, old in TO_ORIGINAL:
            name = name.replace(new, old)
        out[name] = value.clone().contiguous()
    return out


def original_config(transformer, model_type: str = "t2v") -> dict:
    """The config.json the original Wan release writes for `transformer` (its `WanModel` keys), written out
    by hand from the diffusers config (no image branch: Wan2.2's experts and TI2V-5B have none)."""
    c = transformer.config
    return {
        "_class_name": "WanModel",
        "_diffusers_version": "0.33.0",
        "model_type": model_type,
        "dim": c.num_attention_heads * c.attention_head_dim,
        "ffn_dim": c.ffn_dim,
        "freq_dim": c.freq_dim,
        "in_dim": c.in_channels,
        "out_dim": c.out_channels,
        "num_heads": c.num_attention_heads,
        "num_layers": c.num_layers,
        "text_dim": c.text_dim,
        "eps": c.eps,
        "text_len": 512,
    }


def save_original(transformer, folder, model_type: str = "t2v", shards: int = 2) -> Path:
    """Write `transformer` in the original Wan release layout: config.json and the weights in original names,
    split into `shards` index-listed safetensors files as the releases ship them."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = to_original_names(transformer.state_dict())
    names = sorted(state)
    weight_map = {}
    for i in range(shards):
        file = f"diffusion_pytorch_model-{i + 1:05d}-of-{shards:05d}.safetensors"
        save_file({k: state[k] for k in names[i::shards]}, folder / file)
        weight_map.update(dict.fromkeys(names[i::shards], file))
    index = {"metadata": {}, "weight_map": weight_map}
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
    (folder / "config.json").write_text(json.dumps(original_config(transformer, model_type)))
    return folder


def save_original_experts(high, low, folder, model_type: str = "t2v") -> Path:
    """An original Wan2.2 A14B release folder: `high_noise_model/` and `low_noise_model/`, each a transformer
    in the original layout (the VAE, T5 and tokenizer files of the release are not needed to load it)."""
    folder = Path(folder)
    save_original(high, folder / "high_noise_model", model_type)
    save_original(low, folder / "low_noise_model", model_type)
    return folder
