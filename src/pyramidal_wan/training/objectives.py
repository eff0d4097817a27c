"""Training objectives: plug-ins the one training loop runs without knowing which one it is.

The base every objective shares (`Objective`, `ObjectiveOptions`) and the flow-matching objectives; the
registry of every method is `training.methods`. An objective is built from the whole Config and its
`methods.Method` entry, and owns its networks:
- `nets`: the trained networks by group, {"generator": ...} and, with a critic, {"critic": ...}; the trainer
  gives each group an optimiser, wraps it with accelerate and hands the wrapped modules back via `use`;
- frozen networks (an original model, a teacher) it builds and keeps itself;
- `critic_ratio`: critic updates per generator update (0: no critic). Each iteration runs one critic
  update, and a generator update first when the iteration index is a multiple of the ratio (METHOD.md 7.2);
- `generator_loss(batch, generator) -> (loss, logs)` and, with a critic, `critic_loss(batch, generator)`;
- `export_config()`: the PyramidConfig the exported model must be sampled with (None: a plain model);
- `run_record(data)`: what the run's `run.json` records beside its config (checked against the data).
Every model here is a velocity model `model(x, sigma, encoder_hidden_states) -> dx/dsigma`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F

from pyramidal_wan.data.cache import CONDITIONED_MODES
from pyramidal_wan.errors import InputError
from pyramidal_wan.models.conditioning import first_frame_training_condition, training_condition
from pyramidal_wan.models.wan_family import image_mode
from pyramidal_wan.pyramid import PyramidConfig
from pyramidal_wan.training.networks import frozen, student_network, transformer_paths
from pyramidal_wan.utils.ranges import NonNegative, NonNegativeInt, Positive, Probability

if TYPE_CHECKING:  # annotations only: the config module reads the registry, which imports this module
    from pyramidal_wan.training.config import Config


@dataclass
class ObjectiveOptions:
    """The options every objective has: its method name. Each method's options subclass this with their own
    fields (declared beside the objective, listed by `training.methods`); a key that is not a field of the
    named method's options is an error, so a setting the method would ignore never passes silently."""

    name: str = "flow-matching"


@dataclass
class MultiresOptions(ObjectiveOptions):
    """multires-fm: plain flow matching at every stage resolution of `pyramid:` (the DMD-OT teacher)."""

    timestep_sampling: Literal["uniform", "logit-normal"] = "uniform"  # how sigma is drawn
    logit_mean: float = 0.0
    logit_std: Positive = 1.0
    shift: Positive = 1.0  # sigma -> shift sigma / (1 + (shift - 1) sigma) after sampling


@dataclass
class FlowMatchingOptions(MultiresOptions):
    """flow-matching: plain flow matching at the given stage resolutions ((0,): ordinary pretraining)."""

    stages: tuple[NonNegativeInt, ...] = (0,)  # cache stages trained, an equal share of the batch each
    # Multi-resolution pretraining curriculum: rows [from_step, fraction of the batch at stage 0 (full
    # size), stage 1, ...]; the last row whose from_step <= the step applies, and `stages` is then unused.
    # Empty: `stages` split evenly. Like Wan, start at low resolution and keep every geometry in the mix.
    stage_mix: tuple[tuple[NonNegative, ...], ...] = ()
    image_fraction: Probability = 0.0  # of each stage's samples, the share trained as single frames (images)


@dataclass
class PyramidalOptions(ObjectiveOptions):
    """pyramidal: L_pyr + L_dist (METHOD.md 4.2-4.3) on the `pyramid:` stage layout."""

    noisy_end_signal: str = "upsampled"  # "upsampled" (R_up x0^(i+1)) or "projected" (P x0^(i))
    dist_weight: NonNegative = 1.0  # lambda_dist of L_dist against the frozen original model (0 disables)
    dist_stage_weights: tuple[NonNegative, ...] | None = (
        None  # per stage; None: 1 below S-1, 0 for the lowest
    )


NOISY_END_SIGNALS = ("upsampled", "projected")


def check_noisy_end_signal(value: str) -> None:
    if value not in NOISY_END_SIGNALS:
        raise InputError(f"noisy_end_signal must be upsampled or projected, got {value!r}")


def sample_sigmas(cfg: MultiresOptions, n: int, generator: torch.Generator) -> torch.Tensor:
    """Noise levels for plain flow matching: uniform or logit-normal (SD3), then optionally shifted."""
    if cfg.timestep_sampling == "uniform":
        sigma = torch.rand(n, generator=generator)
    elif cfg.timestep_sampling == "logit-normal":
        sigma = torch.sigmoid(cfg.logit_mean + cfg.logit_std * torch.randn(n, generator=generator))
    else:
        raise InputError(f"unknown timestep_sampling {cfg.timestep_sampling!r}; use uniform or logit-normal")
    return cfg.shift * sigma / (1 + (cfg.shift - 1) * sigma)


