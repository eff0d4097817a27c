"""Tiny random Wan components for pipeline tests: a 2-layer toy-size transformer, the toy VAE and text stack.

Everything is built in code under fixed seeds (nothing is downloaded). 17x64x64 videos map to 16x5x16x16
latents (toy VAE: 4x time, 4x space), and three (2, 2, 2) stages to 320 / 48 / 8 transformer tokens.
"""

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, WanTransformer3DModel
from PIL import Image
from transformers import CLIPImageProcessorPil, CLIPVisionConfig, CLIPVisionModel

from pyramidal_wan.models.ppf import PPFTransformer
from pyramidal_wan.models.presets import get_transformer_config
from pyramidal_wan.pipelines import PyramidalWanPipeline
from pyramidal_wan.pyramid import PyramidConfig
from pyramidal_wan.toy.text import build_text_encoder, build_tokenizer
from pyramidal_wan.toy.vae import LATENT_CHANNELS, build_vae

TINY_TRANSFORMER = {**get_transformer_config("toy-wan"), "num_layers": 2}
SIZE = {"num_frames": 17, "height": 64, "width": 64}
PROMPT = "a red circle moving left on a dark blue background"


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


def build_ppf_pipeline(seed: int = 0, **sampling) -> PyramidalWanPipeline:
    """`build_pipeline` as a patch-pyramid (PPF) model: the transformer in freshly initialised stage patch
    layers (METHOD.md 9, default 3 stages), sampled with `PyramidConfig(kind="patch", **sampling)`."""
    config = PyramidConfig(kind="patch", **sampling)
    components = build_components(seed)
    components["transformer"] = PPFTransformer(components["transformer"], config)
    return build_pipeline(config, seed, components)


def build_pipeline(
    pyramid_config: PyramidConfig | None = None, seed: int = 0, components: dict | None = None
) -> PyramidalWanPipeline:
    """A toy-size pipeline whose defaults are 17x64x64 and an empty negative prompt."""
    pipe = PyramidalWanPipeline(
        **(build_components(seed) if components is None else components),
        pyramid_config=pyramid_config,
        default_num_frames=SIZE["num_frames"],
        default_height=SIZE["height"],
        default_width=SIZE["width"],
        default_negative_prompt="",
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


class BaselineGridScheduler(FlowMatchEulerDiscreteScheduler):
    """Flow-matching Euler whose `set_timesteps(N)` uses the project's baseline grid.

    diffusers' default grid is linspace(1, 1/1000, N); the project's is shift(1 - k/N), k = 0..N, ending
    exactly at 0. Given the unshifted levels 1 - k/N (k < N) as `sigmas`, the scheduler applies the same
    shift s r / (1 + (s - 1) r) and appends the terminal 0 itself.
    """

    def set_timesteps(self, num_inference_steps=None, device=None, **kwargs):
        levels = [1.0 - k / num_inference_steps for k in range(num_inference_steps)]
        super().set_timesteps(sigmas=levels, device=device)
