"""Training objectives: plug-ins with `generator_loss(batch, generator) -> (loss, logs)`.

An objective owns the networks it trains (`trainable`) and those it only reads (a frozen original model).
The trainer never branches on an objective's name: it looks the class up in `OBJECTIVES`.
Every model here is a velocity model `model(x, sigma, encoder_hidden_states) -> dx/dsigma`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pyramidal_wan.errors import InputError
from pyramidal_wan.pyramid import Pyramid
from pyramidal_wan.training.config import ObjectiveConfig


def sample_sigmas(cfg: ObjectiveConfig, n: int, generator: torch.Generator) -> torch.Tensor:
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


class FlowMatching:
    """Plain rectified flow at the given stage resolutions: x = (1 - sigma) x0 + sigma eps, target eps - x0.

    With stages (0,) this is ordinary (pre-)training; with all stages it is the multi-resolution fine-tune
    that makes the DMD-OT teacher (METHOD.md 7.3).
    """

    needs_reference = False

    def __init__(self, cfg: ObjectiveConfig, model, reference=None):
        self.cfg, self.model = cfg, model
        self.trainable = {"model": model}

    def generator_loss(self, batch: dict, generator: torch.Generator):
        total, logs = 0.0, {}
        batch_size = batch["prompt_embeds"].shape[0]
        for stage, rows in split_evenly(batch_size, self.cfg.stages):
            x0 = batch["latents"][stage][rows]
            noise = torch.randn(x0.shape, generator=generator).to(x0)
            sigma = sample_sigmas(self.cfg, x0.shape[0], generator).to(x0)
            s = sigma.view(-1, 1, 1, 1, 1)
            pred = self.model(((1 - s) * x0 + s * noise), sigma, batch["prompt_embeds"][rows])
            loss = F.mse_loss(pred.float(), (noise - x0).float())
            total = total + loss * (x0.shape[0] / batch_size)
            logs[f"loss/stage{stage}"] = loss.detach()
        return total, logs


class PyramidalFlowMatching:
    """L_pyr + L_dist (METHOD.md 4.2-4.3): pyramidal targets per stage, anchored to the frozen original.

    L_dist = lambda sum_i w_i mean((P_i [F_theta(x) - F_orig(x)])^2): in the low band the pyramidal target
    equals the plain velocity, so the original model's prediction is a valid target there.
    """

    def __init__(self, cfg: ObjectiveConfig, model, reference=None):
        self.cfg, self.model, self.reference = cfg, model, reference
        self.pyramid = Pyramid.build(cfg.num_stages, None, cfg.clean_ends, cfg.wavelet)
        s = cfg.num_stages
        self.dist_weights = cfg.dist_stage_weights or tuple(1.0 if i < s - 1 else 0.0 for i in range(s))
        if len(self.dist_weights) != s:
            raise InputError(f"dist_stage_weights needs {s} values, got {self.dist_weights}")
        if cfg.noisy_end_signal not in ("upsampled", "projected"):
            raise InputError(f"noisy_end_signal must be upsampled or projected, got {cfg.noisy_end_signal!r}")
        self.trainable = {"model": model}

    @property
    def needs_reference(self) -> bool:
        return self.cfg.dist_weight > 0

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
            pred = self.model(x, sigma, embeds)
            loss = F.mse_loss(pred.float(), target.float())
            logs[f"loss_pyr/stage{stage}"] = loss.detach()
            weight = self.cfg.dist_weight * self.dist_weights[stage]
            if weight > 0:
                with torch.no_grad():
                    ref = self.reference(x, sigma, embeds)
                low = self.pyramid.project((pred - ref).float(), stage)
                dist = low.square().mean()
                logs[f"loss_dist/stage{stage}"] = dist.detach()
                loss = loss + weight * dist
            total = total + loss * (x0.shape[0] / batch_size)
        return total, logs


OBJECTIVES = {
    "flow-matching": FlowMatching,
    "multires-fm": FlowMatching,
    "pyramidal": PyramidalFlowMatching,
}


def build_objective(cfg: ObjectiveConfig, model, reference=None):
    """The objective named by cfg.name; multires-fm trains plain flow matching at every stage resolution."""
    if cfg.name not in OBJECTIVES:
        raise InputError(f"unknown objective {cfg.name!r}; choose one of {', '.join(OBJECTIVES)}")
    if cfg.name == "multires-fm":
        cfg = type(cfg)(**{**cfg.__dict__, "stages": tuple(range(cfg.num_stages))})
    return OBJECTIVES[cfg.name](cfg, model, reference)
