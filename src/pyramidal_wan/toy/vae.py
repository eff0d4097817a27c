"""The toy VAE: a tiny `AutoencoderKLWan` (4x time, 4x space, 16 channels) and its training recipe.

`build_vae()` gives the calibrated architecture (1.88 M parameters; 17x64x64 RGB -> 16x5x16x16 latents).
`train_vae(out_dir, config)` trains it on clips rendered on the fly from the toy world and writes:

    out_dir/config.json          the `VAETrainConfig` of the run
    out_dir/checkpoint/          resume point: model.safetensors, optimizer.pt, state.safetensors and
                                 history.json (weights, optimiser state, step + generator state, losses);
                                 the previous one is kept as checkpoint-step{N}/ (utils.checkpoints)
    out_dir/vae/                 a diffusers `save_pretrained` folder whose `latents_mean` / `latents_std` are
                                 measured on the current weights (what `WanPipeline` normalises with)
    out_dir/metrics.json         held-out PSNR, latent statistics and losses at the last checkpoint

With `decoder="tiny"` the same trainer fits a `TinyWanDecoder` (`models.tiny_decoder`) to the frozen VAE
of `init`: it decodes the encoder's posterior means of the same crops and learns the same L1 + MSE to the
clips. It exports `out_dir/decoder/` (its diffusers folder) in place of `vae/`, and `metrics.json` gives
its held-out PSNR next to the VAE decoder's.

Training is exactly resumable: the clips of step s are a pure function of (seed, s), and the posterior-noise
generator's state is saved as a tensor with the weights and optimiser state.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKLWan
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from pyramidal_wan.errors import CheckpointError, InputError
from pyramidal_wan.models.tiny_decoder import TinyWanDecoder, load_tiny_decoder
from pyramidal_wan.models.vae_speed import fast_cpu_inference
from pyramidal_wan.toy.world import DEFAULT_WORLD, Scene, WorldConfig, eval_prompts, seeded_scene
from pyramidal_wan.utils.checkpoints import (
    Checkpoint,
    find_checkpoints,
    load_checked,
    recover_checkpoints,
    run_lock,
    save_checkpoint_folder,
)
from pyramidal_wan.utils.io import atomic_path, write_json
from pyramidal_wan.utils.video import to_pixel_tensor

LATENT_CHANNELS = 16
TEMPORAL_FACTOR = 4
SPATIAL_FACTOR = 4

# The calibrated toy architecture (docs: /work/shared/notes/toy-calibration.md). Wan2.1's VAE is the same
# module with base_dim 96, dim_mult [1, 2, 4, 4] and 8x spatial compression.
VAE_ARCHITECTURE = {
    "base_dim": 16,
    "z_dim": LATENT_CHANNELS,
    "dim_mult": [1, 2, 4],
    "num_res_blocks": 1,
    "temperal_downsample": [True, True],
    "attn_scales": [],
    "scale_factor_temporal": TEMPORAL_FACTOR,
    "scale_factor_spatial": SPATIAL_FACTOR,
}


def build_vae(seed: int = 0) -> AutoencoderKLWan:
    """A freshly initialised toy `AutoencoderKLWan`: weights drawn from `seed`, identity latent statistics."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoencoderKLWan(
            **VAE_ARCHITECTURE, latents_mean=[0.0] * LATENT_CHANNELS, latents_std=[1.0] * LATENT_CHANNELS
        )


def latent_shape(num_frames: int, height: int, width: int) -> tuple[int, int, int, int]:
    """Latent shape (C, T, H, W) of a (num_frames, height, width) clip; raises if the clip does not fit."""
    if (num_frames - 1) % TEMPORAL_FACTOR or height % SPATIAL_FACTOR or width % SPATIAL_FACTOR:
        raise InputError(
            f"toy VAE clips need num_frames = 4k + 1 and sizes divisible by {SPATIAL_FACTOR}, "
            f"got {num_frames} frames of {height}x{width}"
        )
    return (
        LATENT_CHANNELS,
        (num_frames - 1) // TEMPORAL_FACTOR + 1,
        height // SPATIAL_FACTOR,
        width // SPATIAL_FACTOR,
    )


