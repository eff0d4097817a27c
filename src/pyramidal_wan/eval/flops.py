"""FLOPs of Wan transformer forwards and of pyramidal schedules, counted on the meta device.

The real diffusers `WanTransformer3DModel` runs on `meta` tensors under `torch.utils.flop_counter`'s
`FlopCounterMode`, so the count follows the model code rather than a hand formula, at no memory cost.
FLOPs = 2 x multiply-accumulates (the convention of `FlopCounterMode` and of the paper's table).
A patch-pyramid (PPF) model is counted the same way, running the `PPFTransformer` stage forward.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from pyramidal_wan.errors import InputError
from pyramidal_wan.models.ppf import PPFTransformer, ppf_num_tokens
from pyramidal_wan.models.presets import build_on_meta, get_transformer_config
from pyramidal_wan.models.wan_family import CLIP_IMAGE_TOKENS
from pyramidal_wan.pipelines.planning import SamplingPlan
from pyramidal_wan.pyramid import PyramidConfig, is_baseline_schedule

# A schedule whose stages all take at most this many steps is a few-step (distilled) schedule: the paper
# counts those without CFG (2-2-1 = 5 forwards = 282 TFLOPs) and multi-step schedules with it.
FEW_STEP_MAX_STEPS = 4

TERA = 1e12


def _config_key(config: Mapping[str, Any]) -> str:
    """A hashable, order-independent key for a complete transformer config."""
    return json.dumps({k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}, sort_keys=True)


def check_latent_shape(
    config: Mapping[str, Any], latent_shape_CTHW: Sequence[int]
) -> tuple[int, int, int, int]:
    """Check a (C, T, H, W) latent shape against the config's channels and patch size; return it as ints."""
    shape = tuple(int(s) for s in latent_shape_CTHW)
    if len(shape) != 4 or min(shape) < 1:
        raise InputError(f"latent shape {shape} must be 4 positive sizes (C, T, H, W)")
    if shape[0] != config["in_channels"]:
        raise InputError(
            f"latent shape {shape} has {shape[0]} channels; the model takes {config['in_channels']}"
        )
    for size, patch, axis in zip(shape[1:], config["patch_size"], "THW"):
        if size % patch:
            raise InputError(
                f"latent {axis}={size} is not divisible by the patch size {patch}; use a multiple"
            )
    return shape


def num_tokens(config: Mapping[str, Any], latent_shape_CTHW: Sequence[int]) -> int:
    """Transformer sequence length N = (T/p_t)(H/p_h)(W/p_w) for a (C, T, H, W) latent."""
    shape = check_latent_shape(config, latent_shape_CTHW)
    return math.prod(size // patch for size, patch in zip(shape[1:], config["patch_size"]))


@functools.lru_cache(maxsize=32)
def _meta_model(config_key: str) -> torch.nn.Module:
    return build_on_meta(json.loads(config_key))


@functools.lru_cache(maxsize=256)
def _count_by_op(
    config_key: str, latent_shape: tuple[int, ...], text_len: int
) -> tuple[tuple[str, int], ...]:
    config = json.loads(config_key)
    model = _meta_model(config_key)
    latents = torch.empty((1, *latent_shape), device="meta")  # (B, C, T, H, W)
    text = torch.empty((1, text_len, config["text_dim"]), device="meta")  # (B, N_txt, text_dim)
    timestep = torch.empty((1,), device="meta")
    image = None  # Wan2.1-I2V cross-attends to the CLIP image tokens too (its added K/V projections)
    if config.get("image_dim") is not None:
        image = torch.empty((1, CLIP_IMAGE_TOKENS, config["image_dim"]), device="meta")
    # The math SDPA backend is a composite of matmul/bmm, which FlopCounterMode counts on every device;
    # fused kernels are device-specific, and some (the CPU flash kernel) have no registered FLOP formula.
    with FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH), torch.no_grad():
        model(latents, timestep, text, encoder_hidden_states_image=image, return_dict=False)
    counts = counter.get_flop_counts()["Global"]
    return tuple(sorted((str(op), int(n)) for op, n in counts.items()))


@functools.lru_cache(maxsize=256)
def _count_ppf_by_op(
    config_key: str, latent_shape: tuple[int, ...], text_len: int, stage: int, ppf_key: str
) -> tuple[tuple[str, int], ...]:
    config = json.loads(config_key)
    ppf = PPFTransformer(_meta_model(config_key), PyramidConfig.from_dict(json.loads(ppf_key)))
    latents = torch.empty((1, *latent_shape), device="meta")  # (B, C, T, H, W), full resolution
    text = torch.empty((1, text_len, config["text_dim"]), device="meta")  # (B, N_txt, text_dim)
    timestep = torch.empty((1,), device="meta")
    # The stage is given, not read from the timestep: meta tensors hold no values.
    with FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH), torch.no_grad():
        ppf.forward_stage(latents, timestep, text, stage)
    counts = counter.get_flop_counts()["Global"]
    return tuple(sorted((str(op), int(n)) for op, n in counts.items()))


