"""Named `WanTransformer3DModel` configurations, config-file reading, and meta-device builds.

A transformer config here is a plain dict of `WanTransformer3DModel.__init__` keyword arguments, complete
(every argument present) and with `patch_size` as a tuple, so two configs compare and hash by value.
"""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from diffusers import WanTransformer3DModel

from pyramidal_wan.errors import CheckpointError, InputError

# Shared by every Wan2.1 text-to-video transformer (diffusers' scripts/convert_wan_to_diffusers.py and the
# Wan-AI/Wan2.1-T2V-*-Diffusers transformer/config.json files).
_WAN21_COMMON: dict[str, Any] = {
    "patch_size": (1, 2, 2),
    "attention_head_dim": 128,
    "in_channels": 16,
    "out_channels": 16,
    "text_dim": 4096,  # umT5-XXL width
    "freq_dim": 256,
    "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads",
    "eps": 1e-6,
    "image_dim": None,  # text-to-video: no CLIP image branch
    "added_kv_proj_dim": None,
    "rope_max_seq_len": 1024,
    "pos_embed_seq_len": None,
}

_WAN_14B: dict[str, Any] = {**_WAN21_COMMON, "num_attention_heads": 40, "ffn_dim": 13824, "num_layers": 40}
# Image-to-video transformers take 36 input channels: 16 noisy latent + 4 first-frame mask + 16 image latent.
_I2V_IN_CHANNELS = 36

# The transformer configs of diffusers' scripts/convert_wan_to_diffusers.py (and the Wan-AI/*-Diffusers
# transformer/config.json files). A two-expert Wan2.2 A14B model has two transformers of one config.
PRESETS: dict[str, dict[str, Any]] = {
    "wan2.1-1.3b": {**_WAN21_COMMON, "num_attention_heads": 12, "ffn_dim": 8960, "num_layers": 30},
    "wan2.1-14b": _WAN_14B,
    # Wan2.1-I2V-14B (480P and 720P share it): a CLIP-image branch (width 1280) with K/V of width 5120.
    "wan2.1-i2v-14b": {
        **_WAN_14B,
        "in_channels": _I2V_IN_CHANNELS,
        "image_dim": 1280,
        "added_kv_proj_dim": 5120,
    },
    # Wan2.2-TI2V-5B: 48-channel latents of the Wan2.2 VAE (4x16x16), no image branch.
    "wan2.2-ti2v-5b": {
        **_WAN21_COMMON,
        "num_attention_heads": 24,
        "ffn_dim": 14336,
        "num_layers": 30,
        "in_channels": 48,
        "out_channels": 48,
    },
    # Wan2.2 A14B: each expert (high- and low-noise) is a Wan2.1-14B-shaped transformer; I2V has no CLIP.
    "wan2.2-t2v-a14b": _WAN_14B,
    "wan2.2-i2v-a14b": {**_WAN_14B, "in_channels": _I2V_IN_CHANNELS},
    # The toy model family (/work/shared/notes/toy-calibration.md): width 128, ~1 M parameters.
    "toy-wan": {
        **_WAN21_COMMON,
        "num_attention_heads": 4,
        "attention_head_dim": 32,
        "text_dim": 32,
        "ffn_dim": 256,
        "num_layers": 4,
    },
    # The rebuilt toy base (docs/toy.md): the same width, 6 blocks and a wider FFN, 1.58 M parameters, for
    # the detail (interior patterns) of the patterned world.
    "toy-wan-6l": {
        **_WAN21_COMMON,
        "num_attention_heads": 4,
        "attention_head_dim": 32,
        "text_dim": 32,
        "ffn_dim": 384,
        "num_layers": 6,
    },
}