@dataclass(frozen=True)
class VAETrainConfig:
    """Settings of one toy-VAE training run; the `TRAJECTORY_FIELDS` must match when resuming."""

    steps: int = 1000  # optimiser steps in total (a resumed run may raise it)
    batch_size: int = 8  # crops per step
    lr: float = 1e-4  # AdamW learning rate after warm-up (constant, so a run can be extended exactly)
    warmup_steps: int = 50  # linear learning-rate warm-up
    weight_decay: float = 0.0  # AdamW weight decay
    kl_weight: float = 1e-4  # weight of the mean per-element KL against per-pixel L1 + MSE
    grad_clip: float = 1.0  # max global gradient norm
    seed: int = 0  # weights, clip stream and posterior noise
    num_frames: int = 17  # frames per rendered clip (4k + 1); statistics and PSNR use whole clips
    resolution: int = 64  # clip height and width in pixels (divisible by 4)
    # Full-length crops: with 9-frame crops the causal VAE never saw latent frames 3-4 and reconstructed
    # frames 9-16 two to three times worse than frames 0-8 (measured after 200 steps).
    crop_frames: int = 17  # frames per training crop (4k + 1, at most num_frames)
    crop_size: int = 32  # height and width of a training crop (divisible by 4, at most resolution)
    # "random": crops anywhere; "object": crops around the first object (jittered by a quarter crop), so the
    # objects' interior patterns fill ~40% of a crop instead of ~7% of a frame. The patterns are the finest
    # detail of the world, and with random crops a warm-started VAE reconstructed none of them.
    crop_centre: str = "random"
    logvar_init: float = -8.0  # initial posterior log-variance, so early latents are not drowned in noise
    # From this step on only the decoder trains: the latents (and so any cache or model built on them) stay
    # fixed while reconstructions keep improving. None: the encoder trains throughout.
    freeze_encoder_from: int | None = None
    # What the decoder decodes while the encoder is frozen: "sample", a posterior sample as in the joint
    # phase, or "mean", the posterior mean. The cache stores the mean and the diffusion model learns to
    # produce it, so a decoder that learns from samples trains for noise its inputs never carry and blurs
    # the finest detail to absorb it (the posterior std is ~10% of the latents' std).
    decoder_latent: str = "sample"
    # A trained toy-VAE folder to start from instead of random weights: when the world changes (e.g. gains
    # interior patterns), the old VAE already knows colours, edges and motion, so adapting it is far cheaper
    # than training from scratch.
    init: str | None = None
    # What trains: "wan", the AutoencoderKLWan itself; "tiny", a TinyWanDecoder for the frozen VAE of
    # `init` (encoder and decoder both fixed), decoding the posterior means, as the pipeline's latents are.
    decoder: str = "wan"
    # What a tiny decoder learns to reproduce: "clip", the rendered clip; or "vae", the frozen VAE decoder's
    # video of the same latent. A generator's latents lie off the encoder's manifold, and a tiny decoder
    # fitted only to clips decodes them its own way (seen on the few-step model: yellow objects came out
    # green, with grey blotches beside them). Copying the VAE decoder on the generator's own latents
    # (`latents`) cut that ToyBench cost from 3.1 to 1.3 points; on noised encoder latents it did not help
    # (docs/toy.md, "The tiny decoder").
    decoder_target: str = "clip"
    # Tiny decoder only, with decoder_target "vae": Gaussian noise added to the decoded latent, per clip a
    # std drawn uniformly in [0, latent_noise] times each channel's latents_std, so the decoder also sees
    # latents off the encoder's manifold.
    latent_noise: float = 0.0
    # A TinyWanDecoder folder to start the tiny decoder from (default: random weights).
    init_decoder: str | None = None
    # A new tiny decoder's feature channels per level (TinyWanDecoder's `channels`; three levels for the
    # toy VAE's 4x space). Fewer channels decode faster and reconstruct worse.
    tiny_channels: tuple[int, ...] = (64, 32, 16)
    # Tiny decoder, decoder_target "vae": a file of a generator's raw latents (`toy sample-latents`) whose
    # crops the decoder learns from instead of the encoder's latents of rendered clips, so it copies the VAE
    # decoder on the latents it will decode in use.
    latents: str | None = None
    checkpoint_every: int = 100  # steps between checkpoints (each also exports vae/ and metrics)
    stats_clips: int = 256  # clips for the latent mean / std measurement
    eval_clips: int = 32  # held-out clips for the reconstruction PSNR

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "checkpoint_every", "stats_clips", "eval_clips"):
            if getattr(self, name) < 1:
                raise InputError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        for name in ("lr", "grad_clip"):
            if not getattr(self, name) > 0:
                raise InputError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.freeze_encoder_from is not None and self.freeze_encoder_from < 0:
            raise InputError(f"--freeze-encoder-from must be non-negative, got {self.freeze_encoder_from}")
        if self.warmup_steps < 0 or self.weight_decay < 0 or self.kl_weight < 0:
            raise InputError("warmup_steps, weight_decay and kl_weight must be non-negative")
        latent_shape(self.num_frames, self.resolution, self.resolution)
        latent_shape(self.crop_frames, self.crop_size, self.crop_size)
        if self.decoder_latent not in ("sample", "mean"):
            raise InputError(f"--decoder-latent must be sample or mean, got {self.decoder_latent!r}")
        if self.decoder not in ("wan", "tiny"):
            raise InputError(f"--decoder must be wan or tiny, got {self.decoder!r}")
        if self.decoder == "tiny" and self.init is None:
            raise InputError("--decoder tiny trains a decoder for an existing VAE: pass its folder as --init")
        object.__setattr__(self, "tiny_channels", tuple(self.tiny_channels))  # a list in config.json
        if len(self.tiny_channels) != 3 or not all(isinstance(c, int) and c > 0 for c in self.tiny_channels):
            raise InputError(
                f"--tiny-channels takes three positive channel counts (the toy VAE's 4x space is three "
                f"levels), e.g. 64,32,16; got {','.join(map(str, self.tiny_channels))}"
            )
        if self.decoder_target not in ("clip", "vae"):
            raise InputError(f"--decoder-target must be clip or vae, got {self.decoder_target!r}")
        if not 0.0 <= self.latent_noise < float("inf"):
            raise InputError(f"--latent-noise must be a non-negative number, got {self.latent_noise}")
        tiny_only = {
            "--decoder-target vae": self.decoder_target == "vae",
            "--latent-noise": self.latent_noise > 0,
            "--init-decoder": self.init_decoder is not None,
            "--tiny-channels": self.tiny_channels != (64, 32, 16),
            "--latents": self.latents is not None,
        }
        if self.decoder != "tiny" and any(tiny_only.values()):
            given = ", ".join(flag for flag, on in tiny_only.items() if on)
            raise InputError(f"{given} train a tiny decoder: add --decoder tiny")
        if self.init_decoder is not None and self.tiny_channels != (64, 32, 16):
            raise InputError("--init-decoder's folder sets its own channels: drop --tiny-channels")
        if self.latents is not None and self.decoder_target != "vae":
            raise InputError("--latents have no clips to reproduce: add --decoder-target vae")
        if self.latent_noise > 0 and self.decoder_target != "vae":
            raise InputError(
                "--latent-noise perturbs latents whose clip is then no target: add --decoder-target vae"
            )
        if self.crop_centre not in ("random", "object"):
            raise InputError(f"--crop-centre must be random or object, got {self.crop_centre!r}")
        if self.crop_frames > self.num_frames or self.crop_size > self.resolution:
            raise InputError(
                f"training crops ({self.crop_frames} frames of {self.crop_size}px) must fit the clips "
                f"({self.num_frames} frames of {self.resolution}px)"
            )

    def world(self) -> WorldConfig:
        """The toy world the clips are drawn from (default sampling, this run's clip geometry)."""
        return WorldConfig(num_frames=self.num_frames, height=self.resolution, width=self.resolution)


