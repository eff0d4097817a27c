"""Tiny random Wan components for pipeline tests: a 2-layer toy-size transformer, the toy VAE and text stack.

Everything is built in code under fixed seeds (nothing is downloaded). 17x64x64 videos map to 16x5x16x16
latents (toy VAE: 4x time, 4x space), and three (2, 2, 2) stages to 320 / 48 / 8 transformer tokens.
"""

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, WanTransformer3DModel

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