def transformer_forward_flop_breakdown(
    config: str | Mapping[str, Any], latent_shape_CTHW: Sequence[int], text_len: int = 512
) -> dict[str, int]:
    """FLOPs of one batch-1 transformer forward, per aten op (e.g. `aten.addmm`, `aten.bmm` for attention)."""
    config = get_transformer_config(config)
    if text_len < 1:
        raise InputError(f"text length {text_len} must be at least 1")
    shape = check_latent_shape(config, latent_shape_CTHW)
    return dict(_count_by_op(_config_key(config), shape, int(text_len)))


def transformer_forward_flops(
    config: str | Mapping[str, Any], latent_shape_CTHW: Sequence[int], text_len: int = 512
) -> int:
    """FLOPs of one batch-1 forward of the Wan transformer on a (C, T, H, W) latent, counted on meta.

    Attention is included: its QK^T and AV products appear as `bmm` under the math SDPA backend.
    Results are cached per (config, shape, text length).
    """
    return sum(transformer_forward_flop_breakdown(config, latent_shape_CTHW, text_len).values())


def ppf_forward_flops(
    config: str | Mapping[str, Any],
    latent_shape_CTHW: Sequence[int],
    stage: int,
    ppf_config: PyramidConfig | None = None,
    text_len: int = 512,
) -> int:
    """FLOPs of one batch-1 forward of stage `stage` of a PPF model on a full-resolution (C, T, H, W) latent
    (METHOD.md 9): the transformer blocks see the stage's token count, plus its patch layers."""
    config = get_transformer_config(config)
    ppf_config = PyramidConfig(kind="patch") if ppf_config is None else ppf_config
    if text_len < 1:
        raise InputError(f"text length {text_len} must be at least 1")
    shape = check_latent_shape(config, latent_shape_CTHW)
    ppf_num_tokens(shape[1:], ppf_config.kernels(stage, config["patch_size"]))  # validates the size
    key = json.dumps(ppf_config.to_dict(), sort_keys=True)
    return sum(n for _, n in _count_ppf_by_op(_config_key(config), shape, int(text_len), int(stage), key))


def analytic_forward_flops(config: str | Mapping[str, Any], tokens: int, text_len: int = 512) -> int:
    """FLOPs of one forward from METHOD.md §10.1, generalised to any width d = heads x head_dim.

    L [2N(6d^2 + 2 d d_ffn) + 4N^2 d + 4 N N_txt d + 4 N_txt d^2]: self-attention QKVO, cross-attention Q/O
    and FFN; self-attention QK^T and AV; cross-attention matmuls; text K/V projections. Embeddings,
    patchify, modulation and the head are omitted.
    """
    config = get_transformer_config(config)
    d = config["num_attention_heads"] * config["attention_head_dim"]
    n, n_txt = int(tokens), int(text_len)
    per_layer = 2 * n * (6 * d * d + 2 * d * config["ffn_dim"]) + 4 * n * n * d + 4 * n * n_txt * d
    return config["num_layers"] * (per_layer + 4 * n_txt * d * d)


def default_cfg(steps_per_stage: Sequence[int]) -> bool:
    """Whether a schedule is counted with CFG by default: multi-step yes, few-step (all stages <= 4) no."""
    return max(steps_per_stage) > FEW_STEP_MAX_STEPS


def schedule_flops(
    config: str | Mapping[str, Any],
    stage_latent_shapes: Sequence[Sequence[int]],
    steps_per_stage: Sequence[int],
    cfg: bool | Sequence[bool],
    text_len: int = 512,
) -> dict[str, Any]:
    """Cost of a pyramidal schedule: sum_i n_i FLOPs(N_i), doubled with CFG (METHOD.md §10.1).

    Both sequences are indexed by stage, i = 0 the full resolution (the reverse of schedule strings); so is
    `cfg` when it is one flag per stage (PPF's per-stage guidance, where a stage at w = 1 has one branch).
    Returns per-stage `tokens`, `tflops_per_forward`, `steps`, `tflops`, and `forwards`, `total_flops`,
    `total_tflops` for the schedule.
    """
    if len(stage_latent_shapes) != len(steps_per_stage):
        raise InputError(f"{len(steps_per_stage)} step counts for {len(stage_latent_shapes)} stages")
    _check_steps(steps_per_stage)
    config = get_transformer_config(config)
    forwards = [
        (shape, num_tokens(config, shape), transformer_forward_flops(config, shape, text_len))
        for shape in stage_latent_shapes
    ]
    return _schedule_totals(forwards, steps_per_stage, cfg)