_CROP_STREAM = 2  # seed-sequence tag of the crop offsets (the world uses 0 and 1 for clips and prompts)
_LATENT_STREAM = 3  # seed-sequence tag of the generated-latent crops

# Changing any of these changes the sequence of weights, so a resumed run must keep them.
TRAJECTORY_FIELDS = (
    "batch_size",
    "lr",
    "warmup_steps",
    "weight_decay",
    "kl_weight",
    "grad_clip",
    "seed",
    "num_frames",
    "resolution",
    "crop_frames",
    "crop_size",
    "crop_centre",
    "logvar_init",
    "init",
    "decoder_latent",
    "decoder",
    "decoder_target",
    "latent_noise",
    "init_decoder",
    "tiny_channels",
    "latents",
)


def clip_batch(scenes: Sequence[Scene]) -> torch.Tensor:
    """Render scenes into a float batch (B, 3, F, H, W) in [-1, 1]."""
    return to_pixel_tensor(np.stack([scene.render() for scene in scenes]))


def training_batch(config: VAETrainConfig, step: int) -> torch.Tensor:
    """The crops of optimiser step `step` (0-based), (B, 3, crop_frames, crop_size, crop_size).

    Whole clips are rendered at the run's geometry (so objects keep their size and speed) and cropped at
    random offsets: the convolutional VAE learns the same local task at a quarter of the cost per clip
    (32x32 of 64x64). A pure function of (seed, step), which is what makes resuming exact.
    """
    world = config.world()
    scenes = [
        seeded_scene(config.seed, step * config.batch_size + b, "train", world)
        for b in range(config.batch_size)
    ]
    crops = []
    for scene, (t, y, x) in zip(scenes, crop_offsets(config, step, scenes)):
        frames = scene.render()
        crops.append(frames[t : t + config.crop_frames, y : y + config.crop_size, x : x + config.crop_size])
    return to_pixel_tensor(np.stack(crops))


