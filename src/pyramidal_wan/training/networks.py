"""The networks objectives train or read, from a run's model settings: the student, frozen copies, LoRA.

Loading a transformer (a preset or a folder) is `models.loading`'s; this module decides what a run trains.
A two-expert (Wan2.2 A14B) folder becomes an `ExpertVelocity` of both experts, each training sample's sigma
picking the expert that predicts it as in sampling; `model.expert` says which experts train, the other one
stays frozen and is exported unchanged. The original A14B release (`high_noise_model/`, `low_noise_model/`)
switches at the boundary_ratio of `model.pipeline`, the same model's diffusers folder, which the release
itself does not record.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from pyramidal_wan.errors import InputError
from pyramidal_wan.models.denoiser import WanVelocity
from pyramidal_wan.models.loading import (
    check_expert_configs,
    folder_boundary_ratio,
    load_experts,
    load_transformer_for,
    original_expert_folders,
    read_model_index,
)
from pyramidal_wan.models.presets import PRESETS, get_transformer_config
from pyramidal_wan.models.wan_family import EXPERT_COMPONENT, ExpertVelocity, image_mode

# LoRA targets (METHOD.md 7.2): attention projections of both attention layers and the FFN.
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "ffn.net.0.proj", "ffn.net.2"]


def frozen(model: torch.nn.Module) -> torch.nn.Module:
    """A no-grad eval-mode copy (a frozen teacher or original model)."""
    return copy.deepcopy(model).requires_grad_(False).eval()


def add_lora(transformer, rank: int, alpha: float | None = None):
    """Freeze the base weights and attach a peft LoRA adapter to the METHOD.md 7.2 targets."""
    from peft import LoraConfig

    transformer.requires_grad_(False)
    transformer.add_adapter(LoraConfig(r=rank, lora_alpha=alpha or rank, target_modules=LORA_TARGETS))
    return transformer


# `model.expert` of a two-expert folder: the model folder component of each expert.
EXPERTS = {"high": "transformer", "low": EXPERT_COMPONENT}


def original_experts_boundary(init: str, pipeline: str | None, key: str = "model.init") -> float | None:
    """The boundary_ratio an original Wan2.2 A14B release `init` switches at: that of `pipeline`
    (model.pipeline), the same model's two-expert diffusers folder, whose components the run also exports
    with. None for any other `init` (a diffusers two-expert folder records its own). Reads JSON only.

    The release does not record the boundary (the Wan2.2 code sets it per task), so it is never guessed: a
    missing or one-transformer model.pipeline, or one whose experts are another architecture (I2V's 0.9 for
    a T2V model), is refused.
    """
    if init in PRESETS or not Path(init).is_dir() or original_expert_folders(init) is None:
        return None
    ratio = None if pipeline is None else folder_boundary_ratio(pipeline)
    if ratio is None:
        raise InputError(
            f"{key} {init} is the original Wan2.2 A14B release, which does not record where the low-noise "
            "expert takes over; set model.pipeline to the two-expert diffusers folder of the same model "
            "(e.g. Wan2.2-T2V-A14B-Diffusers), whose boundary_ratio it uses"
        )
    ours, theirs = check_expert_configs(init), get_transformer_config(pipeline)
    differing = [k for k in ours if ours[k] != theirs.get(k)]
    if differing:
        k = differing[0]
        raise InputError(
            f"model.pipeline {pipeline} is another model than {key} {init} ({k} {theirs.get(k)} vs "
            f"{ours[k]}), so its boundary_ratio may not be this model's; give the same model's diffusers "
            "folder"
        )
    return ratio


def sets_expand_timesteps(folder: str | None) -> bool:
    """Whether `folder` is a diffusers pipeline folder whose model_index.json sets expand_timesteps (the
    clean first latent frame of Wan2.2-TI2V-5B's image-to-video); reads JSON only."""
    if folder is None or folder in PRESETS or not Path(folder, "model_index.json").is_file():
        return False
    return bool(read_model_index(folder).get("expand_timesteps", False))


def exported_image_mode(model_config) -> str | None:
    """How the model a run exports takes an image (`wan_family.image_mode`): model.init's transformer config
    with the expand_timesteps of the model_index.json the export copies (model.pipeline, else model.init).
    A TI2V-5B transformer folder or preset alone records no expand_timesteps: its export samples
    text-to-video only. Reads JSON only."""
    base = model_config.pipeline or model_config.init
    return image_mode(get_transformer_config(model_config.init), sets_expand_timesteps(base))


def velocity_network(
    init: str, seed: int, load=load_transformer_for, pipeline: str | None = None
) -> WanVelocity | ExpertVelocity:
    """The velocity model of `init`: one transformer (`load(init, seed)`), or both experts of a two-expert
    folder switched at its boundary_ratio (an original-layout release: at `pipeline`'s, see
    `original_experts_boundary`)."""
    boundary = original_experts_boundary(init, pipeline)
    if boundary is None and folder_boundary_ratio(init) is None:
        return WanVelocity(load(init, seed))
    high, low, ratio = load_experts(init, boundary)
    return ExpertVelocity(WanVelocity(high), WanVelocity(low), ratio)


def transformer_paths(net: torch.nn.Module) -> dict[str, str]:
    """Where each transformer of a velocity model sits in it, by model folder component: {"transformer":
    "transformer"}, or {"transformer": "high.transformer", "transformer_2": "low.transformer"}."""
    net = getattr(net, "module", net)  # unwrap DDP
    if isinstance(net, ExpertVelocity):
        return {"transformer": "high.transformer", EXPERT_COMPONENT: "low.transformer"}
    return {"transformer": "transformer"}


def trained_experts(model_config, two_experts: bool) -> tuple[str, ...]:
    """The experts `model.expert` trains (("high", "low") for "both"); raises for a setting the model does
    not have: a single expert of a one-transformer model, LoRA on two experts, or a one-transformer
    `model.pipeline` (the export's model_index.json) for two experts."""
    if not two_experts:
        if model_config.expert != "both":
            raise InputError(
                f"model.expert={model_config.expert} needs a two-expert (Wan2.2 A14B) model.init; "
                f"{model_config.init} has one transformer: unset model.expert"
            )
        return ()
    if model_config.lora_rank > 0:
        raise InputError(
            "LoRA on a two-expert model is not supported yet; set model.lora_rank=0 (full-parameter training)"
        )
    base = model_config.pipeline
    if base is not None and base != model_config.init and folder_boundary_ratio(base) is None:
        raise InputError(
            f"model.pipeline {base} has one transformer but model.init {model_config.init} two experts: the "
            "exported folder would drop one; unset model.pipeline"
        )
    return tuple(EXPERTS) if model_config.expert == "both" else (model_config.expert,)


def student_network(model_config, seed: int) -> WanVelocity | ExpertVelocity:
    """The network a run trains (`model.init`, optionally LoRA, optionally gradient checkpointing); of a
    two-expert folder, the experts `model.expert` names train and the other is frozen."""
    net = velocity_network(model_config.init, seed, pipeline=model_config.pipeline)
    paths = transformer_paths(net)
    trained = trained_experts(model_config, len(paths) == 2)
    for expert in set(EXPERTS) - set(trained) if trained else ():
        net.get_submodule(paths[EXPERTS[expert]]).requires_grad_(False)
    if model_config.lora_rank > 0:
        torch.manual_seed(seed)  # peft draws LoRA A from the global generator: same seed, same adapter
        add_lora(net.transformer, model_config.lora_rank, model_config.lora_alpha)
    if model_config.gradient_checkpointing:
        for path in paths.values():
            net.get_submodule(path).enable_gradient_checkpointing()
    return net.train()


def check_experts_trainable(net: torch.nn.Module, processes: int, sharding: str) -> None:
    """A two-expert model trains in one process for now: with several, a step whose samples all fall to one
    expert leaves the other's gradients unreduced (DDP) and FSDP2 export of two experts is untested."""
    if len(transformer_paths(net)) == 2 and (processes > 1 or sharding != "none"):
        raise InputError(
            "a two-expert model trains in one process without sharding for now; launch one process and "
            "set train.sharding=none"
        )
