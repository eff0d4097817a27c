"""The pyramid made visible: one prompt's clean estimate at the end of each stage, and the spectral argument.

Why a pyramid loses nothing (METHOD.md 3.4): natural signals carry little power at high frequencies, so
noise drowns the detail band first. With x = (1 - sigma) x0 + sigma eps and an orthonormal Fourier
transform, white noise has power sigma^2 at every frequency, so a frequency of x0 with power P(f) is under
the noise where P(f) < sigma^2 / (1 - sigma)^2 (the noise floor in data units). Stage i represents
spatial frequencies up to its Nyquist limit, 1/2 cycle per latent pixel divided by the product of the
spatial factors above it, over the noise levels [sigma_c^(i), sigma_n^(i)]; dropping the band above that
limit is harmless when the data's spectrum there lies below the floor at sigma_c^(i).

`make_pyramid_view` samples one prompt at `evaluate` time and writes the stage videos, the figures and
`view.json` that the report shows. `spectrum_figure` draws the radially averaged power spectrum of a clean
latent (the sample's own final latent, in the normalised space the noise lives in) against every stage's
floors and Nyquist limits.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from pyramidal_wan.eval.figures import log_x_axis, save_figure
from pyramidal_wan.pipelines.export import DEFAULT_FPS
from pyramidal_wan.utils.io import write_json
from pyramidal_wan.utils.video import to_uint8_frames, write_video

VIEW_FILE = "view.json"
VIEW_FIGURES = ("pyramid_stages", "pyramid_spectrum")  # their PNG and SVG sit beside view.json


def radial_power_spectrum(latent: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(frequencies in cycles per latent pixel, mean power) of the spatial 2-D FFT (orthonormal) of a latent
    (..., H, W), averaged over rings of integer radius k = 1 .. min(H, W) // 2 (f = k / min(H, W)) and over
    every leading axis (channels, frames). White noise of variance s^2 has power s^2 at every f."""
    height, width = latent.shape[-2:]
    planes = latent.detach().to(torch.float64).reshape(-1, height, width)
    power = torch.fft.fft2(planes, norm="ortho").abs().square().mean(0)  # (H, W)
    fy = torch.fft.fftfreq(height, dtype=torch.float64)[:, None]
    fx = torch.fft.fftfreq(width, dtype=torch.float64)[None, :]
    side = min(height, width)
    ring = torch.round(torch.sqrt(fy**2 + fx**2) * side).long()  # (H, W)
    rings = np.arange(1, side // 2 + 1)
    mean = np.array([power[ring == k].mean().item() for k in rings])
    return rings / side, mean


def noise_floor(sigma: float) -> float:
    """sigma^2 / (1 - sigma)^2: the power below which a frequency of x0 is under the noise at sigma."""
    return math.inf if sigma >= 1.0 else sigma**2 / (1.0 - sigma) ** 2


def stage_nyquist(factors, stage: int) -> float:
    """Highest spatial frequency (cycles per full-resolution latent pixel) stage `stage` represents."""
    scale = math.prod(f[1] for f in factors[:stage])
    return 0.5 / scale


@torch.no_grad()
def sample_stage_ends(pipe, prompt: str, plan, seed: int = 0) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
    """({stage: the clean estimate at its last model evaluation}, final latent) of one sampled video, in the
    normalised latent space (each estimate at its own stage's resolution)."""
    ends: dict[int, torch.Tensor] = {}

    def keep_last(info):
        ends[int(info["stage"])] = info["denoised"].float().cpu()

    final = pipe(
        prompt,
        plan=plan,
        output_type="latent",
        generator=torch.Generator().manual_seed(seed),
        callback=keep_last,
    ).frames
    return ends, final.float().cpu()


def stage_evaluations(plan) -> dict[int, int]:
    """{stage index: model evaluations} of a sampling plan, stage 0 = full resolution (a schedule lists its
    steps lowest resolution first; a plain 0-...-0-N plan has the one stage 0)."""
    stages = len(plan.geometry)
    return dict(zip(range(stages - 1, -1, -1), plan.steps[-stages:]))


def to_full_resolution(pipe, latent: torch.Tensor, stage: int, shape) -> torch.Tensor:
    """Carry a stage latent to full resolution with R_up (Haar: nearest neighbour), as the next stage would
    see its signal; a latent already at `shape` (PPF, stage 0) is returned as it is."""
    if tuple(latent.shape) == tuple(shape):
        return latent
    pyramid = pipe.pyramid_config.pyramid()
    for transition in reversed(range(stage)):
        latent = pyramid.up(latent, transition)
    return latent


@torch.no_grad()
def decode_latents(pipe, latents: torch.Tensor) -> np.ndarray:
    """Normalised latents (B, C, T, H, W) -> uint8 videos (B, F, H, W, 3), decoded as the pipeline does."""
    return to_uint8_frames(pipe.decode_latents(latents.float()).float())


def stages_figure(videos: dict[int, np.ndarray], labels: dict[int, str], out_dir: Path):
    """Rows: stages from the lowest resolution to full; columns: first, middle and last frame."""
    from matplotlib.figure import Figure

    stages = sorted(videos, reverse=True)
    frames = videos[stages[0]].shape[0]
    picks = sorted({0, frames // 2, frames - 1})
    fig = Figure(figsize=(1.9 * len(picks) + 1.6, 1.9 * len(stages)))
    axes = np.atleast_2d(fig.subplots(len(stages), len(picks), squeeze=False))
    for row, stage in enumerate(stages):
        for col, frame in enumerate(picks):
            ax = axes[row, col]
            ax.imshow(videos[stage][frame], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(f"frame {frame}", fontsize=9)
            if col == 0:
                ax.set_ylabel(labels[stage], fontsize=8)
    return save_figure(fig, out_dir, "pyramid_stages")


def spectrum_figure(latent: torch.Tensor, pyramid, factors, out_dir: Path):
    """The data's radially averaged spectrum against each stage's noise floors and Nyquist limit."""
    from matplotlib.figure import Figure

    freqs, power = radial_power_spectrum(latent)
    fig = Figure(figsize=(7.5, 4.8))
    ax = fig.subplots()
    ax.loglog(freqs, power, "k.-", label="clean latent (the sample's x0)", zorder=4)
    for segment in pyramid.segments:
        colour = f"C{segment.stage}"
        nyquist = stage_nyquist(factors, segment.stage)
        if segment.sigma_c > 0:
            ax.axhline(
                noise_floor(segment.sigma_c),
                color=colour,
                linewidth=1.5,
                label=f"stage {segment.stage}: noise at sigma_c = {segment.sigma_c:.3f}",
            )
        if segment.sigma_n < 1:
            ax.axhline(
                noise_floor(segment.sigma_n),
                color=colour,
                linestyle="--",
                linewidth=1,
                label=f"stage {segment.stage}: noise at sigma_n = {segment.sigma_n:.3f}",
            )
        ax.axvline(
            nyquist,
            color=colour,
            linestyle=":",
            linewidth=1.5,
            label=f"stage {segment.stage}: Nyquist {nyquist:.3g}",
        )
    log_x_axis(ax, [freqs[0], freqs[-1]], pad=1.1)
    ax.set_xlabel("spatial frequency (cycles per latent pixel)")
    ax.set_ylabel("power per frequency (normalised latent)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.02, 1.0))
    return save_figure(fig, out_dir, "pyramid_spectrum")


def make_pyramid_view(pipe, plan, out_dir: str | Path, prompt: str, seed: int = 0) -> dict:
    """Sample `prompt` with a loaded pipeline and plan; write each stage's decoded clean estimate as a GIF,
    the two figures and `view.json` (what the report shows: prompt, seed and a row per stage) into
    `out_dir`; return the view. `evaluate` calls this, so the report never runs a model."""
    out_dir = Path(out_dir)
    ends, final = sample_stage_ends(pipe, prompt, plan, seed)
    config = pipe.pyramid_config
    pyramid = config.pyramid()
    steps = stage_evaluations(plan)
    full = {s: to_full_resolution(pipe, x, s, final.shape) for s, x in ends.items()}
    videos = {s: decode_latents(pipe, x)[0] for s, x in full.items()}
    labels, stages = {}, []
    for stage in sorted(videos, reverse=True):
        segment = pyramid.segments[stage] if stage < len(pyramid.segments) else None
        size = "x".join(map(str, ends[stage].shape[-3:]))
        labels[stage] = f"stage {stage}\nlatent {size}"
        gif = f"stage{stage}.gif"
        write_video(out_dir / gif, videos[stage], fps=DEFAULT_FPS)
        sigmas = "-" if segment is None else f"[{segment.sigma_c:.3f}, {segment.sigma_n:.3f}]"
        stages.append(
            {"stage": stage, "latent": size, "sigmas": sigmas, "steps": steps.get(stage, "-"), "gif": gif}
        )
    stages_figure(videos, labels, out_dir)
    spectrum_figure(final, pyramid, config.factors, out_dir)
    view = {"schedule": plan.schedule, "prompt": prompt, "seed": seed, "stages": stages}
    write_json(out_dir / VIEW_FILE, view)  # last: a folder with view.json is complete
    return view
