"""Step caches of `diffusers.hooks` inside the pyramid samplers.

diffusers' caches (first-block cache, TaylorSeer, MagCache, FasterCache) keep per-call state: residuals,
features or attention outputs of the previous steps, and step counters. A pyramid stage change changes the
token grid, so the state of the previous stage is of the wrong shape and the wrong process;
`StageCachedVelocity` enables a fresh cache whenever the latent's shape changes, built for that stage, so
the first step of every stage is computed in full and MagCache counts the stage's own steps against its own
magnitude ratios.

MagCache skips the blocks where the residual (last block's output - first block's input) is predicted from
the previous step's by calibrated magnitude ratios; they depend on the model and, in a pyramid, on the
stage. `measure_mag_ratios` measures them the way diffusers' calibration mode does
(`MagCacheConfig(calibrate=True)`: mean over tokens of |r_k| / |r_(k-1)|, 1 at a stage's first step), per
stage of one sampling run, on the conditional branch; `pyramidal-wan calibrate-magcache` writes them to a
model folder's `magcache.json`, which the pipeline reads. diffusers interpolates a stage's ratios to the
steps a run gives that stage.

FasterCache approximates the unconditional branch from the conditional one on most steps, so it needs the
two branches in one batched call (the pipeline batches CFG for it on every device), and reuses spatial
self-attention outputs; its timestep ranges are read against 1000 sigma of the running step.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers.hooks import FasterCacheConfig, FirstBlockCacheConfig, MagCacheConfig, TaylorSeerCacheConfig
from torch import nn

from pyramidal_wan.errors import CheckpointError, InputError
from pyramidal_wan.utils.io import write_json

# The Wan block modules TaylorSeer forecasts: diffusers' default patterns ("^blocks.*attn", matched in full)
# miss Wan's attn1 / attn2, so it would silently cache nothing.
WAN_TAYLORSEER_MODULES = (r"^blocks\.\d+\.attn[12]$", r"^blocks\.\d+\.ffn$")
MAG_RATIOS_FILE = "magcache.json"  # in a model folder: the MagCache magnitude ratios of each stage


@dataclass(frozen=True)
class StageRun:
    """What a stage's cache config may need: the stage (0 = full resolution), its model evaluations per
    CFG branch, whether CFG runs, the model's MagCache ratios and a callable giving 1000 sigma of the
    running step."""

    stage: int
    steps: int
    guidance: bool
    mag_ratios: dict[int, list[float]] | None
    timestep: Callable[[], float]


def _mag_cache(run: StageRun) -> MagCacheConfig:
    # diffusers' defaults otherwise; its retention ratio (no skips in the first 20% of steps) is per stage.
    return MagCacheConfig(mag_ratios=list(run.mag_ratios[run.stage]), num_inference_steps=run.steps)


def _faster_cache(run: StageRun) -> FasterCacheConfig:
    # diffusers' defaults otherwise, with its default attention weight (0.5) given rather than warned about.
    return FasterCacheConfig(
        current_timestep_callback=run.timestep,
        attention_weight_callback=lambda module: 0.5,
        is_guidance_distilled=not run.guidance,
        tensor_format="BCFHW",
    )


# Cache names of `generate --cache` and the pipeline's `cache` argument: a stage's config from its `StageRun`.
CACHES: dict[str, Callable[[StageRun], object]] = {
    "first-block": lambda run: FirstBlockCacheConfig(),
    "taylorseer": lambda run: TaylorSeerCacheConfig(
        cache_identifiers=list(WAN_TAYLORSEER_MODULES), taylor_factors_dtype=torch.float32
    ),
    "magcache": _mag_cache,
    "fastercache": _faster_cache,
}
BATCHED_CFG_CACHES = ("fastercache",)  # caches that need cond and uncond in one batched call


def check_cache(
    name: str | None, sampler: str, kind: str = "resolution", guidance_scale: float | None = None
) -> str | None:
    """`name` if a step cache of that name can run with `sampler` on a `kind` pyramid at `guidance_scale`
    (None: not known yet), else an InputError."""
    if name is None:
        return None
    if name not in CACHES:
        raise InputError(f"unknown cache {name!r}; choose one of {', '.join(CACHES)}")
    if sampler != "multistep":
        raise InputError(f"cache {name!r} needs multistep sampling (few-step runs too few steps to reuse)")
    if kind != "resolution":
        raise InputError(f"cache {name!r} is not supported on a patch-pyramid (PPF) model; drop --cache")
    # Without CFG, diffusers' FasterCache (0.42) reuses attention at a stage's first step before it has any:
    # a stage starting inside its timestep range fails. Its point is the unconditional branch anyway.
    if name in BATCHED_CFG_CACHES and guidance_scale is not None and guidance_scale <= 1:
        raise InputError(f"cache {name!r} approximates the CFG branch: it needs a guidance scale > 1")
    return name


def sampled_stages(steps: tuple[int, ...]) -> list[int]:
    """The stage indices (0 = full resolution) a schedule (steps lowest resolution first) samples."""
    return [len(steps) - 1 - i for i, n in enumerate(steps) if n > 0]


def check_folder_mag_ratios(folder: str | Path, steps: tuple[int, ...]) -> None:
    """Before any model work: InputError unless a model folder has MagCache ratios for every stage of
    `steps` (CheckpointError if its file is malformed)."""
    path = Path(folder) / MAG_RATIOS_FILE
    check_mag_ratios(load_mag_ratios(path) if path.is_file() else None, sampled_stages(steps))


def check_mag_ratios(mag_ratios: dict[int, list[float]] | None, stages: list[int]) -> None:
    """InputError unless MagCache ratios are there for every stage a run samples."""
    if mag_ratios is None:
        raise InputError(
            "cache 'magcache' needs magnitude ratios calibrated for this model: run "
            f"`pyramidal-wan calibrate-magcache --model MODEL_DIR` (writes MODEL_DIR/{MAG_RATIOS_FILE})"
        )
    missing = [s for s in stages if not mag_ratios.get(s)]
    if missing:
        raise InputError(
            f"the MagCache ratios have no stage {', '.join(map(str, missing))}: calibrate with a schedule "
            "that samples every stage this run does (e.g. `calibrate-magcache --schedule 10-10-10`)"
        )


class StageCachedVelocity(nn.Module):
    """A velocity model whose transformer carries a diffusers step cache, fresh at every stage change.

    The stage is recognised by the latent's (T, H, W): a resolution pyramid changes it at every jump. At each
    change the previous stage's cache is removed and `make_config(StageRun)` of the new stage enabled;
    `disable()` removes the last one. The wrapped model must open the transformer's `cache_context` around
    its calls (`CFGVelocity` does, one context per CFG branch, given `transformer.cache_context`).

    Args:
        model: the (CFG) velocity model.
        transformer: the diffusers transformer that carries the cache.
        make_config: a `CACHES` entry.
        stages: the stages a run samples: latent (T, H, W) -> (stage index, steps).
        guidance: whether the model runs CFG.
        mag_ratios: MagCache ratios per stage index (`measure_mag_ratios`), if any.
    """

    def __init__(self, model, transformer, make_config, stages, guidance=True, mag_ratios=None):
        super().__init__()
        self.model = model
        self.transformer = transformer
        self.make_config = make_config
        self.stages = dict(stages)
        self.guidance = guidance
        self.mag_ratios = mag_ratios
        self.stage_shape = None
        self.timestep = 0.0  # 1000 sigma of the running evaluation (FasterCache's timestep ranges)

    def forward(self, x, sigma, *args, **kwargs):
        if tuple(x.shape) != self.stage_shape:
            self.disable()
            stage, steps = self.stages[tuple(x.shape[2:])]
            run = StageRun(stage, steps, self.guidance, self.mag_ratios, lambda: self.timestep)
            self.transformer.enable_cache(self.make_config(run))
            self.stage_shape = tuple(x.shape)
        self.timestep = 1000.0 * float(torch.as_tensor(sigma).reshape(-1)[0])
        return self.model(x, sigma, *args, **kwargs)

    def disable(self) -> None:
        """Remove the cache of the current stage (if any) from the transformer."""
        if self.transformer._cache_config is not None:
            self.transformer.disable_cache()
        self.stage_shape = None


class MagRatioRecorder:
    """Measure MagCache magnitude ratios per stage during one sampling run (pass `callback` to the call).

    Hooks the transformer's first block (input) and last block (output); after every model evaluation (the
    sampler's callback) the residual of the conditional branch is the first call's (two batch-1 CFG calls,
    cond first) or the second half of a batched [uncond; cond] call.
    """

    def __init__(self, transformer: nn.Module):
        self.transformer = transformer
        self.ratios: dict[int, list[float]] = {}
        self._inputs: list[torch.Tensor] = []
        self._residuals: list[torch.Tensor] = []
        self._previous: dict[int, torch.Tensor] = {}
        self._hooks = []

    def __enter__(self) -> MagRatioRecorder:
        blocks = self.transformer.blocks
        self._hooks = [
            blocks[0].register_forward_pre_hook(lambda module, args: self._inputs.append(args[0])),
            blocks[-1].register_forward_hook(
                lambda module, args, output: self._residuals.append(output - self._inputs.pop())
            ),
        ]
        return self

    def __exit__(self, *exc) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []

    def callback(self, info: dict) -> None:
        batch = info["x"].shape[0]
        residual = self._residuals[0][-batch:].float()  # (B, N, D) of the conditional branch
        self._residuals.clear()
        stage = info["stage"]
        previous = self._previous.get(stage)
        if previous is None:
            ratio = 1.0  # a stage's first step has nothing to compare with (as diffusers' calibration)
        else:
            norms = torch.linalg.norm(residual, dim=-1) / (torch.linalg.norm(previous, dim=-1) + 1e-8)
            ratio = norms.mean().item()
        self.ratios.setdefault(stage, []).append(ratio)
        self._previous[stage] = residual


def save_mag_ratios(path: str | Path, ratios: dict[int, list[float]], schedule: str) -> None:
    """Write MagCache ratios (per stage index) and the schedule they were measured at, atomically."""
    stages = {str(stage): [float(r) for r in values] for stage, values in sorted(ratios.items())}
    write_json(Path(path), {"schedule": schedule, "stages": stages})


def load_mag_ratios(path: str | Path) -> dict[int, list[float]]:
    """MagCache ratios per stage index from a `magcache.json`; a CheckpointError if it is malformed."""
    try:
        data = json.loads(Path(path).read_text())
        ratios = {int(stage): [float(r) for r in values] for stage, values in data["stages"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise CheckpointError(
            f"{path} is not a MagCache ratios file ({err}); recreate it with "
            "`pyramidal-wan calibrate-magcache`"
        ) from None
    if not all(values and all(math.isfinite(r) and r > 0 for r in values) for values in ratios.values()):
        raise CheckpointError(f"{path} has an empty stage or a ratio that is not a positive finite number")
    return ratios
