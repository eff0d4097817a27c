"""`pyramid_config.json`: the pyramid settings saved beside a model's weights.

A model folder (a diffusers Wan pipeline folder, or a transformer folder) that carries this file is
sampled as it says: stages, factors, stage boundaries, operator, sampler kind, default schedule, shift and
guidance. A folder without it is a **plain (non-pyramidal) Wan model**: it gets `PLAIN_MODEL_CONFIG`,
which keeps the default 3-stage geometry available (so a pyramidal schedule can still be asked for
explicitly) but samples with the baseline schedule 0-0-50 (plain Wan: 50 Euler steps at full resolution,
shift 3, CFG 5) unless told otherwise.
"""

from __future__ import annotations

import os
from pathlib import Path

from pyramidal_wan.errors import CheckpointError, InputError
from pyramidal_wan.models.presets import read_config_json
from pyramidal_wan.pyramid.config import PyramidConfig
from pyramidal_wan.utils.io import write_json

PYRAMID_CONFIG_NAME = "pyramid_config.json"

# What a folder without pyramid_config.json means: plain Wan2.1 sampling by default (METHOD.md 5.4).
PLAIN_MODEL_CONFIG = PyramidConfig(default_schedule="0-0-50")


def save_pyramid_config(folder: str | os.PathLike, config: PyramidConfig) -> Path:
    """Write `config` to `folder/pyramid_config.json` atomically; returns the file's path."""
    path = Path(folder) / PYRAMID_CONFIG_NAME
    write_json(path, config.to_dict())
    return path


def load_pyramid_config(folder: str | os.PathLike) -> PyramidConfig | None:
    """The `PyramidConfig` saved in `folder`, or None when the folder has no `pyramid_config.json`.

    A file that is not valid JSON, or whose values do not make a valid pyramid, raises a one-line
    `CheckpointError` naming the file.
    """
    path = Path(folder) / PYRAMID_CONFIG_NAME
    if not path.exists():
        return None
    data = read_config_json(path, "a pyramid_config.json (PyramidConfig fields)")
    try:
        return PyramidConfig.from_dict(data)
    except (InputError, TypeError, ValueError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(
            f"{path}: invalid pyramid config ({reason}); re-save it with save_pyramid_config"
        ) from None


def pyramid_config_or_plain(folder: str | os.PathLike) -> PyramidConfig:
    """The folder's `PyramidConfig`, or `PLAIN_MODEL_CONFIG` for a plain Wan model folder."""
    config = load_pyramid_config(folder)
    return PLAIN_MODEL_CONFIG if config is None else config