def latent_batch(latents: torch.Tensor, config: VAETrainConfig, step: int) -> torch.Tensor:
    """Crops of generated raw latents (N, C, T, H, W) for step `step`: (B, C, t, h, w), the latent size of
    a training crop, from latent frame 0 (Wan's first latent frame is a single frame) at a random place.

    A pure function of (seed, step), like `training_batch`.
    """
    frames = (config.crop_frames - 1) // 4 + 1
    size = config.crop_size // 4
    rng = np.random.default_rng([_LATENT_STREAM, config.seed, step])
    index = rng.integers(0, latents.shape[0], config.batch_size)
    rows = rng.integers(0, latents.shape[3] - size + 1, config.batch_size)
    columns = rng.integers(0, latents.shape[4] - size + 1, config.batch_size)
    return torch.stack(
        [latents[i, :, :frames, y : y + size, x : x + size] for i, y, x in zip(index, rows, columns)]
    )


@torch.no_grad()
def sample_latents(
    model: str | Path,
    out: str | Path,
    n: int,
    schedule: str | None = None,
    seed: int = 1,
    batch_size: int = 16,
    progress: bool = True,
) -> torch.Tensor:
    """Generate `n` videos of training-split toy captions with the pipeline folder `model` (its default
    schedule unless `schedule`) and write their raw latents (what a decoder takes: the pipeline's
    normalised latents times `latents_std` plus `latents_mean`) to `out` as safetensors {"latents"}.

    Captions follow `seeded_scene(seed, i, "train")`, the clip stream of training, not ToyBench's prompts;
    each batch draws its noise from a generator seeded with (seed, first index). Returns the latents.
    """
    from pyramidal_wan.pipelines import PyramidalWanPipeline

    pipe = PyramidalWanPipeline.from_pretrained(model)
    pipe.set_progress_bar_config(disable=True)
    config = pipe.vae.config
    std = torch.tensor(config.latents_std).view(1, -1, 1, 1, 1)
    mean = torch.tensor(config.latents_mean).view(1, -1, 1, 1, 1)
    captions = [seeded_scene(seed, i, "train", DEFAULT_WORLD).caption() for i in range(n)]
    batches = []
    for start in tqdm(range(0, n, batch_size), desc="sample-latents", disable=not progress):
        generator = torch.Generator().manual_seed(
            int(np.random.SeedSequence([seed, start]).generate_state(1)[0])
        )
        latents = pipe(
            captions[start : start + batch_size], schedule=schedule, generator=generator, output_type="latent"
        ).frames
        batches.append(latents.float() * std + mean)
    latents = torch.cat(batches).contiguous()
    with atomic_path(out) as tmp:
        save_file({"latents": latents}, tmp)
    return latents


def load_latents(path: str | Path, config: VAETrainConfig, z_dim: int) -> torch.Tensor:
    """The `latents` tensor of a `toy sample-latents` file, checked against the run's crops and VAE."""
    try:
        latents = load_file(path)["latents"]
    except (OSError, KeyError, ValueError, SafetensorError) as err:
        raise InputError(f"{path}: not a latents file ({err}); write one with toy sample-latents") from None
    frames, size = (config.crop_frames - 1) // 4 + 1, config.crop_size // 4
    if latents.ndim != 5 or latents.shape[1] != z_dim or latents.shape[2] < frames or latents.shape[3] < size:
        raise InputError(
            f"{path}: latents of shape {tuple(latents.shape)} do not hold ({z_dim}-channel) crops of "
            f"{frames} frames x {size}x{size}; sample them at this VAE's channels and the crop size"
        )
    return latents.float()