# Original Wan2.1 release (`WanModel` config.json) argument defaults, from the Wan2.1 repository's
# `wan/modules/model.py`; release config files list only some of them.
_ORIGINAL_DEFAULTS: dict[str, Any] = {
    "model_type": "t2v",
    "patch_size": (1, 2, 2),
    "in_dim": 16,
    "out_dim": 16,
    "text_dim": 4096,
    "freq_dim": 256,
    "qk_norm": True,
    "cross_attn_norm": True,
    "eps": 1e-6,
}
_ORIGINAL_REQUIRED = ("dim", "ffn_dim", "num_heads", "num_layers")
_ORIGINAL_IGNORED = {"text_len", "window_size"}  # prompt length and the unused local-attention window
# Wan2.1's I2V variant adds a CLIP-image branch (image width 1280) with its own key/value projections.
_I2V_IMAGE_DIM = 1280
# WanModel's model_type: Wan2.1 has t2v and i2v; Wan2.2 adds ti2v (TI2V-5B: text and first-frame image in one
# 48-channel transformer, no image branch).
_ORIGINAL_MODEL_TYPES = ("t2v", "i2v", "ti2v")
# The original Wan2.2 A14B release keeps each expert in its own folder of the original layout, named as the
# Wan2.2 code loads them (`wan/configs/wan_t2v_A14B.py`: high_noise_checkpoint, low_noise_checkpoint);
# diffusers' scripts/convert_wan_to_diffusers.py makes high_noise_model `transformer` and low_noise_model
# `transformer_2`. Wan2.2's WanModel has no CLIP branch: its I2V experts (model_type i2v, in_dim 36) take
# the image as latent channels only, while the same config.json keys describe Wan2.1-I2V with CLIP.
ORIGINAL_EXPERT_FOLDERS = ("high_noise_model", "low_noise_model")


def _init_defaults() -> dict[str, Any]:
    """All `WanTransformer3DModel.__init__` arguments with their defaults."""
    params = inspect.signature(WanTransformer3DModel.__init__).parameters
    return {name: p.default for name, p in params.items() if name != "self"}


def _complete(config: Mapping[str, Any], source: str) -> dict[str, Any]:
    """Fill `config` up to every `WanTransformer3DModel` argument; unknown keys raise."""
    full = _init_defaults()
    unknown = sorted(k for k in config if k not in full and not k.startswith("_"))
    if unknown:
        raise InputError(
            f"{source}: unknown WanTransformer3DModel config keys {unknown}; valid keys are {sorted(full)}"
        )
    full.update({k: v for k, v in config.items() if not k.startswith("_")})
    full["patch_size"] = tuple(int(p) for p in full["patch_size"])
    return full


def is_original_wan_config(config: Mapping[str, Any]) -> bool:
    """True for a config.json of the original Wan2.1 release (`WanModel`: `dim`, `num_heads`, ...)."""
    return config.get("_class_name") == "WanModel" or ("dim" in config and "num_heads" in config)


def original_to_diffusers_config(
    original: Mapping[str, Any], source: str = "config", clip_branch: bool = True
) -> dict[str, Any]:
    """Translate an original Wan2.1 / Wan2.2 `WanModel` config to a complete `WanTransformer3DModel` config.

    Mirrors diffusers' scripts/convert_wan_to_diffusers.py: `dim = num_heads * attention_head_dim`,
    `in_dim/out_dim -> in/out_channels`, `qk_norm=True -> "rms_norm_across_heads"`, and for Wan2.1's `i2v`
    an image branch of width 1280 with key/value projections of width `dim`. `clip_branch=False` reads the
    config of a Wan2.2 expert, whose `i2v` has no image branch (Wan2.2-I2V-A14B).
    """
    cfg = {**_ORIGINAL_DEFAULTS, **{k: v for k, v in original.items() if not k.startswith("_")}}
    missing = [k for k in _ORIGINAL_REQUIRED if k not in cfg]
    if missing:
        raise CheckpointError(f"{source}: original Wan config lacks {missing}; expected a Wan2.1 config.json")
    known = set(_ORIGINAL_DEFAULTS) | set(_ORIGINAL_REQUIRED) | _ORIGINAL_IGNORED
    unknown = sorted(k for k in cfg if k not in known)
    if unknown:
        raise CheckpointError(f"{source}: unknown keys {unknown} in an original Wan config.json")
    if cfg["dim"] % cfg["num_heads"]:
        raise CheckpointError(f"{source}: dim={cfg['dim']} is not a multiple of num_heads={cfg['num_heads']}")
    if cfg["model_type"] not in _ORIGINAL_MODEL_TYPES:
        raise CheckpointError(
            f"{source}: model_type {cfg['model_type']!r} is not supported; expected one of "
            f"{', '.join(_ORIGINAL_MODEL_TYPES)}"
        )
    i2v = cfg["model_type"] == "i2v" and clip_branch
    return _complete(
        {
            "patch_size": cfg["patch_size"],
            "num_attention_heads": cfg["num_heads"],
            "attention_head_dim": cfg["dim"] // cfg["num_heads"],
            "in_channels": cfg["in_dim"],
            "out_channels": cfg["out_dim"],
            "text_dim": cfg["text_dim"],
            "freq_dim": cfg["freq_dim"],
            "ffn_dim": cfg["ffn_dim"],
            "num_layers": cfg["num_layers"],
            "cross_attn_norm": cfg["cross_attn_norm"],
            "qk_norm": "rms_norm_across_heads" if cfg["qk_norm"] else None,
            "eps": cfg["eps"],
            "image_dim": _I2V_IMAGE_DIM if i2v else None,
            "added_kv_proj_dim": cfg["dim"] if i2v else None,
        },
        source,
    )


