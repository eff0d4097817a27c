"""The bundled toy model family: diffusers Wan folders loaded exactly like a Wan2.1 checkpoint.

`assemble_toy_pipeline` puts the toy tokenizer, the frozen toy text encoder, a toy VAE, a scheduler and a
transformer (the toy-wan preset, randomly initialised unless one is given) into one pipeline folder (the
`WanPipeline` layout, with the toy world's video size and an empty negative prompt as its defaults).
Training runs (`pyramidal-wan finetune`) then replace its transformer.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanTransformer3DModel

from pyramidal_wan.models.presets import get_transformer_config
from pyramidal_wan.pipelines import PyramidalWanPipeline
from pyramidal_wan.pyramid import PyramidConfig
from pyramidal_wan.toy.text import build_text_encoder, build_tokenizer
from pyramidal_wan.toy.vae import build_vae, load_vae
from pyramidal_wan.toy.world import DEFAULT_WORLD
from pyramidal_wan.utils.io import atomic_path


def assemble_toy_pipeline(
    out: str | Path,
    vae: str | Path | AutoencoderKLWan | None = None,
    transformer=None,
    pyramid_config: PyramidConfig | None = None,
    seed: int = 0,
) -> Path:
    """Write a pipeline folder from the toy text stack, a VAE (folder, model, or random) and a transformer.

    The text encoder is drawn from `seed` and frozen; VAE and transformer default to random toy models;
    without `pyramid_config` the folder is a plain (non-pyramidal) model.
    """
    if vae is None:
        vae = build_vae(seed)
    elif not isinstance(vae, AutoencoderKLWan):
        vae = load_vae(vae)
    if transformer is None:
        torch.manual_seed(seed)
        transformer = WanTransformer3DModel(**get_transformer_config("toy-wan"))
    pipe = PyramidalWanPipeline(
        tokenizer=build_tokenizer(),
        text_encoder=build_text_encoder(seed),
        vae=vae,
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        pyramid_config=pyramid_config,
        default_num_frames=DEFAULT_WORLD.num_frames,
        default_height=DEFAULT_WORLD.height,
        default_width=DEFAULT_WORLD.width,
        default_negative_prompt="",
    )
    with atomic_path(out) as tmp:
        pipe.save_pretrained(tmp)
        if pyramid_config is None:  # a plain model carries no pyramid_config.json
            (tmp / "pyramid_config.json").unlink(missing_ok=True)
    return Path(out)