def crop_offsets(
    config: VAETrainConfig, step: int, scenes: Sequence[Scene] | None = None
) -> list[tuple[int, int, int]]:
    """(frame, row, column) offsets of the training crops of step `step`, one per clip of the batch.

    With `crop_centre="object"`, `scenes` (the batch's clips) place each crop around its first object's
    centre in the crop's middle frame, jittered by up to a quarter crop and kept inside the frame.
    """
    rng = np.random.default_rng([_CROP_STREAM, config.seed, step])
    offsets = []
    last = config.resolution - config.crop_size
    for b in range(config.batch_size):
        t = int(rng.integers(config.num_frames - config.crop_frames + 1))
        y, x = (int(v) for v in rng.integers(last + 1, size=2))
        if config.crop_centre == "object":
            cx, cy = scenes[b].centers()[t + config.crop_frames // 2, 0]
            jy, jx = rng.uniform(-config.crop_size / 4, config.crop_size / 4, size=2)
            y = int(np.clip(round(cy - config.crop_size / 2 + jy), 0, last))
            x = int(np.clip(round(cx - config.crop_size / 2 + jx), 0, last))
        offsets.append((t, y, x))
    return offsets


def prepare_for_training(vae: AutoencoderKLWan, mean_pixel: torch.Tensor, logvar_init: float) -> None:
    """Initialise the output bias at the data's mean pixel and the posterior log-variance at `logvar_init`.

    Why: from the default init, Adam at lr 1e-3 spent hundreds of steps on the mean colour while the encoder
    drifted to an input-independent latent (measured: reconstructions uniform gray, PSNR ~16 dB after 160
    steps); overfitting one batch at lr 3e-4 reached loss 0.13 in 100 steps with the bias, 0.40 without.
    A small starting posterior variance keeps the decoder from learning to ignore noisy latents.
    mean_pixel: (3,) in [-1, 1].
    """
    with torch.no_grad():
        vae.decoder.conv_out.bias.copy_(mean_pixel)
        vae.quant_conv.bias[LATENT_CHANNELS:].fill_(logvar_init)


def compute_vae_loss(
    vae: AutoencoderKLWan,
    video: torch.Tensor,
    kl_weight: float,
    generator: torch.Generator | None = None,
    train_encoder: bool = True,
    decode_mean: bool = False,
    decoder: TinyWanDecoder | None = None,
    distill: bool = False,
    latent_noise: float = 0.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Reconstruction (L1 + MSE per pixel) plus `kl_weight` times the mean per-element KL to N(0, I).

    video: (B, 3, F, H, W) in [-1, 1]. The latent is a posterior sample drawn with `generator`, or with
    `decode_mean` the posterior mean. Without `train_encoder` the encoder runs without a graph (the KL term
    is then a constant, kept for the logs). `decoder` decodes in place of the VAE's own decoder; with
    `distill` its target is the VAE decoder's video of the same latent instead of `video`, and with
    `latent_noise` that latent first gets Gaussian noise (`VAETrainConfig.latent_noise`).
    """
    with torch.set_grad_enabled(train_encoder and torch.is_grad_enabled()):
        posterior = vae.encode(video).latent_dist
    latent = posterior.mean if decode_mean else posterior.sample(generator=generator)
    if distill:
        return distill_decoder_loss(vae, decoder, latent, generator, latent_noise, posterior)
    recon = vae.decode(latent).sample if decoder is None else decoder(latent)  # (B, 3, F, H, W)
    return _reconstruction_loss(recon, video, posterior, kl_weight)


def distill_decoder_loss(
    vae: AutoencoderKLWan,
    decoder: TinyWanDecoder,
    latent: torch.Tensor,
    generator: torch.Generator | None = None,
    latent_noise: float = 0.0,
    posterior=None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """L1 + MSE of `decoder`'s video of raw `latent` against the frozen VAE decoder's video of it.

    With `latent_noise`, the latent first gets Gaussian noise of std drawn per clip in [0, latent_noise]
    times each channel's `latents_std` (`VAETrainConfig.latent_noise`). `posterior` only feeds the logged KL.
    """
    if latent_noise > 0:
        std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
        scale = latent_noise * torch.rand(latent.shape[0], 1, 1, 1, 1, generator=generator) * std
        latent = latent + scale * torch.randn(latent.shape, generator=generator)
    with torch.no_grad():
        target = vae.decode(latent).sample.clamp(-1.0, 1.0)
    return _reconstruction_loss(decoder(latent), target, posterior, 0.0)


def _reconstruction_loss(recon, target, posterior, kl_weight: float) -> tuple[torch.Tensor, dict[str, float]]:
    l1 = F.l1_loss(recon, target)
    mse = F.mse_loss(recon, target)
    kl = (
        torch.zeros(())
        if posterior is None
        else (0.5 * (posterior.mean.pow(2) + posterior.var - 1.0 - posterior.logvar).mean())
    )
    loss = l1 + mse + kl_weight * kl
    return loss, {"loss": loss.item(), "l1": l1.item(), "mse": mse.item(), "kl": kl.item()}


@torch.no_grad()
def measure_latent_stats(
    vae: AutoencoderKLWan, scenes: Sequence[Scene], batch_size: int = 8
) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of the posterior means of `scenes`' clips, over all latent positions.

    These are the `latents_mean` / `latents_std` that make (z - mean) / std roughly unit-scale, the way
    `WanPipeline` normalises latents.
    """
    total = torch.zeros(LATENT_CHANNELS, dtype=torch.float64)
    total_sq = torch.zeros(LATENT_CHANNELS, dtype=torch.float64)
    count = 0
    for i in range(0, len(scenes), batch_size):
        mean = vae.encode(clip_batch(scenes[i : i + batch_size])).latent_dist.mean.double()  # (B, C, T, H, W)
        total += mean.sum(dim=(0, 2, 3, 4))
        total_sq += mean.pow(2).sum(dim=(0, 2, 3, 4))
        count += mean[:, 0].numel()
    mu = total / count
    # Float64 sums keep E[z^2] - E[z]^2 accurate over ~10^5 positions.
    std = (total_sq / count - mu.pow(2)).clamp(min=1e-12).sqrt()
    return mu.tolist(), std.tolist()


@torch.no_grad()
def reconstruction_psnr(
    vae: AutoencoderKLWan,
    scenes: Sequence[Scene],
    batch_size: int = 8,
    decoder: TinyWanDecoder | None = None,
) -> float:
    """PSNR (dB, peak 1 on [0, 1] pixels) of decode(posterior mean) over all pixels of `scenes`' clips,
    decoded by the VAE or by `decoder`."""
    squared_error, count = 0.0, 0
    for i in range(0, len(scenes), batch_size):
        video = clip_batch(scenes[i : i + batch_size])
        latent = vae.encode(video).latent_dist.mode()
        recon = vae.decode(latent).sample if decoder is None else decoder(latent)
        squared_error += ((recon - video) / 2.0).pow(2).sum().item()
        count += video.numel()
    return -10.0 * math.log10(max(squared_error / count, 1e-12))


def trains_encoder(config: VAETrainConfig, step: int) -> bool:
    """Whether optimiser step `step` (0-based) updates the encoder (and the posterior's quant_conv)."""
    if config.decoder == "tiny":
        return False
    return config.freeze_encoder_from is None or step < config.freeze_encoder_from


def encoder_parameters(vae: AutoencoderKLWan) -> list[torch.nn.Parameter]:
    """The parameters that determine the latents: encoder and quant_conv."""
    return [*vae.encoder.parameters(), *vae.quant_conv.parameters()]


def _learning_rate(config: VAETrainConfig, step: int) -> float:
    """Linear warm-up to `lr`, then constant (a constant tail lets a finished run be extended exactly)."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    return config.lr


def _save_checkpoint(
    out_dir: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    step: int,
    generator: torch.Generator,
    history: list[dict],
) -> None:
    """Write the resume point `out_dir/checkpoint/` so that a kill at any instant leaves a complete one
    (`save_checkpoint_folder`): weights, optimiser state, step, generator state and loss history."""

    def write(folder: Path) -> None:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / "model.safetensors")
        torch.save(
            optimizer.state_dict(), folder / "optimizer.pt"
        )  # tensors and numbers: weights_only loads it
        save_file(
            {"step": torch.tensor(step, dtype=torch.int64), "generator": generator.get_state()},
            folder / "state.safetensors",
        )
        (folder / "history.json").write_text(json.dumps(history) + "\n")

    save_checkpoint_folder(out_dir, step, write)


def _legacy_step(folder: Path) -> int:
    """The step of a checkpoint written before completeness markers."""
    return int(load_file(folder / "state.safetensors")["step"])


def _load_checkpoint(
    checkpoint: Checkpoint,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
) -> tuple[int, list[dict]]:
    """Restore a `_save_checkpoint` folder in place; returns (step, history). A bad file is a one-line
    `CheckpointError` naming it (and the older complete checkpoint, if one is kept)."""
    weights = load_checked(checkpoint, "model.safetensors", load_file)
    optimizer_state = load_checked(checkpoint, "optimizer.pt", lambda p: torch.load(p, weights_only=True))
    state = load_checked(checkpoint, "state.safetensors", load_file)
    history = load_checked(checkpoint, "history.json", lambda p: json.loads(p.read_text()))
    try:
        model.load_state_dict(weights)
        optimizer.load_state_dict(optimizer_state)
        generator.set_state(state["generator"])
    except (RuntimeError, ValueError, KeyError) as err:
        first_line = str(err).splitlines()[0] if str(err) else repr(err)
        raise CheckpointError(f"{checkpoint.folder} does not fit this run's model: {first_line}") from err
    return int(state["step"]), history


def export_vae(vae: AutoencoderKLWan, folder: Path, config: VAETrainConfig) -> dict:
    """Measure latent statistics and held-out PSNR, then write a diffusers folder with those statistics.

    Returns the measurements. Statistics use a fixed, balanced set of train-split scenes and the PSNR a fixed
    set of held-out scenes (`eval_prompts`), so numbers are comparable across checkpoints.
    """
    world = config.world()
    was_training = vae.training
    vae.eval()
    mean, std = measure_latent_stats(vae, eval_prompts(config.stats_clips, "train", config.seed, world))
    psnr = reconstruction_psnr(vae, eval_prompts(config.eval_clips, "heldout", config.seed, world))
    vae.train(was_training)
    vae.register_to_config(latents_mean=mean, latents_std=std)
    with atomic_path(folder) as tmp:
        vae.save_pretrained(tmp, safe_serialization=True)
    return {"psnr_heldout": psnr, "latents_mean": mean, "latents_std": std}


def export_tiny_decoder(
    decoder: TinyWanDecoder, vae: AutoencoderKLWan, folder: Path, config: VAETrainConfig
) -> dict:
    """Measure the tiny decoder's held-out PSNR next to the VAE decoder's, then write its diffusers folder."""
    scenes = eval_prompts(config.eval_clips, "heldout", config.seed, config.world())
    was_training = decoder.training
    decoder.eval()
    psnr = reconstruction_psnr(vae, scenes, decoder=decoder)
    decoder.train(was_training)
    with atomic_path(folder) as tmp:
        decoder.save_pretrained(tmp, safe_serialization=True)
    return {"psnr_heldout": psnr, "psnr_heldout_vae_decoder": reconstruction_psnr(vae, scenes)}


def resume_config(out_dir: str | Path, **overrides) -> VAETrainConfig:
    """The saved config of the run in `out_dir` with `overrides` applied (None values are ignored)."""
    path = Path(out_dir) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"no toy-VAE run to resume in {out_dir} (no config.json); drop --resume")
    saved = json.loads(path.read_text())
    return VAETrainConfig(**{**saved, **{k: v for k, v in overrides.items() if v is not None}})


def _resolve_config(out_dir: Path, config: VAETrainConfig, resume: bool) -> VAETrainConfig | None:
    """Check the output folder against the request; on resume, check the saved run matches `config`.

    Returns the saved run's config when resuming, None for a new run.
    """
    saved_path = out_dir / "config.json"
    has_checkpoint = bool(find_checkpoints(out_dir, "checkpoint", _legacy_step))
    if not resume:
        if has_checkpoint or saved_path.exists():
            raise InputError(f"{out_dir} already holds a toy-VAE run; pass --resume or choose another --out")
        return None
    if not has_checkpoint or not saved_path.exists():
        raise CheckpointError(
            f"no toy-VAE checkpoint to resume in {out_dir}; drop --resume to start a new run"
        )
    saved = VAETrainConfig(**json.loads(saved_path.read_text()))
    changed = [f for f in TRAJECTORY_FIELDS if getattr(saved, f) != getattr(config, f)]
    if changed:
        shown = ", ".join(f"{f}={getattr(saved, f)}" for f in changed)
        raise InputError(f"--resume must keep the run's settings ({shown}); change only --steps or intervals")
    return saved


def _check_freeze_change(saved: VAETrainConfig, config: VAETrainConfig, step: int) -> None:
    """A resumed run may set or move `freeze_encoder_from` only where no step already taken is affected."""
    if saved.freeze_encoder_from == config.freeze_encoder_from:
        return
    affected = [v for v in (saved.freeze_encoder_from, config.freeze_encoder_from) if v is not None]
    if min(affected) < step:
        raise InputError(
            f"--freeze-encoder-from {config.freeze_encoder_from} would change steps already trained "
            f"(checkpoint at step {step}, run had {saved.freeze_encoder_from}); use a value >= {step}"
        )


def train_vae(
    out_dir: str | Path,
    config: VAETrainConfig,
    resume: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict:
    """Train the toy VAE into `out_dir` (layout in the module docstring); returns the final metrics.

    Checkpoints (with a `vae/` export and metrics) every `checkpoint_every` steps and at the end. With
    `resume`, continues from `out_dir/checkpoint` and reproduces the uninterrupted run exactly.
    """
    out_dir = Path(out_dir)
    _resolve_config(out_dir, config, resume)  # before anything is written, even the lock
    latents = None if config.latents is None else load_latents(config.latents, config, LATENT_CHANNELS)
    with run_lock(out_dir):
        if resume:
            recover_checkpoints(out_dir, "checkpoint", _legacy_step)
        return _train_vae(out_dir, config, _resolve_config(out_dir, config, resume), latents, progress, log)


def _train_vae(
    out_dir: Path,
    config: VAETrainConfig,
    saved: VAETrainConfig | None,
    latents: torch.Tensor | None,
    progress: bool,
    log,
) -> dict:
    resume = saved is not None
    vae = build_vae(config.seed).train()
    if config.init is not None:
        vae.load_state_dict(load_vae(config.init).state_dict())
    else:
        mean_pixel = clip_batch(eval_prompts(64, "train", config.seed, config.world())).mean(dim=(0, 2, 3, 4))
        prepare_for_training(vae, mean_pixel, config.logvar_init)
    # The model the optimiser trains: the VAE, or a tiny decoder for the frozen VAE.
    decoder = None
    if config.decoder == "tiny":
        vae.eval().requires_grad_(False)
        fast_cpu_inference(vae)  # the frozen VAE decodes the distillation targets in inference
        if config.init_decoder is not None:
            decoder = load_tiny_decoder(config.init_decoder, vae.config).train()
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(config.seed)
                decoder = TinyWanDecoder(channels=config.tiny_channels).train()
    model = vae if decoder is None else decoder
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    generator = torch.Generator().manual_seed(config.seed)
    step, history = 0, []
    if resume:
        checkpoint = find_checkpoints(out_dir, "checkpoint", _legacy_step)[0]
        step, history = _load_checkpoint(checkpoint, model, optimizer, generator)
        _check_freeze_change(saved, config, step)
        log(f"resumed toy-VAE training at step {step}/{config.steps} from {out_dir / 'checkpoint'}")
    write_json(out_dir / "config.json", dataclasses.asdict(config))
    if not resume:
        params = sum(p.numel() for p in model.parameters())
        name = "toy-VAE" if decoder is None else "tiny decoder"
        log(f"{name}: {params / 1e6:.2f} M parameters, {config.steps} steps of {config.batch_size} clips")

    metrics = {}
    smoothed = None
    started, start_step = time.perf_counter(), step
    bar = tqdm(total=config.steps, initial=step, desc="train-vae", disable=not progress, mininterval=5.0)
    while step < config.steps:
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(config, step)
        train_encoder = trains_encoder(config, step)
        if decoder is None:
            for param in encoder_parameters(vae):  # frozen parameters get no grad, so AdamW leaves them be
                param.requires_grad_(train_encoder)
        if latents is not None:
            loss, logs = distill_decoder_loss(
                vae, decoder, latent_batch(latents, config, step), generator, config.latent_noise
            )
        else:
            loss, logs = compute_vae_loss(
                vae,
                training_batch(config, step),
                config.kl_weight,
                generator,
                train_encoder=train_encoder,
                decode_mean=decoder is not None or (not train_encoder and config.decoder_latent == "mean"),
                decoder=decoder,
                distill=config.decoder_target == "vae",
                latent_noise=config.latent_noise,
            )
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        smoothed = logs["loss"] if smoothed is None else 0.95 * smoothed + 0.05 * logs["loss"]
        history.append({"step": step, **{k: round(v, 6) for k, v in logs.items()}})
        bar.update(1)
        bar.set_postfix(loss=f"{smoothed:.4f}")
        if step % config.checkpoint_every == 0 or step == config.steps:
            seconds_per_step = (time.perf_counter() - started) / max(step - start_step, 1)
            metrics = _checkpoint(out_dir, vae, decoder, optimizer, step, generator, history, config)
            metrics.update(loss_smoothed=smoothed, seconds_per_step=seconds_per_step)
            write_json(out_dir / "metrics.json", metrics)
            log(
                f"step {step}/{config.steps}: loss {smoothed:.4f} (l1 {logs['l1']:.4f}, "
                f"mse {logs['mse']:.5f}, kl {logs['kl']:.2f}), "
                f"held-out PSNR {metrics['psnr_heldout']:.2f} dB, {seconds_per_step:.2f} s/step; "
                f"saved {out_dir / ('vae' if decoder is None else 'decoder')}"
            )
    bar.close()
    if not metrics:  # resumed a finished run: report the exported state without retraining
        metrics = json.loads((out_dir / "metrics.json").read_text())
    return metrics


def _checkpoint(
    out_dir: Path,
    vae: AutoencoderKLWan,
    decoder: TinyWanDecoder | None,
    optimizer: torch.optim.Optimizer,
    step: int,
    generator: torch.Generator,
    history: list[dict],
    config: VAETrainConfig,
) -> dict:
    """Save the resume point, then export vae/ with measured statistics (or decoder/ with its PSNR);
    returns the export's metrics."""
    if decoder is not None:
        _save_checkpoint(out_dir, decoder, optimizer, step, generator, history)
        return {"step": step, **export_tiny_decoder(decoder, vae, out_dir / "decoder", config)}
    _save_checkpoint(out_dir, vae, optimizer, step, generator, history)
    return {"step": step, **export_vae(vae, out_dir / "vae", config)}


def load_vae(folder: str | Path) -> AutoencoderKLWan:
    """Load a toy-VAE diffusers folder (e.g. `out_dir/vae`), raising `CheckpointError` if it is not one."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise CheckpointError(
            f"{folder} is not a diffusers VAE folder (no config.json); train one with toy train-vae"
        )
    vae = AutoencoderKLWan.from_pretrained(folder).eval()
    if any(vae.config.get(key) != value for key, value in VAE_ARCHITECTURE.items()):
        raise CheckpointError(f"{folder} is not a toy VAE (its architecture differs from VAE_ARCHITECTURE)")
    return vae