def read_config_json(path: str | os.PathLike, what: str = "a transformer config.json") -> dict[str, Any]:
    """Read a JSON object from `path`; a missing or malformed file raises a one-line `CheckpointError`.

    `what` names the file in the message ("expected <what>").
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found; expected {what}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path}: not valid JSON ({err}); expected {what}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected {what} (a JSON object), got {type(data).__name__}")
    return data


def config_from_json(data: Mapping[str, Any], source: str, clip_branch: bool = True) -> dict[str, Any]:
    """A complete `WanTransformer3DModel` config from a diffusers or an original-release config dict
    (`clip_branch`: see `original_to_diffusers_config`)."""
    if is_original_wan_config(data):
        return original_to_diffusers_config(data, source, clip_branch)
    class_name = data.get("_class_name", "WanTransformer3DModel")
    if class_name != "WanTransformer3DModel":
        raise CheckpointError(f"{source}: config is for {class_name}; expected WanTransformer3DModel")
    return _complete(data, source)


def read_transformer_config(path: str | os.PathLike) -> dict[str, Any]:
    """A complete `WanTransformer3DModel` config from a config.json file (diffusers or original release); an
    original config inside a Wan2.2 expert folder (`ORIGINAL_EXPERT_FOLDERS`) is read as Wan2.2's WanModel."""
    path = Path(path)
    wan22_expert = path.parent.name in ORIGINAL_EXPERT_FOLDERS
    return config_from_json(read_config_json(path), str(path), clip_branch=not wan22_expert)


def find_transformer_config(folder: str | os.PathLike) -> Path:
    """The transformer config.json inside `folder`: `transformer/config.json` (pipeline), `config.json`, or
    `high_noise_model/config.json` (the original Wan2.2 A14B release; both experts share one architecture,
    which loading checks)."""
    folder = Path(folder)
    candidates = ("transformer", ".", ORIGINAL_EXPERT_FOLDERS[0])
    for candidate in (folder / name / "config.json" for name in candidates):
        if candidate.is_file():
            return candidate
    raise CheckpointError(
        f"{folder}: no transformer/config.json, config.json or {ORIGINAL_EXPERT_FOLDERS[0]}/config.json; "
        "expected a Wan pipeline, transformer or original release folder"
    )


def get_transformer_config(name_or_path: str | os.PathLike | Mapping[str, Any]) -> dict[str, Any]:
    """A complete `WanTransformer3DModel` config from a preset name, a config.json, a folder, or a dict."""
    if isinstance(name_or_path, Mapping):
        return config_from_json(name_or_path, "config")
    text = os.fspath(name_or_path)
    if text in PRESETS:
        return _complete(PRESETS[text], text)
    path = Path(text)
    if path.is_dir():
        return read_transformer_config(find_transformer_config(path))
    if path.is_file():
        return read_transformer_config(path)
    raise InputError(
        f"unknown model {text!r}: not a preset ({', '.join(PRESETS)}), a config.json or a model folder"
    )


def build_on_meta(preset_or_config: str | os.PathLike | Mapping[str, Any]) -> WanTransformer3DModel:
    """The diffusers `WanTransformer3DModel` for a preset or config, with every tensor on the meta device.

    No memory is allocated, so the full-size models can be inspected (shapes, parameter counts, FLOPs).
    """
    config = get_transformer_config(preset_or_config)
    with torch.device("meta"):
        model = WanTransformer3DModel.from_config(config)
    return model.eval()


def count_parameters(model: torch.nn.Module) -> int:
    """Number of parameters of `model` (works on the meta device)."""
    return sum(p.numel() for p in model.parameters())
