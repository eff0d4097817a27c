"""Prompt embeddings exactly as diffusers' WanPipeline makes them (one code path for caching and sampling)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from diffusers.pipelines.wan.pipeline_wan import prompt_clean

WAN_MAX_SEQUENCE_LENGTH = 512


def max_sequence_length(tokenizer) -> int:
    """Wan's 512 text tokens, or a smaller tokenizer's own limit (the toy tokenizer's 32)."""
    return min(WAN_MAX_SEQUENCE_LENGTH, int(tokenizer.model_max_length))


def folder_max_sequence_length(folder: str | os.PathLike) -> int:
    """`max_sequence_length` of a pipeline folder's tokenizer, read from its tokenizer_config.json (no
    tokenizer load); Wan's 512 for a folder without one (a preset name, a bare transformer)."""
    path = Path(folder) / "tokenizer" / "tokenizer_config.json"
    if not path.is_file():
        return WAN_MAX_SEQUENCE_LENGTH
    limit = json.loads(path.read_text()).get("model_max_length", WAN_MAX_SEQUENCE_LENGTH)
    return min(WAN_MAX_SEQUENCE_LENGTH, int(limit))


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
