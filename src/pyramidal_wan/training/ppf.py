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

import torch

from pyramidal_wan.errors import InputError
from pyramidal_wan.models.denoiser import WanVelocity
from pyramidal_wan.models.ppf import PPFConfig, PPFTransformer, find_ppf_folder
from pyramidal_wan.pyramid import PyramidConfig, get_ppf_segments, ppf_stage_of, randn
from pyramidal_wan.training.config import Config
from pyramidal_wan.training.networks import load_transformer_for
from pyramidal_wan.training.objectives import Objective, split_evenly


def ppf_network(model_config, ppf_config: PPFConfig, seed: int) -> WanVelocity:
    """The PPF velocity model a run trains: `model.init` as a PPF model folder (resumed as saved), or a
    plain Wan model / preset wrapped in fresh Kronecker-initialised patch layers (METHOD.md 9)."""
    if model_config.lora_rank > 0:
        raise InputError(
            "ppf-fm trains the full model (the new patch layers have no base weights for a LoRA); "
            "set model.lora_rank=0"
        )
    folder = find_ppf_folder(model_config.init)
    if folder is not None:
        transformer = PPFTransformer.from_pretrained(folder)
        if transformer.ppf_config != ppf_config:
            raise InputError(
                f"{folder} is a PPF model with {transformer.ppf_config}, but the objective asks for "
                f"{ppf_config}; match objective.num_stages / clean_ends / stage_embedding to it"
            )
    else:
        transformer = PPFTransformer(load_transformer_for(model_config.init, seed), ppf_config)
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

    def __init__(self, config: Config):
        cfg = self.cfg = config.objective
        self.ppf_config = PPFConfig(
            num_stages=cfg.num_stages, clean_ends=cfg.clean_ends, stage_embedding=cfg.stage_embedding
        )
        self.segments = get_ppf_segments(self.ppf_config.clean_ends)
        self.nets = {"generator": ppf_network(config.model, self.ppf_config, config.train.seed)}

    def export_config(self) -> PyramidConfig:
        return self.ppf_config.pyramid_config()

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
