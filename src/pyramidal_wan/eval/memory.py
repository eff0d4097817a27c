"""Training memory estimates per GPU, the arithmetic of docs/memory.md as code (no GPU needed).

Parameter counts are exact (the preset built on the meta device); bytes per parameter follow the trainer:
a trained full-parameter network keeps an fp32 weight, an fp32 gradient and AdamW's two fp32 moments
(16 B); a frozen copy under bf16 mixed precision keeps 2 B (`training.distill.cast_frozen`); pyramidal
fine-tuning's frozen original model is an fp32 copy of the student (4 B). With FSDP2 over N GPUs every
sharded state is divided by N; CPU offload of the optimizer states moves AdamW's 8 B per trained parameter
to host memory. Activations assume gradient checkpointing: per sample and back-propagated network, the
saved bf16 input of every block plus one block's recompute (q, k, v, attention output, the FFN hidden state
and its GELU, in bf16). These are estimates, to set next to `torch.cuda.max_memory_allocated()`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pyramidal_wan.models.presets import build_on_meta, count_parameters, get_transformer_config

BF16 = 2
TRAINED_BYTES = 16  # fp32 weight + fp32 grad + AdamW m, v
OPTIMIZER_BYTES = 8  # AdamW m, v: what CPU offload moves off the GPU


def parameter_count(preset: str | Mapping[str, Any]) -> int:
    """Exact parameter count of a Wan transformer (built on the meta device)."""
    return count_parameters(build_on_meta(preset))


def activation_bytes(config: Mapping[str, Any], tokens: int, samples: int) -> int:
    """Checkpointed activations of one back-propagated network over `samples` sequences of `tokens`."""
    dim = config["num_attention_heads"] * config["attention_head_dim"]
    saved = tokens * dim * BF16 * config["num_layers"]
    recompute = (4 * tokens * dim + 2 * tokens * config["ffn_dim"]) * BF16
    return samples * (saved + recompute)


# (trained full networks, frozen fp32 copies, frozen bf16 copies, back-propagated networks per update)
METHODS = {
    "pyramidal": (1, 1, 0, 1),  # student; the frozen original model (fp32 copy) for L_dist
    "dmd-ot": (2, 0, 1, 1),  # student and fake score; the multi-resolution teacher in bf16
}


def estimate(
    preset: str | Mapping[str, Any],
    method: str,
    tokens: int,
    samples: int,
    gpus: int = 1,
    offload_optimizer: bool = False,
) -> dict[str, float]:
    """Per-GPU GB of one training update: resident states, activations and their sum.

    `tokens` is the full-resolution stage's token count and `samples` the full-resolution samples per GPU
    in one update (the lower stages' share is small: 7.6x and 56x fewer tokens at Wan2.1's size).
    """
    config = get_transformer_config(preset)
    params = parameter_count(config)
    trained, frozen_fp32, frozen_bf16, backprop = METHODS[method]
    per_trained = TRAINED_BYTES - (OPTIMIZER_BYTES if offload_optimizer else 0)
    resident = params * (trained * per_trained + frozen_fp32 * 4 + frozen_bf16 * BF16) / gpus
    activations = backprop * activation_bytes(config, tokens, samples)
    # FSDP2 gathers one block at a time: its full fp32 weights (and gradients in backward) per GPU.
    gathered = 2 * 4 * params / config["num_layers"] if gpus > 1 else 0
    return {
        "parameters": params,
        "resident_gb": resident / 1e9,
        "activations_gb": (activations + gathered) / 1e9,
        "total_gb": (resident + activations + gathered) / 1e9,
        "offloaded_to_cpu_gb": trained * params * OPTIMIZER_BYTES / gpus / 1e9 if offload_optimizer else 0.0,
    }
