"""Sampling plans: what one call samples, resolved once from its arguments and a model's configs.

`plan_sampling` checks a video size and sampling settings against a `PyramidConfig` (no weights needed) and
returns a `SamplingPlan`; `plan_from_folder` does so for a saved pipeline folder, reading only its JSON.
`generate`, `evaluate`, `bench` and `synthesize-data` build the plan once and hand it to the pipeline
(`pipe(prompt, plan=plan)`), which builds its grid from the plan's parsed steps.
"""

from __future__ import annotations

import inspect
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKLWan

from pyramidal_wan.errors import CheckpointError, InputError
from pyramidal_wan.models.checkpoint import pyramid_config_or_plain
from pyramidal_wan.models.loading import read_model_index
from pyramidal_wan.models.presets import get_transformer_config, read_config_json
from pyramidal_wan.models.wan_family import (
    EXPERT_COMPONENT,
    IMAGE_ENCODER_COMPONENTS,
    check_image_given,
    check_image_model,
    expert_split,
    image_mode,
)
from pyramidal_wan.pyramid import (
    PyramidConfig,
    StageGeometry,
    is_baseline_schedule,
    parse_schedule,
    stage_geometry,
)
from pyramidal_wan.pyramid.config import SAMPLERS, check_solver

_VAE_DEFAULTS = inspect.signature(AutoencoderKLWan.__init__).parameters
# The paper's video size (frames, height, width): Wan2.1's 81 frames at 448x832, divisible for 3 stages.
WAN21_SIZE = (81, 448, 832)


@dataclass(frozen=True)
class SamplingPlan:
    """What one call samples, resolved from the arguments and the checkpoint's `PyramidConfig`."""

    steps: tuple[int, ...]  # steps per stage, lowest resolution first
    sampler: str  # "multistep" or "fewstep"
    guidance_scale: float  # standard CFG w; 1 = no guidance (the largest stage scale with stage_guidance)
    geometry: tuple[StageGeometry, ...]  # stage sizes, index 0 = full resolution (one stage for 0-...-0-N)
    kind: str = "resolution"  # the model's pyramid kind: "resolution" or "patch" (PPF, METHOD.md 9)
    stage_guidance: tuple[float, ...] | None = None  # PPF: one CFG w per stage, lowest resolution first
    solver: str = "euler"  # within-stage solver of multi-step sampling (a key of pyramid.SOLVERS)

    @property
    def schedule(self) -> str:
        return "-".join(str(n) for n in self.steps)

    @property
    def noise_latent(self) -> tuple[int, int, int]:
        """(T, H, W) of the start noise: the lowest stage's, or full resolution for PPF and 0-...-0-N."""
        return self.geometry[0 if self.kind == "patch" else -1].latent


def resolve_stage_guidance(pyramid_config: PyramidConfig, scales) -> tuple[float, ...]:
    """Per-stage CFG scales (lowest resolution first) of a patch-pyramid model (METHOD.md 9)."""
    if pyramid_config.kind != "patch":
        raise InputError(
            "one guidance scale per stage needs a patch-pyramid (PPF) model; pass a single guidance_scale"
        )
    scales = tuple(float(w) for w in scales)
    if len(scales) != pyramid_config.num_stages or not all(w >= 1.0 for w in scales):
        raise InputError(
            f"guidance scales {scales} must be {pyramid_config.num_stages} values >= 1, lowest resolution "
            "first"
        )
    return scales


def resolve_sampling(
    pyramid_config: PyramidConfig,
    schedule=None,
    sampler: str | None = None,
    guidance_scale: float | None = None,
) -> tuple[tuple[int, ...], str, float]:
    """Steps per stage, sampler and CFG scale of a call: the arguments, else the checkpoint's defaults.

    Few-step sampling runs without CFG unless `guidance_scale` is passed; multi-step defaults to the
    checkpoint's `guidance_scale`.
    """
    sampler = pyramid_config.sampler if sampler is None else sampler
    if sampler not in SAMPLERS:
        raise InputError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    schedule = pyramid_config.default_schedule if schedule is None else schedule
    steps = parse_schedule(schedule, pyramid_config.num_stages)
    if guidance_scale is None:
        guidance_scale = pyramid_config.guidance_scale if sampler == "multistep" else 1.0
    if not guidance_scale >= 1.0:
        raise InputError(f"guidance_scale {guidance_scale} must be >= 1 (1 disables CFG)")
    return steps, sampler, float(guidance_scale)


def plan_sampling(
    pyramid_config: PyramidConfig,
    num_frames: int,
    height: int,
    width: int,
    schedule=None,
    sampler: str | None = None,
    guidance_scale: float | tuple[float, ...] | None = None,
    vae_scale_temporal: int = 4,
    vae_scale_spatial: int = 8,
    patch_size: tuple[int, int, int] = (1, 2, 2),
    solver: str | None = None,
) -> SamplingPlan:
    """Check a video size and sampling settings against a model's configs (no weights needed).

    Plain sampling (0-...-0-N) needs only the full-resolution geometry, so e.g. 480x832 stays valid there;
    a pyramidal schedule needs every stage to divide cleanly (for PPF, into every stage's patch kernel: the
    same conditions, METHOD.md 1.4). `solver` (default: the model's) applies to multi-step sampling only.
    Raises one-line `InputError`s.
    """
    stage_guidance = None
    if isinstance(guidance_scale, (tuple, list)):
        stage_guidance = resolve_stage_guidance(pyramid_config, guidance_scale)
        guidance_scale = max(stage_guidance)  # decides whether the negative prompt is needed
    steps, sampler, guidance_scale = resolve_sampling(pyramid_config, schedule, sampler, guidance_scale)
    plain = is_baseline_schedule(steps)
    if plain and stage_guidance is not None:
        raise InputError(f"schedule {'-'.join(map(str, steps))} has one stage; pass a single guidance_scale")
    geometry = stage_geometry(
        num_frames,
        height,
        width,
        num_stages=1 if plain else pyramid_config.num_stages,
        factors=None if plain else pyramid_config.factors,
        vae_scale_temporal=vae_scale_temporal,
        vae_scale_spatial=vae_scale_spatial,
        patch_size=patch_size,
    )
    if solver is not None and sampler != "multistep":
        raise InputError(
            f"solver {solver!r} applies to multistep sampling; drop it or use --sampler multistep"
        )
    solver = check_solver(pyramid_config.solver if solver is None else solver)
    return SamplingPlan(
        steps, sampler, guidance_scale, tuple(geometry), pyramid_config.kind, stage_guidance, solver
    )