def split_evenly(batch_size: int, stages: tuple[int, ...]) -> list[tuple[int, slice]]:
    """Equal per-stage groups of a batch (METHOD.md 4.4): [(stage, slice of the batch), ...]."""
    if batch_size % len(stages):
        raise InputError(f"batch size {batch_size} must be divisible by the {len(stages)} trained stages")
    per = batch_size // len(stages)
    return [(stage, slice(j * per, (j + 1) * per)) for j, stage in enumerate(stages)]


def check_stage_mix(rows: tuple[tuple[float, ...], ...], num_stages: int) -> None:
    """Raise unless `rows` is a curriculum: [from_step, one non-negative fraction per stage], from step 0."""
    if rows and (
        rows[0][0] != 0
        or any(len(r) != num_stages + 1 or min(r[1:]) < 0 or sum(r[1:]) <= 0 for r in rows)
        or any(a[0] >= b[0] for a, b in zip(rows, rows[1:]))
    ):
        raise InputError(
            f"objective.stage_mix rows must be [from_step, one fraction per stage ({num_stages})], the first "
            f"from step 0, steps increasing, fractions non-negative and not all 0; got {rows}"
        )


def curriculum_groups(
    stage_mix: tuple[tuple[float, ...], ...], image_fraction: float, batch_size: int, step: int
) -> list[tuple[int, slice, bool]]:
    """The batch rows of each (stage, images?) group at `step` under a multi-resolution curriculum.

    `stage_mix` rows are [from_step, fraction of stage 0, fraction of stage 1, ...] (see ObjectiveConfig);
    the row in force is the last whose from_step <= step. Counts are the fractions of `batch_size` rounded
    by largest remainder, so they always sum to the batch. Within each stage, round(image_fraction * n) rows
    are trained as images: the first latent frame alone, which the causal VAE encodes from the first pixel
    frame only, so it is exactly that frame's image latent. Returns [(stage, rows, is_image), ...].
    """
    row = [r for r in stage_mix if r[0] <= step][-1]
    fractions = torch.tensor(row[1:], dtype=torch.float64)
    exact = fractions / fractions.sum() * batch_size
    counts = exact.floor().long()
    remainder_order = torch.argsort(exact - counts, descending=True, stable=True)
    counts[remainder_order[: batch_size - int(counts.sum())]] += 1
    groups, start = [], 0
    for stage, count in enumerate(counts.tolist()):
        images = round(image_fraction * count)
        for n, is_image in ((images, True), (count - images, False)):
            if n > 0:
                groups.append((stage, slice(start, start + n), is_image))
                start += n
    return groups


def image_rows(batch: dict, rows=slice(None), frames: int | None = None) -> torch.Tensor | None:
    """Of the batch's `rows`, those (bool (b,)) a clean-first-frame model trains image-to-video
    (`data.image_to_video`); None where there are none, and for single-frame samples (`frames` 1), whose
    only frame would be the image: they train text-to-image."""
    if "image_rows" not in batch or frames == 1:
        return None
    picked = batch["image_rows"][rows]
    return picked if bool(picked.any()) else None


def generated_frames(batch: dict, like: torch.Tensor, rows=slice(None)) -> torch.Tensor | None:
    """Loss weights (b, 1, T, 1, 1) for latents `like` (b, C, T, H, W) of the batch's `rows`: 0 on the given
    clean first frame of image-to-video rows, 1 on every generated frame; None where all are generated."""
    picked = image_rows(batch, rows, like.shape[2])
    if picked is None:
        return None
    weight = torch.ones(like.shape[0], 1, like.shape[2], 1, 1, device=like.device)
    weight[picked.to(like.device), :, 0] = 0.0
    return weight


