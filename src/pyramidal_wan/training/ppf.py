"""PPF diffusion fine-tuning, objective "ppf-fm" (METHOD.md 9): plain flow matching at full resolution.

x = (1 - sigma) x0 + sigma eps with target eps - x0 on the stage-0 (full-resolution) cached latents. The
batch is split evenly over the PPF stages and each group draws sigma uniformly inside its stage interval
(sigma_c^(i), sigma_c^(i+1)], so every stage gets the same number of samples; the model then picks each
sample's kernel from its sigma, so a stage's patch layers see only that stage's noise levels (as in
PPFlow) while the shared transformer blocks see all of them.

The exported model folder is the base pipeline with a PPF transformer folder (`models/ppf.py`) and a
`pyramid_config.json` of kind "patch", which `PyramidalWanPipeline.from_pretrained` samples as a PPF model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from pyramidal_wan.errors import InputError
from pyramidal_wan.models.checkpoint import load_pyramid_config
from pyramidal_wan.models.denoiser import WanVelocity
from pyramidal_wan.models.ppf import PPFTransformer, find_ppf_folder, load_ppf_config, load_ppf_or_wan
from pyramidal_wan.pyramid import PyramidConfig, get_ppf_segments, ppf_stage_of, randn
from pyramidal_wan.training.objectives import Objective, ObjectiveOptions, split_evenly

if TYPE_CHECKING:
    from pyramidal_wan.training.config import Config


@dataclass
class PPFFlowMatchingOptions(ObjectiveOptions):
    """ppf-fm: no options of its own; the stage layout is the `pyramid:` section (kind "patch")."""


def check_ppf_init(model_config, ppf_config: PyramidConfig) -> None:
    """Reject a `model.init` a PPF run cannot start from, reading only JSON (before any weights load): a
    PPF folder with other stages, a resolution-pyramid folder, or a LoRA (METHOD.md 9)."""
    if model_config.lora_rank > 0:
        raise InputError(
            "PPF runs train the full model (the new patch layers have no base weights for a LoRA); "
            "set model.lora_rank=0"
        )
    init = Path(model_config.init)
    folder = find_ppf_folder(init)
    if folder is not None:
        saved = load_ppf_config(folder)
        if saved.layout() != ppf_config.layout():
            raise InputError(
                f"{folder} is a PPF model with {saved}, but the run asks for {ppf_config}; match "
                "pyramid.num_stages / clean_ends / stage_embedding to it"
            )
    elif init.is_dir() and load_pyramid_config(init) is not None:
        raise InputError(
            f"{init} is a resolution-pyramid model; PPF starts from a PPF model folder or a plain Wan model"
        )


def ppf_network(model_config, ppf_config: PyramidConfig, seed: int) -> WanVelocity:
    """The PPF velocity model a run trains: `model.init` as a PPF model folder (resumed as saved), or a
    plain Wan model / preset wrapped in fresh Kronecker-initialised patch layers (METHOD.md 9)."""
    check_ppf_init(model_config, ppf_config)
    transformer = load_ppf_or_wan(model_config.init, seed)
    if not isinstance(transformer, PPFTransformer):
        transformer = PPFTransformer(transformer, ppf_config)
    if model_config.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    return WanVelocity(transformer).train()


def sample_stage_sigmas(segments, batch_size: int, generator: torch.Generator) -> torch.Tensor:
    """(B,) noise levels, an equal share per PPF stage, uniform in each stage's (sigma_c, sigma_n]."""
    sigma = torch.empty(batch_size, dtype=torch.float64)
    for stage, rows in split_evenly(batch_size, tuple(range(len(segments)))):
        seg = segments[stage]
        u = torch.rand(rows.stop - rows.start, generator=generator, dtype=torch.float64)
        sigma[rows] = seg.sigma_n - u * seg.delta  # u in [0, 1): sigma in (sigma_c, sigma_n]
    return sigma


class PPFFlowMatching(Objective):
    """Plain rectified flow through a PPF model, sigma drawn per stage interval (METHOD.md 9)."""

    def __init__(self, config: Config, method):
        self.cfg = config.objective
        self.ppf_config = config.pyramid
        self.segments = get_ppf_segments(self.ppf_config.clean_ends)
        self.nets = {"generator": ppf_network(config.model, self.ppf_config, config.train.seed)}

    def export_config(self) -> PyramidConfig:
        """The run's `pyramid:` section (kind "patch"): layout and multi-step sampling defaults."""
        return self.ppf_config

    def generator_loss(self, batch: dict, generator: torch.Generator):
        x0, embeds = batch["latents"][0], batch["prompt_embeds"]  # full resolution: (B, C, T, H, W)
        sigma = sample_stage_sigmas(self.segments, x0.shape[0], generator)  # (B,) float64
        noise = randn(x0.shape, x0, generator)
        s = sigma.to(x0).view(-1, 1, 1, 1, 1)
        pred = self.nets["generator"]((1 - s) * x0 + s * noise, sigma.float().to(x0.device), embeds)
        per_sample = (pred.float() - (noise - x0).float()).square().flatten(1).mean(dim=1)  # (B,)
        stages = ppf_stage_of(sigma.float(), self.ppf_config.clean_ends)  # the kernel each sample used
        logs = {f"loss/stage{i}": per_sample[stages == i].mean().detach() for i in stages.unique().tolist()}
        return per_sample.mean(), logs
