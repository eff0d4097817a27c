"""Prompt embeddings exactly as diffusers' WanPipeline makes them (one code path for caching and sampling)."""

from __future__ import annotations

import torch
from diffusers.pipelines.wan.pipeline_wan import prompt_clean

WAN_MAX_SEQUENCE_LENGTH = 512


def max_sequence_length(tokenizer) -> int:
    """Wan's 512 text tokens, or a smaller tokenizer's own limit (the toy tokenizer's 32)."""
    return min(WAN_MAX_SEQUENCE_LENGTH, int(tokenizer.model_max_length))


@torch.no_grad()
def encode_prompts(tokenizer, text_encoder, prompts: list[str], max_length: int | None = None):
    """(len(prompts), max_length, dim) UMT5 embeddings, zero past each prompt's end (as WanPipeline)."""
    max_length = max_length or max_sequence_length(tokenizer)
    inputs = tokenizer(
        [prompt_clean(p) for p in prompts],
        padding="max_length",
        max_length=max_length,
        truncation=True,
        add_special_tokens=True,
        return_attention_mask=True,
        return_tensors="pt",
    )
    device = next(text_encoder.parameters()).device
    mask = inputs.attention_mask.to(device)
    embeds = text_encoder(inputs.input_ids.to(device), mask).last_hidden_state
    return embeds * mask.unsqueeze(-1).to(embeds.dtype)  # (B, L, D)
