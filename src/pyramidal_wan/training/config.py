"""Training configuration: typed dataclasses, one home per default, YAML files with `--key=value` overrides.

A config file has sections `model`, `data`, `train`, `pyramid` (the `PyramidConfig` stage layout the run
trains and exports) and `objective` (`name`, then that method's own options, see `training.methods`);
every key is optional and unknown keys are rejected. Overrides use dotted names:
`--train.lr=3e-4 --objective.name=pyramidal --pyramid.num_stages=2`.

Every value is checked here, at load, by its field's type: numbers must be finite, `Annotated` ranges
(`PositiveInt`, `Probability`, ...) and `Literal` choices hold, so a bad value is a one-line `InputError`
before any work starts rather than a failure deep in training.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import yaml

from pyramidal_wan.errors import InputError
from pyramidal_wan.pyramid.config import PyramidConfig
from pyramidal_wan.training.methods import METHODS
from pyramidal_wan.training.objectives import ObjectiveOptions
from pyramidal_wan.utils.ranges import (
    Decay,
    NonNegative,
    NonNegativeInt,
    Positive,
    PositiveInt,
    Probability,
    Range,
)


@dataclass
class ModelConfig:
    init: str = "toy-wan"  # a preset name (random init) or a diffusers Wan folder / transformer folder
    pipeline: str | None = (
        None  # the Wan folder whose tokenizer/text_encoder/vae/scheduler a checkpoint ships with
    )
    lora_rank: NonNegativeInt = 0  # > 0 trains a peft LoRA of this rank instead of all parameters
    lora_alpha: Positive | None = None  # None: equal to the rank
    gradient_checkpointing: bool = False
    # A two-expert (Wan2.2 A14B) model.init: the experts that train, "high" (`transformer`, sigma >=
    # boundary_ratio), "low" (`transformer_2`) or both; each sample's sigma picks its expert as in sampling.
    expert: Literal["both", "high", "low"] = "both"


@dataclass
class DataConfig:
    cache: str = ""  # a folder written by `pyramidal-wan prepare-data`
    text_dropout: Probability = (
        0.1  # probability of replacing the prompt by the empty prompt (trains the CFG branch)
    )
    # Probability that a sample of a clean-first-frame model (Wan2.2-TI2V-5B, expand_timesteps) trains
    # image-to-video: latent frame 0 is the clean first-frame latent at timestep 0 and gets no loss; the
    # other samples train text-to-video. TI2V is one model of both tasks (Wan2.2 trains it on both), so the
    # task is drawn per sample like text dropout, for every objective, rather than fixed by the method or
    # the cache (whose pixel-space stage latents already begin with the image latents: nothing extra cached).
    image_to_video: Probability = 0.0


@dataclass
class TrainConfig:
    out: str = "runs/train"  # checkpoints, logs and the resolved config go here
    steps: PositiveInt = 1000
    batch_size: PositiveInt = 16  # per process; pyramidal objectives split it evenly over stages
    lr: Positive = 1e-4
    warmup: NonNegativeInt = 100  # linear warm-up steps, then constant
    weight_decay: NonNegative = 1e-4
    betas: tuple[Decay, Decay] = (0.9, 0.999)
    grad_clip: NonNegative = 1.0  # 0 disables clipping
    ema: Decay = 0.0  # 0 disables the EMA copy
    precision: Literal["no", "bf16", "fp16"] = "no"  # accelerate mixed precision
    seed: int = 0
    checkpoint_every: PositiveInt = 500
    keep_checkpoints: NonNegativeInt = 1  # older complete checkpoints kept beside the newest
    log_every: PositiveInt = 50
    threads: NonNegativeInt = 0  # torch intra-op threads on CPU; 0 leaves torch's default
    critic_lr: Positive = 2e-6  # learning rate of the critic group (fake score / discriminator heads)
    sharding: Literal["none", "fsdp2"] = "none"  # one full copy per process (DDP), or training/sharding.py


# Keys of the stage layout that configs used to give under `objective:` (before the `pyramid:` section);
# `load_config` moves them there, so older configs keep loading.
LEGACY_LAYOUT_KEYS = ("num_stages", "clean_ends", "wavelet", "stage_embedding")
# Every field of the one objective config runs saved in their config.yaml before options were split by
# method; such a full dump lists the fields its method ignored too, so those are dropped when it loads.
LEGACY_OBJECTIVE_DUMP = frozenset(
    {
        *("name", "stages", "timestep_sampling", "logit_mean", "logit_std", "shift", "num_stages"),
        *("clean_ends", "wavelet", "noisy_end_signal", "dist_weight", "dist_stage_weights", "schedule"),
        *("teacher", "fake", "guidance_scale", "critic_ratio", "teach_weight", "tau_range", "pt_form"),
        *("student_input", "adv_blocks", "adv_weight", "rec_weight", "rec_steps", "head_channels"),
        "stage_embedding",
    }
)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    pyramid: PyramidConfig = field(default_factory=PyramidConfig)  # the stage layout a run trains
    objective: ObjectiveOptions = field(default_factory=ObjectiveOptions)

    def to_dict(self) -> dict:
        d = {
            name: dataclasses.asdict(getattr(self, name)) for name in ("model", "data", "train", "objective")
        }
        return {**d, "pyramid": self.pyramid.to_dict()}


def _convert(value, annotation, name: str):
    """Coerce a YAML / command-line value to the field's annotated type and check it, or raise InputError."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is Annotated:
        value = _convert(value, args[0], name)
        for rule in annotation.__metadata__:
            if isinstance(rule, Range):
                rule.check(value, name)
        return value
    if origin is Literal:
        if value is False and "no" in args:  # YAML 1.1 reads the word no as false
            value = "no"
        if value not in args:
            raise InputError(f"{name} must be one of {', '.join(map(str, args))}, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        is_none = value is None or (isinstance(value, str) and value.lower() in ("none", "null"))
        if is_none and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(value, inner[0], name)
    if (
        isinstance(value, str)
        and annotation is not str
        and (origin is tuple or annotation in (int, float, bool))
    ):
        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError as err:
            raise InputError(f"{name}: cannot parse {value!r}") from err
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            value = [value]
        if Ellipsis not in args and len(value) != len(args):
            raise InputError(f"{name} needs {len(args)} values, got {len(value)}: {value!r}")
        return tuple(_convert(v, args[0], f"{name}[{i}]") for i, v in enumerate(value))
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise InputError(f"{name} must be true or false, got {value!r}")
    if annotation in (int, float):
        if isinstance(value, str):
            # YAML 1.1 reads 1e-4 (no dot) as a string; Python's float syntax is what users mean.
            with contextlib.suppress(ValueError):
                value = float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InputError(f"{name} must be a number, got {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise InputError(f"{name} must be a finite number, got {value!r}")
        if annotation is int and isinstance(value, float) and not value.is_integer():
            raise InputError(f"{name} must be an integer, got {value!r}")
        return annotation(value)
    if annotation is str:
        if isinstance(value, (dict, list)):
            raise InputError(f"{name} must be a single value, got {value!r}")
        return str(value)
    return value


def _apply(section, values: dict, prefix: str) -> None:
    hints = typing.get_type_hints(type(section), include_extras=True)
    known = {f.name for f in dataclasses.fields(section)}
    for key, value in values.items():
        if key not in known:
            raise InputError(f"unknown config key {prefix}{key}; valid keys: {', '.join(sorted(known))}")
        setattr(section, key, _convert(value, hints[key], prefix + key))


def _read_raw(path, overrides) -> dict:
    """The sections of a YAML file (optional) with `section.key=value` overrides applied, as raw values."""
    raw = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise InputError(f"config file {path} does not exist")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as err:
            where = getattr(err, "problem_mark", None)
            at = f" at line {where.line + 1}, column {where.column + 1}" if where is not None else ""
            problem = getattr(err, "problem", None) or type(err).__name__
            raise InputError(f"config file {path} is not valid YAML ({problem}{at}); fix the file") from None
        if not isinstance(raw, dict):
            raise InputError(f"config file {path} must hold a mapping of sections")
    sections = {f.name for f in dataclasses.fields(Config)}
    for section, values in raw.items():
        if section not in sections:
            raise InputError(
                f"unknown config section {section!r}; valid sections: {', '.join(sorted(sections))}"
            )
        if not isinstance(values, dict):
            raise InputError(f"config section {section!r} must be a mapping")
    for item in overrides or []:
        key, sep, value = item.lstrip("-").partition("=")
        section, dot, name = key.partition(".")
        if not sep or not dot:
            raise InputError(f"override {item!r} must look like section.key=value, e.g. train.lr=1e-4")
        if section not in sections:
            raise InputError(
                f"unknown config section {section!r}; valid sections: {', '.join(sorted(sections))}"
            )
        raw.setdefault(section, {})[name] = value
    return raw


def _pyramid(values: dict) -> PyramidConfig:
    """The `pyramid:` section as a PyramidConfig (values coerced to its field types)."""
    hints = typing.get_type_hints(PyramidConfig, include_extras=True)
    known = {f.name for f in dataclasses.fields(PyramidConfig)}
    converted = {}
    for key, value in values.items():
        if key not in known:
            raise InputError(f"unknown config key pyramid.{key}; valid keys: {', '.join(sorted(known))}")
        converted[key] = _convert(value, hints[key], f"pyramid.{key}")
    return PyramidConfig(**converted)


def _objective(values: dict) -> ObjectiveOptions:
    """The `objective:` section as the named method's options; a key the method does not have raises."""
    name = str(values.get("name", ObjectiveOptions.name))
    if name not in METHODS:
        raise InputError(f"unknown objective {name!r}; choose one of {', '.join(METHODS)}")
    options = METHODS[name].options(name=name)
    hints = typing.get_type_hints(type(options), include_extras=True)
    known = {f.name for f in dataclasses.fields(options)}
    for key, value in values.items():
        if key not in known:
            owners = [
                m for m, spec in METHODS.items() if key in {f.name for f in dataclasses.fields(spec.options)}
            ]
            where = f" (an option of {', '.join(owners)})" if owners else ""
            raise InputError(
                f"objective.{key} is not an option of {name}{where}; {name}'s options: "
                f"{', '.join(sorted(known - {'name'})) or 'none'}"
            )
        setattr(options, key, _convert(value, hints[key], f"objective.{key}"))
    return options


def load_config(
    path: str | Path | None = None, overrides: list[str] | None = None, method: str | None = None
) -> Config:
    """A Config from a YAML file (optional) plus `section.key=value` overrides; unknown keys raise.

    `method` (the `distill --method` flag) names the objective; a config naming another one raises.
    Configs written before the `pyramid:` section (stage-layout keys under `objective:`) still load: those
    keys move to `pyramid:`, and a PPF method's layout becomes kind "patch"; an older run's saved
    config.yaml (every field of the old single objective config) keeps only its method's options.
    """
    raw = _read_raw(path, overrides)
    objective = dict(raw.get("objective", {}))
    if method is not None:
        named = objective.get("name")
        if named is not None and named != method and named in METHODS and METHODS[named].few_step:
            raise InputError(f"{path} is a {named} config but --method is {method}; pass a {method} config")
        objective["name"] = method
    pyramid = dict(raw.get("pyramid", {}))
    name = objective.get("name", ObjectiveOptions.name)
    if set(objective) == LEGACY_OBJECTIVE_DUMP and name in METHODS:  # an older run's saved config.yaml
        keep = {f.name for f in dataclasses.fields(METHODS[name].options)} | set(LEGACY_LAYOUT_KEYS)
        objective = {k: v for k, v in objective.items() if k in keep}
    legacy = {k: objective.pop(k) for k in LEGACY_LAYOUT_KEYS if k in objective}
    if legacy:
        pyramid = {**legacy, **pyramid}
        if name in METHODS and METHODS[name].kind == "patch":
            pyramid.setdefault("kind", "patch")
    config = Config(pyramid=_pyramid(pyramid), objective=_objective(objective))
    for section in ("model", "data", "train"):
        _apply(getattr(config, section), raw.get(section, {}), f"{section}.")
    return config


def save_config(config: Config, path: str | Path) -> None:
    from pyramidal_wan.utils.io import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(json.loads(json.dumps(config.to_dict())), sort_keys=False))
