"""Wall-clock latency of one transformer forward: median and spread over repeated timed calls."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch

from pyramidal_wan.errors import InputError


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The q-quantile (0 <= q <= 1) of ascending values, linearly interpolated between neighbours."""
    position = q * (len(sorted_values) - 1)
    low = int(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (position - low) * (sorted_values[high] - sorted_values[low])


def synchronize(device: torch.device) -> None:
    """Wait for queued work on `device` (accelerators run asynchronously; the CPU needs nothing)."""
    if device.type not in ("cpu", "meta"):
        torch.accelerator.synchronize(device)


def time_calls_ms(fn: Callable[[], object], device: torch.device, warmup: int, repeats: int) -> list[float]:
    """Milliseconds of `repeats` calls of `fn` after `warmup` untimed ones, synchronising around each."""
    if warmup < 0 or repeats < 1:
        raise InputError(f"need warmup >= 0 and repeats >= 1, got warmup={warmup}, repeats={repeats}")
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)  # the forward is only finished once the device queue is drained
        times.append((time.perf_counter() - start) * 1e3)
    return times


def summarize_ms(times: Sequence[float]) -> dict[str, float]:
    """Median, 10th and 90th percentiles (ms) of timing samples."""
    ordered = sorted(times)
    return {
        "median": percentile(ordered, 0.5),
        "p10": percentile(ordered, 0.1),
        "p90": percentile(ordered, 0.9),
        "repeats": len(ordered),
    }


def cast_like_from_pretrained(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """Cast a diffusers model to `dtype` in place as `from_pretrained(torch_dtype=dtype)` would.

    Parameters and buffers under the class's `_keep_in_fp32_modules` (for Wan: rope, time embedder,
    modulation tables, norms) stay float32, so random-weight timings match loaded checkpoints.
    """
    keep = set(getattr(model, "_keep_in_fp32_modules", None) or ())
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if tensor.is_floating_point():
            tensor.data = tensor.data.to(torch.float32 if keep & set(name.split(".")) else dtype)
    return model


def forward_latency_ms(
    transformer: torch.nn.Module,
    latent_shape: Sequence[int],
    text_len: int = 512,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    warmup: int = 2,
    repeats: int = 5,
    batch_size: int = 1,
    generator: torch.Generator | None = None,
    timestep: float = 500.0,
) -> dict[str, float]:
    """Latency (ms: median, p10, p90) of one no-grad forward of a Wan transformer on a (C, T, H, W) latent.

    The transformer must already be on `device` (default: where its weights are) in its inference dtype
    (default: that of its weights). Inputs (random latents, text embeddings of `text_len` tokens,
    `timestep` = 1000 sigma) are drawn on the CPU with `generator` and moved there in `dtype`. Accelerator
    work is synchronised before each clock read. A `PPFTransformer` runs the kernel of `timestep`'s stage.
    """
    weight = next(transformer.parameters())
    device = weight.device if device is None else torch.device(device)
    dtype = weight.dtype if dtype is None else dtype
    config = transformer.config
    if len(latent_shape) != 4 or latent_shape[0] != config.in_channels:
        raise InputError(f"latent shape {tuple(latent_shape)} must be (C={config.in_channels}, T, H, W)")
    latents = torch.randn((batch_size, *latent_shape), generator=generator)  # (B, C, T, H, W)
    text = torch.randn((batch_size, text_len, config.text_dim), generator=generator)  # (B, N_txt, text_dim)
    latents, text = latents.to(device, dtype), text.to(device, dtype)
    timestep = torch.full((batch_size,), float(timestep), device=device)

    def call() -> object:
        return transformer(latents, timestep, text, return_dict=False)

    with torch.inference_mode():
        return summarize_ms(time_calls_ms(call, device, warmup, repeats))
