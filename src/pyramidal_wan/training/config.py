"""Training configuration: typed dataclasses, one home per default, YAML files with `--key=value` overrides.

A config file has sections `model`, `data`, `train` and `objective`; every key is optional and unknown keys
are rejected. Overrides use dotted names: `--train.lr=3e-4 --objective.name=pyramidal`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from pyramidal_wan.errors import InputError


@dataclass
class ModelConfig:
    init: str = "toy-wan"  # a preset name (random init) or a diffusers Wan folder / transformer folder
    pipeline: str | None = (
        None  # the Wan folder whose tokenizer/text_encoder/vae/scheduler a checkpoint ships with
    )
    lora_rank: int = 0  # > 0 trains a peft LoRA of this rank instead of all parameters
    lora_alpha: float | None = None  # None: equal to the rank
    gradient_checkpointing: bool = False


@dataclass
class DataConfig:
    cache: str = ""  # a folder written by `pyramidal-wan prepare-data`
    text_dropout: float = (
        0.1  # probability of replacing the prompt by the empty prompt (trains the CFG branch)
    )


@dataclass
class TrainConfig:
    out: str = "runs/train"  # checkpoints, logs and the resolved config go here
    steps: int = 1000
    batch_size: int = 16  # per process; pyramidal objectives split it evenly over stages
    lr: float = 1e-4
    warmup: int = 100  # linear warm-up steps, then constant
    weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 1.0
    ema: float = 0.0  # 0 disables the EMA copy
    precision: str = "no"  # accelerate mixed precision: "no", "bf16", "fp16"
    seed: int = 0
    checkpoint_every: int = 500
    log_every: int = 50
    threads: int = 0  # torch intra-op threads on CPU; 0 leaves torch's default
    critic_lr: float = 2e-6  # learning rate of the critic group (fake score / discriminator heads)
    sharding: str = "none"  # "none" (one full copy per process, DDP) or "fsdp2" (training/sharding.py)


@dataclass
class ObjectiveConfig:
    name: str = "flow-matching"
    stages: tuple[int, ...] = (0,)  # stages trained by flow-matching objectives (multires-fm: all)
    timestep_sampling: str = "uniform"  # "uniform" or "logit-normal" sigma (flow matching)
    logit_mean: float = 0.0
    logit_std: float = 1.0
    shift: float = 1.0  # sigma -> shift sigma / (1 + (shift - 1) sigma) after sampling
    num_stages: int = 3  # pyramid of pyramidal objectives
    clean_ends: tuple[float, ...] | None = None
    wavelet: str = "haar"
    noisy_end_signal: str = "upsampled"  # "upsampled" (R_up x0^(i+1)) or "projected" (P x0^(i))
    dist_weight: float = 1.0  # lambda_dist of L_dist against the frozen original model (0 disables)
    dist_stage_weights: tuple[float, ...] | None = None  # per stage; None: 1 for i < S-1, 0 for the lowest
    # Step distillation (METHOD.md 6-8); the student is model.init.
    schedule: str = "2-2-1"  # the few-step student's steps per stage, lowest resolution first
    teacher: str | None = None  # frozen teacher folder; None: model.init (DMD-PT: the student's base)
    fake: str | None = None  # fake-score initialisation; None: the teacher
    guidance_scale: float = 5.0  # teacher CFG, standard form uncond + w (cond - uncond)
    critic_ratio: int = 5  # critic (fake score / discriminator) updates per generator update
    teach_weight: float = 0.01  # L_teach: MSE of the student's x0 to the data latent (data-noised inputs)
    tau_range: tuple[float, float] = (0.02, 0.98)  # re-noising rho_tau ~ U(range) within the stage
    pt_form: str = "eps"  # DMD-PT detail-band weight: "eps" (gamma_1) or "x0" (1 / D)
    student_input: str = "data"  # "data" (noised cached latents) or "backward" (simulated from noise)
    adv_blocks: tuple[int, ...] | None = None  # hooked blocks; None: floor(L/2)-1, floor(3L/4)-1, L-1
    adv_weight: float = 1.0  # lambda_adv
    rec_weight: float = 2.0  # lambda_rec
    rec_steps: int = 10  # Euler steps of the reconstruction teacher per student step
    head_channels: int = 256  # discriminator head width
    stage_embedding: bool = False  # PPF (ppf-fm): learned per-stage timestep-embedding offset, zero at init


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _convert(value, annotation, name: str):
    """Coerce a YAML / command-line value to the field's annotated type, or raise InputError."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
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
        item = args[0]
        return tuple(_convert(v, item, name) for v in value)
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
        if annotation is int and float(value) != int(value):
            raise InputError(f"{name} must be an integer, got {value!r}")
        return annotation(value)
    if annotation is str:
        return str(value)
    return value


def _apply(section, values: dict, prefix: str) -> None:
    hints = typing.get_type_hints(type(section))
    known = {f.name for f in dataclasses.fields(section)}
    for key, value in values.items():
        if key not in known:
            raise InputError(f"unknown config key {prefix}{key}; valid keys: {', '.join(sorted(known))}")
        setattr(section, key, _convert(value, hints[key], prefix + key))


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """A Config from a YAML file (optional) plus `section.key=value` overrides; unknown keys raise."""
    config = Config()
    raw = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise InputError(f"config file {path} does not exist")
        raw = yaml.safe_load(path.read_text()) or {}
        if not isinstance(raw, dict):
            raise InputError(f"config file {path} must hold a mapping of sections")
    for item in overrides or []:
        key, sep, value = item.lstrip("-").partition("=")
        section, dot, name = key.partition(".")
        if not sep or not dot:
            raise InputError(f"override {item!r} must look like section.key=value, e.g. train.lr=1e-4")
        raw.setdefault(section, {})[name] = value
    sections = {f.name for f in dataclasses.fields(config)}
    for section, values in raw.items():
        if section not in sections:
            raise InputError(
                f"unknown config section {section!r}; valid sections: {', '.join(sorted(sections))}"
            )
        if not isinstance(values, dict):
            raise InputError(f"config section {section!r} must be a mapping")
        _apply(getattr(config, section), values, f"{section}.")
    return config


def save_config(config: Config, path: str | Path) -> None:
    from pyramidal_wan.utils.io import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(json.loads(json.dumps(config.to_dict())), sort_keys=False))
