"""One video on several GPUs: diffusers' context parallelism (Ulysses or ring attention) at every stage.

Every process runs the same pipeline call with the same seed; diffusers' hooks (the transformer's
`_cp_plan`) split each transformer forward's token sequence evenly over the processes and gather the output,
so text encoding, the pyramid's stage transitions and the VAE decode run replicated and the result is the
same video on every rank. Ulysses exchanges attention heads with all-to-all (the head count must divide
over the processes); ring attention passes key/value blocks around and needs an attention backend that
returns the log-sum-exp (flash / cuDNN on GPUs; PyTorch's native SDPA backend does not).

The token count of every stage that runs must divide evenly over the processes: the full-resolution stage
and each lower stage of a pyramidal schedule (e.g. 81x448x832: 32,760 / 4,095 / 520 tokens, so 8 processes
split stage 2 but not stage 1). `check_context_parallel` says so before any weights are loaded.
"""

from __future__ import annotations

import math

from pyramidal_wan.errors import InputError

MODES = ("ulysses", "ring")


def stage_tokens(plan) -> dict[int, int]:
    """{stage: transformer tokens} of the stages a `SamplingPlan` runs (index 0 = full resolution)."""
    return {i: g.num_tokens for i, (g, n) in enumerate(zip(plan.geometry, plan.steps[::-1])) if n > 0}


def check_context_parallel(plan, mode: str, world_size: int, num_heads: int) -> None:
    """Raise a one-line InputError unless `plan` can run split over `world_size` processes with `mode`."""
    if mode not in MODES:
        raise InputError(f"context parallelism must be one of {', '.join(MODES)}, got {mode!r}")
    if plan.kind != "resolution":
        raise InputError(
            "context parallelism runs resolution-pyramid models; a PPF model's stage kernels replace the "
            "layers diffusers' split hooks attach to: generate it on one process"
        )
    if world_size < 2:
        raise InputError(
            "context parallelism needs at least 2 processes: launch with torchrun --nproc_per_node N"
        )
    tokens = stage_tokens(plan)
    for stage, n in tokens.items():
        if n % world_size:
            divisor = math.gcd(*tokens.values())
            raise InputError(
                f"stage {stage} has {n} tokens, which do not split evenly over {world_size} processes; use a "
                f"number of processes dividing {divisor} (the stages' common divisor) or another video size"
            )
    if mode == "ulysses" and num_heads % world_size:
        raise InputError(
            f"Ulysses attention splits the {num_heads} attention heads over the processes: {world_size} does "
            "not divide them; use a divisor of the head count, or ring attention on GPUs"
        )


def enable_context_parallel(transformer, mode: str, world_size: int) -> None:
    """Attach diffusers' context-parallel hooks to `transformer` over all `world_size` processes (the
    process group must exist). Diffusers picks each rank's device from `torch.accelerator`, so this needs
    GPUs (or another accelerator) in diffusers 0.42."""
    from diffusers import ContextParallelConfig

    degrees = {"ulysses_degree": world_size} if mode == "ulysses" else {"ring_degree": world_size}
    transformer.enable_parallelism(config=ContextParallelConfig(**degrees))