def ppf_schedule_flops(
    config: str | Mapping[str, Any],
    latent_shape_CTHW: Sequence[int],
    steps_per_stage: Sequence[int],
    cfg: bool | Sequence[bool],
    ppf_config: PyramidConfig | None = None,
    text_len: int = 512,
) -> dict[str, Any]:
    """Cost of a patch-pyramid schedule on a full-resolution latent: sum_i n_i FLOPs_PPF(i), doubled with
    CFG (METHOD.md 9, 10.1). `steps_per_stage` is indexed by stage (0 = full resolution); the result has
    the keys of `schedule_flops`, every stage's `latent` being the full-resolution one."""
    config = get_transformer_config(config)
    ppf_config = (
        PyramidConfig(num_stages=len(steps_per_stage), kind="patch") if ppf_config is None else ppf_config
    )
    if ppf_config.num_stages != len(steps_per_stage):
        raise InputError(f"{len(steps_per_stage)} step counts for {ppf_config.num_stages} stages")
    _check_steps(steps_per_stage)
    shape = check_latent_shape(config, latent_shape_CTHW)
    forwards = [
        (
            shape,
            ppf_num_tokens(shape[1:], ppf_config.kernels(i, config["patch_size"])),
            ppf_forward_flops(config, shape, i, ppf_config, text_len),
        )
        for i in range(ppf_config.num_stages)
    ]
    return _schedule_totals(forwards, steps_per_stage, cfg)


def _check_steps(steps_per_stage: Sequence[int]) -> None:
    if any(int(n) < 0 for n in steps_per_stage) or sum(steps_per_stage) < 1:
        raise InputError(f"steps per stage {tuple(steps_per_stage)} must be >= 0 with at least one step")


def _schedule_totals(forwards, steps_per_stage: Sequence[int], cfg) -> dict[str, Any]:
    """Per-stage rows and totals from (latent shape, tokens, FLOPs per forward) per stage."""
    per_stage_cfg = [bool(c) for c in cfg] if isinstance(cfg, Sequence) else [bool(cfg)] * len(forwards)
    if len(per_stage_cfg) != len(forwards):
        raise InputError(f"{len(per_stage_cfg)} CFG flags for {len(forwards)} stages")
    stages, total, calls = [], 0, 0
    for i, ((shape, tokens, per_forward), steps) in enumerate(zip(forwards, steps_per_stage)):
        branches = 2 if per_stage_cfg[i] else 1
        flops = branches * int(steps) * per_forward
        total += flops
        calls += branches * int(steps)
        stages.append(
            {
                "stage": i,
                "latent": tuple(int(s) for s in shape),
                "tokens": tokens,
                "tflops_per_forward": per_forward / TERA,
                "steps": int(steps),
                "tflops": flops / TERA,
            }
        )
    return {
        "cfg": any(per_stage_cfg),
        "stages": stages,
        "forwards": calls,
        "total_flops": total,
        "total_tflops": total / TERA,
    }


def plan_flops(
    transformer_config: Mapping[str, Any],
    plan: SamplingPlan,
    text_len: int,
    ppf_config: PyramidConfig | None = None,
) -> dict[str, Any]:
    """Transformer FLOPs of one video sampled by `plan` (on the meta device; CFG doubles).

    A patch-pyramid plan counts the PPF stage forwards on the full-resolution latent, with `ppf_config`'s
    kernels (default: the plan's stage count with (2, 2, 2) factors); per-stage guidance doubles only the
    stages with w > 1.
    """
    steps_by_stage = plan.steps[::-1][: len(plan.geometry)]  # stage 0 first; a plain run has one stage
    config = get_transformer_config(dict(transformer_config))
    shapes = [(config["in_channels"], *g.latent) for g in plan.geometry]
    cfg = plan.guidance_scale > 1.0
    if plan.stage_guidance is not None:
        cfg = [w > 1.0 for w in plan.stage_guidance[::-1]]  # by stage index, 0 = full resolution
    if plan.kind == "patch" and not is_baseline_schedule(plan.steps):
        ppf_config = (
            PyramidConfig(num_stages=len(plan.geometry), kind="patch") if ppf_config is None else ppf_config
        )
        return ppf_schedule_flops(config, shapes[0], steps_by_stage, cfg, ppf_config, text_len)
    return schedule_flops(config, shapes, steps_by_stage, cfg, text_len)
