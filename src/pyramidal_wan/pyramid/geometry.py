"""Stage geometry: pixel, latent and token sizes of every pyramid stage (METHOD.md section 1).

Stage 0 is the target (full) resolution; stage S-1 the lowest. Transition i links stage i and i+1 and
has per-axis factors (f_t, f_h, f_w) in {1, 2}. The causal first frame is kept by every temporal
halving: T^(i+1) = 1 + (T^(i) - 1) / f_t, for pixel frames and latent frames alike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pyramidal_wan.errors import InputError

Factors = tuple[int, int, int]
DEFAULT_FACTORS: Factors = (2, 2, 2)


@dataclass(frozen=True)
class StageGeometry:
    """Sizes of one stage: pixels (F, H, W), latent (T, H, W) and transformer token grid (T', H', W')."""

    pixel: tuple[int, int, int]
    latent: tuple[int, int, int]
    tokens: tuple[int, int, int]

    @property
    def num_tokens(self) -> int:
        return math.prod(self.tokens)


def check_factors(factors, num_stages: int) -> tuple[Factors, ...]:
    """Validate per-transition factors; `None` means (2, 2, 2) at every transition."""
    if num_stages < 1:
        raise InputError(f"num_stages must be >= 1, got {num_stages}")
    if factors is None:
        return (DEFAULT_FACTORS,) * (num_stages - 1)
    factors = tuple(tuple(int(f) for f in fac) for fac in factors)
    if len(factors) != num_stages - 1:
        raise InputError(
            f"{num_stages} stages need {num_stages - 1} transition factors, got {len(factors)}: {factors}"
        )
    for i, fac in enumerate(factors):
        if len(fac) != 3 or any(f not in (1, 2) for f in fac):
            raise InputError(f"transition {i} factors {fac} must be three of 1 or 2 (for T, H, W)")
        if fac == (1, 1, 1):
            raise InputError(f"transition {i} has factors (1, 1, 1): it must reduce at least one axis")
    return factors


def cumulative_factors(factors: tuple[Factors, ...], stage: int) -> Factors:
    """Product of the factors of transitions 0..stage-1 per axis (Phi^(stage) in METHOD.md 1.3)."""
    out = [1, 1, 1]
    for fac in factors[:stage]:
        out = [a * b for a, b in zip(out, fac)]
    return tuple(out)


def _nearest_valid(value: int, multiple: int, offset: int = 0) -> str:
    """The valid sizes just below and above `value`, of the form offset + k * multiple with k >= 1."""
    k = max((value - offset) // multiple, 1)
    options = [offset + j * multiple for j in (k, k + 1) if offset + j * multiple != value]
    return " or ".join(str(v) for v in options)


def stage_geometry(
    num_frames: int,
    height: int,
    width: int,
    num_stages: int = 3,
    factors=None,
    vae_scale_temporal: int = 4,
    vae_scale_spatial: int = 8,
    patch_size: tuple[int, int, int] = (1, 2, 2),
) -> list[StageGeometry]:
    """Sizes of every stage (index 0 = full resolution) for a target video of num_frames x height x width.

    Raises InputError, naming the nearest valid sizes, when the video does not divide cleanly.
    """
    factors = check_factors(factors, num_stages)
    total = cumulative_factors(factors, num_stages - 1)
    pt, ph, pw = patch_size
    vt, vs = vae_scale_temporal, vae_scale_spatial

    # Every axis is checked, so one message names all the changes a size needs.
    problems = []
    if num_frames < 1 or (num_frames - 1) % vt != 0:
        problems.append(
            f"num_frames {num_frames} must be {vt}k+1 for the VAE; use {_nearest_valid(num_frames, vt, 1)}"
        )
    elif total[0] > 1 and ((num_frames - 1) % (vt * total[0]) != 0 or num_frames - 1 < vt * total[0]):
        step = vt * total[0]
        problems.append(
            f"num_frames {num_frames} cannot be halved in time {int(math.log2(total[0]))} times "
            f"(num_frames - 1 must be a positive multiple of {step}); "
            f"use {_nearest_valid(num_frames, step, 1)}, or set f_t=1"
        )
    for name, size, axis_total, patch in (("height", height, total[1], ph), ("width", width, total[2], pw)):
        multiple = vs * patch * axis_total
        if size < multiple or size % multiple != 0:
            problems.append(
                f"{name} {size} must be divisible by {multiple} ({vs}x VAE x {patch} patch x "
                f"{axis_total} pyramid); use {_nearest_valid(size, multiple)}"
            )
    if problems:
        raise InputError("; ".join(problems))

    stages = []
    pixel = (num_frames, height, width)
    for i in range(num_stages):
        latent = ((pixel[0] - 1) // vt + 1, pixel[1] // vs, pixel[2] // vs)
        if latent[0] % pt != 0:
            raise InputError(f"stage {i} has {latent[0]} latent frames, not divisible by the patch's {pt}")
        tokens = (latent[0] // pt, latent[1] // ph, latent[2] // pw)
        stages.append(StageGeometry(pixel=pixel, latent=latent, tokens=tokens))
        if i < num_stages - 1:
            ft, fh, fw = factors[i]
            pixel = (1 + (pixel[0] - 1) // ft, pixel[1] // fh, pixel[2] // fw)
    return stages


# Wan trains on 1000 timesteps; more steps than that per stage only cost time (and a count in the billions
# would exhaust memory building the sigma grid), so a larger count is taken for a typo.
MAX_STEPS_PER_STAGE = 1000


def parse_schedule(schedule: str | tuple[int, ...] | list[int], num_stages: int) -> tuple[int, ...]:
    """Parse "20-20-10" into steps per stage, listed from the LOWEST resolution to the highest.

    Zero entries are allowed only in the non-pyramidal baseline form "0-...-0-N".
    """
    if isinstance(schedule, str):
        try:
            steps = tuple(int(s) for s in schedule.strip().split("-"))
        except ValueError:
            raise InputError(
                f"schedule {schedule!r} must be {num_stages} integers joined by '-', e.g. "
                f"{'-'.join(['2'] * (num_stages - 1) + ['1'])}"
            ) from None
    else:
        steps = tuple(int(s) for s in schedule)
    text = "-".join(str(s) for s in steps)
    if len(steps) != num_stages:
        raise InputError(
            f"schedule {text} has {len(steps)} entries but the model has {num_stages} stages; "
            f"give one step count per stage, lowest resolution first"
        )
    if any(s < 0 for s in steps):
        raise InputError(f"schedule {text} has a negative step count")
    if any(s > MAX_STEPS_PER_STAGE for s in steps):
        raise InputError(
            f"schedule {text[:60]} has more than {MAX_STEPS_PER_STAGE} steps in a stage; use fewer"
        )
    if steps[-1] < 1:
        raise InputError(f"schedule {text} must have at least one step at full resolution (its last entry)")
    zeros = [s == 0 for s in steps[:-1]]
    if any(zeros) and not all(zeros):
        raise InputError(
            f"schedule {text}: a zero entry is only allowed in the plain baseline form 0-...-0-N; "
            f"every stage of a pyramidal schedule needs >= 1 step"
        )
    return steps


def is_baseline_schedule(steps: tuple[int, ...]) -> bool:
    """True for "0-...-0-N" (and for S = 1): plain sampling at full resolution."""
    return all(s == 0 for s in steps[:-1])
