"""The bundled toy model family: diffusers Wan folders loaded exactly like a Wan2.1 checkpoint.

`assemble_toy_pipeline` puts the toy tokenizer, the frozen toy text encoder, a trained toy VAE, a
scheduler and a transformer (the toy-wan preset, randomly initialised unless one is given) into one
`WanPipeline` folder. Training runs (`pyramidal-wan finetune`) then replace its transformer.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel

from pyramidal_wan.models.presets import get_transformer_config
from pyramidal_wan.toy.text import build_text_encoder, build_tokenizer
from pyramidal_wan.toy.vae import load_vae
from pyramidal_wan.utils.io import atomic_path

REPO_ROOT = Path(__file__).resolve().parents[3]
BUNDLED = REPO_ROOT / "models" / "toy"  # the committed family: models/toy/<member>/


def assemble_toy_pipeline(out: str | Path, vae: str | Path, transformer=None, seed: int = 0) -> Path:
    """Write a WanPipeline folder from the toy text stack, the VAE folder `vae` and a transformer.

    The text encoder is drawn from `seed` and frozen; the transformer defaults to a random toy-wan.
    """
    if transformer is None:
        torch.manual_seed(seed)
        transformer = WanTransformer3DModel(**get_transformer_config("toy-wan"))
    pipe = WanPipeline(
        tokenizer=build_tokenizer(),
        text_encoder=build_text_encoder(seed),
        vae=load_vae(vae),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        transformer=transformer,
    )
    with atomic_path(out) as tmp:
        pipe.save_pretrained(tmp)
    return Path(out)