def video_settings(
    folder: str | os.PathLike | None = None,
    num_frames: int | None = None,
    height: int | None = None,
    width: int | None = None,
) -> dict[str, int]:
    """Video size and VAE compression factors of a saved pipeline folder, read from its JSON configs without
    loading weights (`None` sizes take its model_index.json defaults), or of Wan2.1 when `folder` is None
    (81x448x832, the AutoencoderKLWan defaults). Returns the keywords of `plan_sampling` and
    `stage_geometry`: num_frames, height, width, vae_scale_temporal, vae_scale_spatial."""
    index, vae = {}, {}
    if folder is not None:
        index = read_model_index(Path(folder))
        vae = read_config_json(Path(folder) / "vae" / "config.json", "the AutoencoderKLWan config.json")
    vae_defaults = _VAE_DEFAULTS
    defaults = dict(zip(("num_frames", "height", "width"), WAN21_SIZE))
    settings = {
        name: value if value is not None else index.get(f"default_{name}", defaults[name])
        for name, value in (("num_frames", num_frames), ("height", height), ("width", width))
    }
    for key, name in (
        ("vae_scale_temporal", "scale_factor_temporal"),
        ("vae_scale_spatial", "scale_factor_spatial"),
    ):
        settings[key] = vae.get(name, vae_defaults[name].default)
    return settings


def check_folder(folder: str | os.PathLike, image: bool | None = None) -> float | None:
    """Refuse a pipeline folder the pipeline cannot sample as its model was trained (from its JSON configs,
    before any weights load): an incomplete expert split, an image-to-video transformer that does not fit
    its VAE or lacks its CLIP image encoder, and, when `image` says whether the call gives a conditioning
    image, an image-to-video model without one or a text-to-video model with one. Returns the folder's
    boundary_ratio (None: one transformer)."""
    folder = Path(folder)
    index = read_model_index(folder)
    boundary_ratio = expert_split(index, folder)
    expand = bool(index.get("expand_timesteps", False))
    names = ("transformer",) + ((EXPERT_COMPONENT,) if boundary_ratio is not None else ())
    for name in names:
        config_path = folder / name / "config.json"
        if not config_path.is_file():  # reported by the component loader
            continue
        config = get_transformer_config(config_path)
        mode = image_mode(config, expand)
        if mode in ("clip", "channels"):  # the extra input channels must fit the VAE
            vae = read_config_json(folder / "vae" / "config.json", "the AutoencoderKLWan config.json")
            channels = vae.get("z_dim", _VAE_DEFAULTS["z_dim"].default)
            temporal = vae.get("scale_factor_temporal", _VAE_DEFAULTS["scale_factor_temporal"].default)
            check_image_model(config, expand, channels, temporal, config_path)
        missing = [n for n in IMAGE_ENCODER_COMPONENTS if index.get(n) in (None, [None, None])]
        if mode == "clip" and missing:
            raise CheckpointError(
                f"{folder / 'model_index.json'}: an image-to-video model with a CLIP image branch needs "
                f"{' and '.join(missing)}; add them (a WanImageToVideoPipeline folder has both)"
            )
        if image is not None:
            check_image_given(mode, image, folder)
    return boundary_ratio


def plan_from_folder(
    folder: str | os.PathLike,
    num_frames: int | None = None,
    height: int | None = None,
    width: int | None = None,
    schedule=None,
    sampler: str | None = None,
    guidance_scale: float | tuple[float, ...] | None = None,
    solver: str | None = None,
    image: bool = False,
) -> SamplingPlan:
    """Check a call's size and sampling settings against a saved pipeline folder's configs, without loading
    weights; `None` takes the folder's defaults, and `image` says whether the call gives a conditioning
    image. Returns what the pipeline samples for that call (the size is `plan.geometry[0].pixel`)."""
    check_folder(folder, image)
    video = video_settings(folder, num_frames, height, width)
    return plan_sampling(
        pyramid_config_or_plain(folder),
        schedule=schedule,
        sampler=sampler,
        guidance_scale=guidance_scale,
        patch_size=get_transformer_config(folder)["patch_size"],
        solver=solver,
        **video,
    )


def check_fits_in_memory(plan: SamplingPlan, channels: int, device: torch.device) -> None:
    """Refuse, before anything is allocated, a video whose float32 pixels and latent alone would not fit in
    the device's memory (sampling and decoding need several times more)."""
    frames, height, width = plan.geometry[0].pixel
    needed = 4 * (3 * frames * height * width + channels * math.prod(plan.geometry[0].latent))
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
    else:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if needed > total:
        raise InputError(
            f"a {frames}x{height}x{width} video needs at least {needed / 2**30:.1f} GiB for its pixels and "
            f"latent alone, more than the {total / 2**30:.1f} GiB of {device.type} memory; choose a smaller "
            "--num-frames, --height or --width"
        )
