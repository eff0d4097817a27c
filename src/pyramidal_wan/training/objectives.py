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
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from pyramidal_wan.errors import InputError
from pyramidal_wan.pyramid import PyramidConfig
from pyramidal_wan.training.networks import frozen, student_network

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

    timestep_sampling: str = "uniform"  # "uniform" or "logit-normal" sigma
    logit_mean: float = 0.0
    logit_std: float = 1.0
    shift: float = 1.0  # sigma -> shift sigma / (1 + (shift - 1) sigma) after sampling


@dataclass
class FlowMatchingOptions(MultiresOptions):
    """flow-matching: plain flow matching at the given stage resolutions ((0,): ordinary pretraining)."""

    stages: tuple[int, ...] = (0,)  # cache stages trained, an equal share of the batch each


@dataclass
class PyramidalOptions(ObjectiveOptions):
    """pyramidal: L_pyr + L_dist (METHOD.md 4.2-4.3) on the `pyramid:` stage layout."""

    noisy_end_signal: str = "upsampled"  # "upsampled" (R_up x0^(i+1)) or "projected" (P x0^(i))
    dist_weight: float = 1.0  # lambda_dist of L_dist against the frozen original model (0 disables)
    dist_stage_weights: tuple[float, ...] | None = None  # per stage; None: 1 for i < S-1, 0 for the lowest


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


class Objective:
    """Shared plumbing: the trained networks by group, and how the trainer hands back wrapped ones."""

    critic_ratio = 0

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
    multi-resolution fine-tune that makes the DMD-OT teacher (METHOD.md 7.3).
    """

    def __init__(self, config: Config, method):
        self.cfg = config.objective
        everywhere = tuple(range(config.pyramid.num_stages))
        self.stages = self.cfg.stages if isinstance(self.cfg, FlowMatchingOptions) else everywhere
        self.nets = {"generator": student_network(config.model, config.train.seed)}

    def generator_loss(self, batch: dict, generator: torch.Generator):
        model = self.nets["generator"]
        total, logs = 0.0, {}
        batch_size = batch["prompt_embeds"].shape[0]
        for stage, rows in split_evenly(batch_size, self.stages):
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
