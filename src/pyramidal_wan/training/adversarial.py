"""Adversarial distillation: Adv-O and Adv-P (METHOD.md 8).

A frozen backbone F^dagger (Adv-O: the multi-resolution original-architecture model, `objective.teacher`;
Adv-P: PyramidalWan) reads real and fake stage latents re-noised with the same tau and eps (plain process
for Adv-O, pyramidal with noisy-end content P(.) for Adv-P); conv heads on its hooked blocks' hidden states
(`models.discriminator`) are the critic group, trained with the hinge loss. The student's loss is

    L_G = adv_weight * Adv + rec_weight * Rec,     Adv = -mean D(fake),
    Rec = MSE(x_s + (sigma' - sigma_k) G(x_s),  rec_steps CFG Euler steps of PyramidalWan from x_s to sigma'),

where sigma' is the next grid level of the stage (its clean end after the last step). The reconstruction
teacher is PyramidalWan, the student's initialisation `model.init`, in both variants. The Adv gradient flows
through the frozen backbone into x_hat; the heads are not updated by it. Tensors are stage latents
(B, C, T, H, W) and prompt embeddings (B, L, D).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from pyramidal_wan.errors import InputError
from pyramidal_wan.models.discriminator import Discriminator, block_features, default_blocks, token_grid
from pyramidal_wan.models.loading import is_two_expert
from pyramidal_wan.models.presets import get_transformer_config
from pyramidal_wan.pyramid import randn, sample_euler
from pyramidal_wan.pyramid.distillation import next_sigma
from pyramidal_wan.training.distill import FewStepObjective, FewStepOptions, frozen_network, unwrap
from pyramidal_wan.training.objectives import image_kwargs
from pyramidal_wan.utils.ranges import NonNegative, NonNegativeInt, PositiveInt

if TYPE_CHECKING:
    from pyramidal_wan.training.config import Config


@dataclass
class AdversarialOptions(FewStepOptions):
    """adv-o, adv-p: the discriminator heads and the loss weights (METHOD.md 8)."""

    adv_blocks: tuple[NonNegativeInt, ...] | None = None  # hooked; None: floor(L/2)-1, floor(3L/4)-1, L-1
    adv_weight: NonNegative = 1.0  # lambda_adv
    rec_weight: NonNegative = 2.0  # lambda_rec
    rec_steps: PositiveInt = 10  # Euler steps of the reconstruction teacher per student step
    head_channels: PositiveInt = 256  # discriminator head width


def hinge_discriminator_loss(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """L_D = mean relu(1 - D(real)) + mean relu(1 + D(fake)), over blocks, branches and tokens."""
    return F.relu(1.0 - real.float()).mean() + F.relu(1.0 + fake.float()).mean()


def hinge_generator_loss(fake: torch.Tensor) -> torch.Tensor:
    """Adv = -mean D(fake)."""
    return -fake.float().mean()


@contextmanager
def parameters_frozen(module: torch.nn.Module):
    """Build a graph in which `module`'s parameters are constants: the generator's backward then leaves the
    critic's .grad untouched (the trainer zeroes only the stepped group's gradients)."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    module.requires_grad_(False)
    try:
        yield
    finally:
        for param, flag in flags:
            param.requires_grad_(flag)


