"""The networks objectives train or read, from a run's model settings: the student, frozen copies, LoRA.

Loading a transformer (a preset or a folder) is `models.loading`'s; this module decides what a run trains.
"""

from __future__ import annotations

import copy

import torch

from pyramidal_wan.models.denoiser import WanVelocity
from pyramidal_wan.models.loading import load_transformer_for

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


def student_network(model_config, seed: int) -> WanVelocity:
    """The network a run trains (`model.init`, optionally LoRA, optionally gradient checkpointing)."""
    transformer = load_transformer_for(model_config.init, seed)
    if model_config.lora_rank > 0:
        torch.manual_seed(seed)  # peft draws LoRA A from the global generator: same seed, same adapter
        add_lora(transformer, model_config.lora_rank, model_config.lora_alpha)
    if model_config.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    return WanVelocity(transformer).train()