def frame_mean(values: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """The mean of `values` (B, C, T, H, W) over the elements `weight` (B, 1, T, 1, 1) keeps (all of them
    without it), in float32."""
    if weight is None:
        return values.float().mean()
    weight = weight.expand_as(values)
    return (values.float() * weight).sum() / weight.sum()


def frame_mse(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """MSE in float32 over the frames `weight` keeps (`generated_frames`); the plain MSE without it."""
    if weight is None:
        return F.mse_loss(pred.float(), target.float())
    return frame_mean((pred.float() - target.float()).square(), weight)


def image_kwargs(batch: dict, stages=None, rows=slice(None), frames: int | None = None) -> dict:
    """{"image_condition": ...}, the model keyword of an image-to-video batch: the `rows`' cached conditions
    at `stages` (default: every stage, the model picking the one of its latents' size), the first `frames`
    latent frames of them, and CLIP tokens; {} for text-to-video.

    A clean-first-frame (TI2V) batch's condition is its stage latents' own first frames, for its
    image-to-video rows (`image_rows`): the pixel-space stage latents begin with the image latents.
    """
    if "image_rows" in batch:
        picked = image_rows(batch, rows, frames)
        if picked is None:
            return {}
        stages = range(len(batch["latents"])) if stages is None else stages
        latents = [batch["latents"][stage][rows][:, :, :frames] for stage in stages]
        return {"image_condition": first_frame_training_condition(latents, picked)}
    if "image_conditions" not in batch:
        return {}
    conditions = batch["image_conditions"]
    stages = range(len(conditions)) if stages is None else stages
    latents = [conditions[stage][rows][:, :, :frames] for stage in stages]  # (B, C, T, H, W) each
    embeds = batch["image_embeds"]
    embeds = None if embeds is None else embeds[rows]
    return {"image_condition": training_condition(latents, batch["mask_channels"], embeds)}


def check_image_conditioning(objective, data) -> None:
    """An image-to-video model trains on a cache holding its image conditions, with an objective that feeds
    them (`takes_image_conditions`); a text-to-video model on a cache without. Raises a one-line error."""
    generator = objective.nets["generator"]
    mode = image_mode(generator.get_submodule(transformer_paths(generator)["transformer"]).config)
    # A transformer config alone never says "first_frame" (expand_timesteps is a pipeline setting): TI2V's
    # cache holds no conditions, its image-to-video rows take the stage latents' first frames
    # (`methods.check_image_to_video`).
    mode = mode if mode in CONDITIONED_MODES else None
    cached = data.image_conditioning
    if mode != cached:
        raise InputError(
            f"the model's image conditioning is {mode or 'none (text-to-video)'} but the cache {data.folder} "
            f"holds {cached or 'none'}: run `pyramidal-wan prepare-data` with this model into a new --out"
        )
    if cached is not None and not objective.takes_image_conditions:
        raise InputError(
            f"{type(objective).__name__} does not train image-to-video models (a patch pyramid is "
            "text-to-video only); use a resolution-pyramid objective"
        )


class Objective:
    """Shared plumbing: the trained networks by group, and how the trainer hands back wrapped ones."""

    critic_ratio = 0
    takes_image_conditions = False  # feeds an image-to-video cache's conditions to its networks
    # gives a clean-first-frame model's image-to-video rows their first frame and leaves it out of its losses
    trains_clean_first_frame = False

    def use(self, nets: dict) -> None:
        """Replace the networks by the trainer's wrapped (e.g. DDP) versions of the same modules."""
        self.nets = dict(nets)

    def export_config(self) -> PyramidConfig | None:
        return None

    def run_record(self, data) -> dict:
        """Facts of the run its config does not state, for `run.json`; raises if the data cannot serve."""
        return {}


class FlowMatching(Objective):
    """Plain rectified flow at the given stage resolutions: x = (1 - sigma) x0 + sigma eps, target eps - x0.

    With stages (0,) this is ordinary (pre-)training; with all stages (multires-fm) it is the
    multi-resolution fine-tune that makes the DMD-OT teacher (METHOD.md 7.3); with a `stage_mix` curriculum
    it is Wan-style multi-resolution, multi-duration pretraining (pixel-space stage latents, single frames).
    An image-to-video model gets each sample's first-frame condition at the group's stage; a clean-first-frame
    model's image-to-video rows are not scored on their given first frame.
    """

    takes_image_conditions = True
    trains_clean_first_frame = True

    def __init__(self, config: Config, method):
        self.cfg = config.objective
        plain = isinstance(self.cfg, FlowMatchingOptions)  # multires-fm: every stage, an equal share
        self.stages = self.cfg.stages if plain else tuple(range(config.pyramid.num_stages))
        self.stage_mix = self.cfg.stage_mix if plain else ()
        self.image_fraction = self.cfg.image_fraction if plain else 0.0
        self.nets = {"generator": student_network(config.model, config.train.seed)}
        check_stage_mix(self.stage_mix, config.pyramid.num_stages)
        if not 0.0 <= self.image_fraction <= 1.0:
            raise InputError(f"objective.image_fraction must be in [0, 1], got {self.image_fraction}")

    def groups(self, batch_size: int, step: int) -> list[tuple[int, slice, bool]]:
        """[(stage, rows, is_image)]: the curriculum's groups, or the trained stages split evenly."""
        if self.stage_mix:
            return curriculum_groups(self.stage_mix, self.image_fraction, batch_size, step)
        return [(stage, rows, False) for stage, rows in split_evenly(batch_size, self.stages)]

    def generator_loss(self, batch: dict, generator: torch.Generator):
        model = self.nets["generator"]
        total, logs = 0.0, {}
        batch_size = batch["prompt_embeds"].shape[0]
        for stage, rows, is_image in self.groups(batch_size, batch.get("step", 0)):
            x0 = batch["latents"][stage][rows]
            if is_image:
                x0 = x0[:, :, :1]
            noise = torch.randn(x0.shape, generator=generator).to(x0)
            sigma = sample_sigmas(self.cfg, x0.shape[0], generator).to(x0)
            s = sigma.view(-1, 1, 1, 1, 1)
            image = image_kwargs(batch, (stage,), rows, x0.shape[2])
            pred = model(((1 - s) * x0 + s * noise), sigma, batch["prompt_embeds"][rows], **image)
            loss = frame_mse(pred, noise - x0, generated_frames(batch, x0, rows))
            total = total + loss * (x0.shape[0] / batch_size)
            logs[f"loss/stage{stage}{'-image' if is_image else ''}"] = loss.detach()
        return total, logs


class PyramidalFlowMatching(Objective):
    """L_pyr + L_dist (METHOD.md 4.2-4.3): pyramidal targets per stage, anchored to the frozen original.

    L_dist = lambda sum_i w_i mean((P_i [F_theta(x) - F_orig(x)])^2): in the low band the pyramidal target
    equals the plain velocity, so the original model's prediction is a valid target there. An
    image-to-video model (and its frozen original) gets each sample's first-frame condition at the stage; a
    clean-first-frame model's image-to-video rows are scored (L_pyr, L_dist) on their generated frames only.
    """

    takes_image_conditions = True
    trains_clean_first_frame = True

    def __init__(self, config: Config, method):
        cfg = self.cfg = config.objective
        s = config.pyramid.num_stages
        self.dist_weights = cfg.dist_stage_weights or tuple(1.0 if i < s - 1 else 0.0 for i in range(s))
        if len(self.dist_weights) != s:
            raise InputError(f"dist_stage_weights needs {s} values, got {self.dist_weights}")
        check_noisy_end_signal(cfg.noisy_end_signal)
        self.pyramid_config = config.pyramid
        self.pyramid = config.pyramid.pyramid()
        student = student_network(config.model, config.train.seed)
        self.nets = {"generator": student}
        # The original model is the student's initial weights, frozen (LoRA adapters are inert at init).
        self.reference = frozen(student) if cfg.dist_weight > 0 else None

    def export_config(self) -> PyramidConfig:
        """The run's `pyramid:` section: its layout and multi-step sampling defaults."""
        return self.pyramid_config

    def _noisy_end(self, latents, stage, rows):
        if stage == self.pyramid.num_stages - 1:
            return None
        if self.cfg.noisy_end_signal == "projected":
            return self.pyramid.project(latents[stage][rows], stage)
        return self.pyramid.up(latents[stage + 1][rows], stage)

    def generator_loss(self, batch: dict, generator: torch.Generator):
        total, logs = 0.0, {}
        batch_size = batch["prompt_embeds"].shape[0]
        for stage, rows in split_evenly(batch_size, tuple(range(self.pyramid.num_stages))):
            x0, embeds = batch["latents"][stage][rows], batch["prompt_embeds"][rows]
            noise = torch.randn(x0.shape, generator=generator).to(x0)
            rho = torch.rand(x0.shape[0], generator=generator).to(x0)
            u = self._noisy_end(batch["latents"], stage, rows)
            x, sigma, target = self.pyramid.training_point(x0, u, noise, stage, rho)
            image, frames = image_kwargs(batch, (stage,), rows), generated_frames(batch, x0, rows)
            pred = self.nets["generator"](x, sigma, embeds, **image)
            loss = frame_mse(pred, target, frames)
            logs[f"loss_pyr/stage{stage}"] = loss.detach()
            weight = self.cfg.dist_weight * self.dist_weights[stage]
            if weight > 0:
                with torch.no_grad():
                    ref = self.reference(x, sigma, embeds, **image)
                difference = (pred - ref).float()
                if frames is not None:  # P keeps frame 0 apart (block-diagonal): zero the given frame first
                    difference = difference * frames
                dist = frame_mean(self.pyramid.project(difference, stage).square(), frames)
                logs[f"loss_dist/stage{stage}"] = dist.detach()
                loss = loss + weight * dist
            total = total + loss * (x0.shape[0] / batch_size)
        return total, logs