class AdversarialDistillation(FewStepObjective):
    """Hinge-GAN on frozen backbone features plus a reconstruction term (METHOD.md 8). Adv-O and Adv-P differ
    in their roles only: Adv-O's backbone is `objective.teacher` with plain re-noising, Adv-P's the student's
    initialisation with pyramidal re-noising."""

    def __init__(self, config: Config, method):
        super().__init__(config, method)
        cfg, model = self.cfg, config.model
        # Reconstruction teacher: PyramidalWan, the weights the student starts from (METHOD.md 8, step 3).
        self.rec_teacher = frozen_network(model.init, self.seed, self.precision, model.gradient_checkpointing)
        if cfg.teacher is None or cfg.teacher == model.init:
            self.backbone = self.rec_teacher  # Adv-P: one frozen copy serves both roles
        else:
            self.backbone = frozen_network(
                cfg.teacher, self.seed, self.precision, model.gradient_checkpointing
            )
        transformer = self.backbone.transformer
        blocks = cfg.adv_blocks if cfg.adv_blocks is not None else default_blocks(len(transformer.blocks))
        self.patch_size = tuple(transformer.config.patch_size)
        dim = transformer.config.num_attention_heads * transformer.config.attention_head_dim
        with torch.random.fork_rng(devices=[]):  # heads drawn from the run seed: reproducible, resumable
            torch.manual_seed(self.seed)
            self.nets["critic"] = Discriminator(dim, blocks, cfg.head_channels)

    @classmethod
    def check(cls, config: Config, method) -> None:
        super().check(config, method)
        cfg = config.objective
        for key, source in (("model.init", config.model.init), ("objective.teacher", cfg.teacher)):
            if source is not None and is_two_expert(source):
                raise InputError(
                    f"{method.name} reads one backbone's features but {key} {source} has two experts; "
                    "distil a two-expert model with dmd or dmd-ot"
                )
        if cfg.adv_blocks is not None:  # the backbone's depth from its config.json, no weights loaded
            blocks = cfg.adv_blocks
            num_layers = get_transformer_config(cfg.teacher or config.model.init)["num_layers"]
            if not blocks or any(not 0 <= b < num_layers for b in blocks) or len(set(blocks)) != len(blocks):
                raise InputError(f"adv_blocks {blocks} must be distinct block indices in 0..{num_layers - 1}")
        if cfg.rec_steps < 1 or cfg.head_channels < 1:
            raise InputError(
                f"rec_steps and head_channels must be >= 1, got {cfg.rec_steps}, {cfg.head_channels}"
            )

    def logits(self, heads, x_tau: torch.Tensor, tau, embeds, **image) -> torch.Tensor:
        """D(x_tau): (B, blocks, 2, T', H', W') logits of the heads on the backbone's hooked blocks."""
        features = block_features(self.backbone, x_tau, tau, embeds, unwrap(heads).blocks, **image)
        return heads(features, token_grid(x_tau, self.patch_size))

    @torch.no_grad()
    def reconstruction_target(self, x_s, sigma: float, sigma_next: float, batch: dict) -> torch.Tensor:
        """rec_steps guided Euler steps of PyramidalWan from x_s to sigma_next, uniform in sigma."""
        m = self.cfg.rec_steps
        sigmas = [sigma + (sigma_next - sigma) * j / m for j in range(m + 1)]
        conditions = {
            "encoder_hidden_states": batch["prompt_embeds"],
            "negative_encoder_hidden_states": self.unconditional_text(batch),
            **image_kwargs(batch),
        }
        return sample_euler(self.teacher_guidance(self.rec_teacher), x_s, sigmas, conditions, disable=True)

    def renoised_pair(self, batch: dict, n: int, x_hat: torch.Tensor, generator):
        """(real_tau, fake_tau, tau): the stage-i data latent and x_hat re-noised with one tau and one eps."""
        real = self.data_latent(batch, n)
        rho, tau = self.draw_tau(n, real.shape[0], real, generator)
        noise = randn(real.shape, real, generator)
        real_tau, _ = self.renoise(n, real, noise, rho, tau)
        fake_tau, _ = self.renoise(n, x_hat, noise, rho, tau)
        return real_tau, fake_tau, tau

    def generator_loss(self, batch: dict, generator: torch.Generator):
        """L_G = adv_weight * (-mean D(fake)) + rec_weight * Rec (METHOD.md 8)."""
        n, k = self.grid_point(batch, generator)
        embeds, image = batch["prompt_embeds"], image_kwargs(batch)
        x_s = self.student_input(batch, n, k, generator)
        velocity, x_hat = self.predict(x_s, n, k, embeds, **image)
        _, fake_tau, tau = self.renoised_pair(batch, n, x_hat, generator)
        heads = unwrap(self.nets["critic"])  # not the DDP wrapper: this forward has no critic backward
        with parameters_frozen(heads):
            adv = hinge_generator_loss(self.logits(heads, fake_tau, tau, embeds, **image))
        sigma, sigma_next = self.grid[n].sigmas[k], next_sigma(self.grid, n, k)
        x_student = x_s + (sigma_next - sigma) * velocity
        rec = F.mse_loss(x_student.float(), self.reconstruction_target(x_s, sigma, sigma_next, batch).float())
        loss = self.cfg.adv_weight * adv + self.cfg.rec_weight * rec
        return loss, {
            "loss_adv": adv.detach(),
            "loss_rec": rec.detach(),
            "stage": torch.tensor(self.grid[n].segment.stage),
        }

    def critic_loss(self, batch: dict, generator: torch.Generator):
        """Hinge L_D on real and detached fake samples, one backbone call for both (METHOD.md 8)."""
        n, x_hat = self.detached_student_sample(batch, generator)
        embeds = batch["prompt_embeds"]
        with torch.no_grad():
            real_tau, fake_tau, tau = self.renoised_pair(batch, n, x_hat, generator)
            heads = self.nets["critic"]
            features = block_features(
                self.backbone,
                torch.cat([real_tau, fake_tau]),
                tau.repeat(2),
                embeds.repeat(2, 1, 1),
                unwrap(heads).blocks,
                **image_kwargs(batch),  # repeated to the doubled batch by the condition itself
            )
        real, fake = heads(features, token_grid(real_tau, self.patch_size)).chunk(2)
        loss = hinge_discriminator_loss(real, fake)
        return loss, {
            "loss_disc": loss.detach(),
            "d_real": real.detach().float().mean(),
            "d_fake": fake.detach().float().mean(),
        }
