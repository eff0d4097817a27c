"""The bundled toy model family: diffusers Wan folders loaded exactly like a Wan2.1 checkpoint.

`assemble_toy_pipeline` puts the toy tokenizer, the frozen toy text encoder, a toy VAE, a scheduler and a
transformer (the toy-wan preset, randomly initialised unless one is given) into one pipeline folder (the
`WanPipeline` layout, with the toy world's video size and an empty negative prompt as its defaults).
Training runs (`pyramidal-wan finetune`) then replace its transformer.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import torch
from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanTransformer3DModel

from pyramidal_wan.errors import CheckpointError, InputError
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


# Components every member of the bundled family shares: stored once under `shared/`, linked from each member.
SHARED_COMPONENTS = ("tokenizer", "text_encoder", "vae", "scheduler")


def bundle_member(model: str | Path, name: str, into: str | Path, vae: str | Path | None = None) -> Path:
    """Copy a trained model folder into the bundled family `into/name`, sharing the common components.

    The member keeps its own transformer, `model_index.json` and `pyramid_config.json`; tokenizer, text
    encoder, VAE and scheduler live once in `into/shared/` and are relative symlinks, which keeps the family
    small. A model whose components differ from the family's is refused, except that `vae` may bring a newer
    decoder of the same encoder (the toy VAE's decoder-only phase): it replaces the shared VAE once its
    encoder is checked to produce the latents every member was trained on.
    """
    model, into = Path(model), Path(into)
    if not (model / "model_index.json").is_file():
        raise CheckpointError(f"{model} is not a diffusers pipeline folder (no model_index.json)")
    if not name or "/" in name or name == "shared":
        raise InputError(f"member name {name!r} must be a plain folder name other than 'shared'")
    shared = into / "shared"
    if vae is not None:
        _check_same_encoder(load_vae(vae), load_vae(model / "vae"), f"{vae} and {model}/vae")
    if shared.is_dir():
        for component in SHARED_COMPONENTS:
            if component == "vae":
                _check_same_encoder(
                    load_vae(model / "vae"), load_vae(shared / "vae"), f"{model} and {shared}"
                )
            elif _digest(model / component) != _digest(shared / component):
                raise InputError(
                    f"{model}/{component} differs from the bundled family's {shared / component}: "
                    "bundle members trained from the same toy skeleton"
                )
    else:
        with atomic_path(shared) as tmp:
            tmp.mkdir()
            for component in SHARED_COMPONENTS:
                shutil.copytree(model / component, tmp / component)
    if vae is not None:
        with atomic_path(shared / "vae") as tmp:
            shutil.copytree(vae, tmp)
    with atomic_path(into / name) as tmp:
        tmp.mkdir()
        for item in model.iterdir():
            if item.name in SHARED_COMPONENTS or item.name.startswith("."):
                continue
            (shutil.copytree if item.is_dir() else shutil.copy2)(item, tmp / item.name)
        for component in SHARED_COMPONENTS:
            (tmp / component).symlink_to(Path("..") / "shared" / component, target_is_directory=True)
    return into / name


def _digest(folder: Path) -> str:
    """SHA-256 over a folder's relative file names and contents."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _check_same_encoder(a: AutoencoderKLWan, b: AutoencoderKLWan, what: str) -> None:
    """Raise unless `a` and `b` give the same normalised latents (encoder, quant_conv, latent statistics)."""
    sa, sb = a.state_dict(), b.state_dict()
    keys = [k for k in sa if k.startswith(("encoder.", "quant_conv."))]
    same = (
        keys
        and all(k in sb and torch.equal(sa[k], sb[k]) for k in keys)
        and list(a.config.latents_mean) == list(b.config.latents_mean)
        and list(a.config.latents_std) == list(b.config.latents_std)
    )
    if not same:
        raise InputError(
            f"{what} encode differently (encoder weights or latent statistics): a model only works with "
            "the VAE encoder it was trained on"
        )
