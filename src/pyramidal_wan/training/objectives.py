"""Training objectives: plug-ins the one training loop runs without knowing which one it is.

An objective is built from the whole Config and owns its networks:
- `nets`: the trained networks by group, {"generator": ...} and, with a critic, {"critic": ...}; the trainer
  gives each group an optimiser, wraps it with accelerate and hands the wrapped modules back via `use`;
- frozen networks (an original model, a teacher) it builds and keeps itself;
- `critic_ratio`: critic updates per generator update (0: no critic). Each iteration runs one critic
  update, and a generator update first when the iteration index is a multiple of the ratio (METHOD.md 7.2);
- `generator_loss(batch, generator) -> (loss, logs)` and, with a critic, `critic_loss(batch, generator)`;
- `export_config()`: the PyramidConfig the exported model must be sampled with (None: a plain model).
Every model here is a velocity model `model(x, sigma, encoder_hidden_states) -> dx/dsigma`.
"""

from __future__ import annotations

import dataclasses
import importlib

import torch
import torch.nn.functional as F

from pyramidal_wan.errors import InputError
from pyramidal_wan.pyramid import Pyramid, PyramidConfig
from pyramidal_wan.training.config import Config, ObjectiveConfig
from pyramidal_wan.training.networks import frozen, student_network


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


class Objective:
    """Shared plumbing: the trained networks by group, and how the trainer hands back wrapped ones."""

    critic_ratio = 0

    def use(self, nets: dict) -> None:
        """Replace the networks by the trainer's wrapped (e.g. DDP) versions of the same modules."""
        self.nets = dict(nets)

    def export_config(self) -> PyramidConfig | None:
        return None


class FlowMatching(Objective):
    """Plain rectified flow at the given stage resolutions: x = (1 - sigma) x0 + sigma eps, target eps - x0.

    With stages (0,) this is ordinary (pre-)training; with all stages it is the multi-resolution fine-tune
    that makes the DMD-OT teacher (METHOD.md 7.3).
    """

    def __init__(self, config: Config):
        self.cfg = config.objective
        self.nets = {"generator": student_network(config.model, config.train.seed)}

    def generator_loss(self, batch: dict, generator: torch.Generator):
        model = self.nets["generator"]
        total, logs = 0.0, {}
        batch_size = batch["prompt_embeds"].shape[0]
        for stage, rows in split_evenly(batch_size, self.cfg.stages):
            x0 = batch["latents"][stage][rows]
            noise = torch.randn(x0.shape, generator=generator).to(x0)
            sigma = sample_sigmas(self.cfg, x0.shape[0], generator).to(x0)
            s = sigma.view(-1, 1, 1, 1, 1)
            pred = model(((1 - s) * x0 + s * noise), sigma, batch["prompt_embeds"][rows])
            loss = F.mse_loss(pred.float(), (noise - x0).float())
            total = total + loss * (x0.shape[0] / batch_size)
            logs[f"loss/stage{stage}"] = loss.detach()
        return total, logs


class PyramidalFlowMatching(Objective):
    """L_pyr + L_dist (METHOD.md 4.2-4.3): pyramidal targets per stage, anchored to the frozen original.

    L_dist = lambda sum_i w_i mean((P_i [F_theta(x) - F_orig(x)])^2): in the low band the pyramidal target
    equals the plain velocity, so the original model's prediction is a valid target there.
    """

    def __init__(self, config: Config):
        cfg = self.cfg = config.objective
        student = student_network(config.model, config.train.seed)
        self.nets = {"generator": student}
        # The original model is the student's initial weights, frozen (LoRA adapters are inert at init).
        self.reference = frozen(student) if cfg.dist_weight > 0 else None
        self.pyramid = Pyramid.build(cfg.num_stages, None, cfg.clean_ends, cfg.wavelet)
        s = cfg.num_stages
        self.dist_weights = cfg.dist_stage_weights or tuple(1.0 if i < s - 1 else 0.0 for i in range(s))
        if len(self.dist_weights) != s:
            raise InputError(f"dist_stage_weights needs {s} values, got {self.dist_weights}")
        if cfg.noisy_end_signal not in ("upsampled", "projected"):
            raise InputError(f"noisy_end_signal must be upsampled or projected, got {cfg.noisy_end_signal!r}")

    def export_config(self) -> PyramidConfig:
        cfg = self.cfg
        return PyramidConfig(
            num_stages=cfg.num_stages, clean_ends=self.pyramid_clean_ends(), wavelet=cfg.wavelet
        )

    def pyramid_clean_ends(self) -> tuple[float, ...]:
        return tuple(seg.sigma_c for seg in self.pyramid.segments[1:])

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
            pred = self.nets["generator"](x, sigma, embeds)
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


def _distillation(module: str, name: str):
    """A builder of a step-distillation objective (METHOD.md 6-8). Its module subclasses Objective, so it is
    imported when the objective is built rather than here (a module-level import would be circular)."""

    def build(config: Config):
        return getattr(importlib.import_module(f"pyramidal_wan.training.{module}"), name)(config)

    return build


OBJECTIVES = {
    "flow-matching": FlowMatching,
    "multires-fm": FlowMatching,
    "pyramidal": PyramidalFlowMatching,
    "dmd": _distillation("distill", "WanDMD"),
    "dmd-ot": _distillation("distill", "DMDOT"),
    "dmd-pt": _distillation("distill", "DMDPT"),
    "dmd-pt-star": _distillation("distill", "DMDPTStar"),
    "ppf-dmd": _distillation("distill", "PPFDMD"),  # DMD of a patch-pyramid student (METHOD.md 9)
    "adv-o": _distillation("adversarial", "AdvO"),
    "adv-p": _distillation("adversarial", "AdvP"),
    "ppf-fm": _distillation("ppf", "PPFFlowMatching"),  # PPF diffusion fine-tune (METHOD.md 9), lazy too
}


def build_objective(config: Config):
    """The objective named by config.objective.name (multires-fm: plain flow matching at every stage)."""
    cfg = config.objective
    if cfg.name not in OBJECTIVES:
        raise InputError(f"unknown objective {cfg.name!r}; choose one of {', '.join(OBJECTIVES)}")
    if cfg.name == "multires-fm":
        config = dataclasses.replace(
            config, objective=dataclasses.replace(cfg, stages=tuple(range(cfg.num_stages)))
        )
    return OBJECTIVES[cfg.name](config)
