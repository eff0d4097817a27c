"""Denoiser wrappers: the Wan transformer as a velocity model `model(x, sigma, **cond) -> dx/dsigma`.

Samplers and training objectives see only these wrappers (house style rule 5): they never handle the text
encoder, the VAE or Wan's timestep scale. `WanVelocity` is the one place where sigma in [0, 1] becomes
the transformer's timestep 1000 * sigma, and where an image-to-video model's conditioning joins its input;
`CFGVelocity` adds classifier-free guidance in the standard form uncond + w (cond - uncond), with both
branches in one batched transformer call.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import torch
from torch import nn

from pyramidal_wan.models.conditioning import ImageCondition

# Wan2.1 (and diffusers' FlowMatchEulerDiscreteScheduler) use num_train_timesteps = 1000: t = 1000 sigma.
TIMESTEP_SCALE = 1000.0


def per_sample(value: float | torch.Tensor, batch: int, like: torch.Tensor) -> torch.Tensor:
    """A float or a 0-d / (B,) tensor as a float32 (B,) tensor on `like`'s device."""
    values = torch.as_tensor(value, dtype=torch.float32, device=like.device)
    if values.ndim == 0:
        return values.expand(batch)
    if values.shape != (batch,):
        raise ValueError(f"expected a scalar or a ({batch},) tensor, got shape {tuple(values.shape)}")
    return values


class WanVelocity(nn.Module):
    """A diffusers `WanTransformer3DModel` as a velocity model: `forward(x, sigma, ...)` returns dx/dsigma.

    Wan2.1 predicts the flow-matching velocity eps - x0, which is dx/dsigma for x = (1 - sigma) x0 +
    sigma eps. The input is cast to the transformer's dtype and the output back to `x`'s, so samplers can
    keep their state in float32 while the transformer runs in bfloat16. `dtype` fixes that dtype for a
    wrapper whose transformer is not cast while it lives (a pipeline call's): diffusers' `dtype` property
    walks the parameters, a cost per model evaluation that WanPipeline pays once per call.
    """

    def __init__(self, transformer: nn.Module, dtype: torch.dtype | None = None):
        super().__init__()
        self.transformer = transformer
        self.dtype = dtype

    def forward(
        self,
        x: torch.Tensor,
        sigma: float | torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        attention_kwargs: dict[str, Any] | None = None,
        image_condition: ImageCondition | None = None,
    ) -> torch.Tensor:
        """Velocity at noise levels `sigma` (a float or one per sample).

        Args:
            x (`torch.Tensor`): noisy latents (B, C, T, H, W).
            sigma (`float` or `torch.Tensor`): noise level(s) in [0, 1], a scalar or shape (B,).
            encoder_hidden_states (`torch.Tensor`): text embeddings (B, N_txt, text_dim).
            attention_kwargs (`dict`, *optional*): passed to the transformer (e.g. `{"scale": s}` for LoRA).
            image_condition ([`ImageCondition`], *optional*): an image-to-video model's conditioning; the
                stage's is picked by the size of `x`.

        Returns:
            `torch.Tensor`: dx/dsigma, shaped and typed like `x`.
        """
        # Float32 timesteps, as WanPipeline passes them: Wan keeps its time embedder in float32.
        timestep = TIMESTEP_SCALE * per_sample(sigma, x.shape[0], x)  # (B,)
        dtype = self.transformer.dtype if self.dtype is None else self.dtype
        hidden, image = x, {}
        if image_condition is not None:
            patch_size = tuple(self.transformer.config.patch_size)
            hidden, timestep, embeds = image_condition.model_inputs(x, timestep, patch_size)
            if embeds is not None:  # the CLIP tokens of Wan2.1-I2V
                image["encoder_hidden_states_image"] = embeds.to(dtype)
        velocity = self.transformer(
            hidden_states=hidden.to(dtype),
            timestep=timestep,
            encoder_hidden_states=encoder_hidden_states.to(dtype),
            attention_kwargs=attention_kwargs,
            return_dict=False,
            **image,
        )[0]
        return velocity.to(x.dtype)


class CFGVelocity(nn.Module):
    """Classifier-free guidance around a velocity model: v = v_uncond + w (v_cond - v_uncond).

    With `batched` (the default) both branches run as one call on the batch [uncond; cond] (x, sigma and
    the text embeddings concatenated along the batch axis), which halves the number of transformer calls
    and pays on accelerators; otherwise as two calls, cond then uncond, as diffusers' WanPipeline does,
    which is as fast or faster on a CPU (`batched_cfg_pays`). With w = 1 only the conditional branch is
    evaluated. `guidance_scale` is a float or a (B,) tensor (one scale per sample).
    """

    def __init__(
        self,
        model: nn.Module,
        guidance_scale: float | torch.Tensor = 5.0,
        batched: bool = True,
        branch_context: Callable[[str], AbstractContextManager] | None = None,
    ):
        super().__init__()
        self.model = model
        self.guidance_scale = guidance_scale
        self.batched = batched
        # Entered around each call with its branch's name ("cond", "uncond", or "cond_uncond" for a batched
        # call), e.g. a transformer's `cache_context`: step caches keep one state per branch.
        self.branch_context = branch_context or (lambda name: contextlib.nullcontext())

    @property
    def uses_guidance(self) -> bool:
        """False when every scale is 1 (a single conditional call)."""
        scale = self.guidance_scale
        return bool((torch.as_tensor(scale) != 1.0).any())

    def forward(
        self,
        x: torch.Tensor,
        sigma: float | torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        negative_encoder_hidden_states: torch.Tensor | None = None,
        **kwargs,
    ) -> torch.Tensor:
        """Guided velocity; `negative_encoder_hidden_states` (the unconditional text) is needed unless w = 1.

        Args:
            x (`torch.Tensor`): noisy latents (B, C, T, H, W).
            sigma (`float` or `torch.Tensor`): noise level(s), a scalar or shape (B,).
            encoder_hidden_states (`torch.Tensor`): prompt embeddings (B, N_txt, D).
            negative_encoder_hidden_states (`torch.Tensor`, *optional*): negative-prompt embeddings, the same
                shape as `encoder_hidden_states`.
            **kwargs: passed to the wrapped model (e.g. `attention_kwargs`).

        Returns:
            `torch.Tensor`: the guided velocity, shaped like `x`.
        """
        if not self.uses_guidance:
            with self.branch_context("cond"):
                return self.model(x, sigma, encoder_hidden_states, **kwargs)
        if negative_encoder_hidden_states is None:
            raise ValueError(
                "guidance_scale != 1 needs negative_encoder_hidden_states (the unconditional text)"
            )
        if negative_encoder_hidden_states.shape != encoder_hidden_states.shape:
            raise ValueError(
                f"negative text embeddings {tuple(negative_encoder_hidden_states.shape)} must have the shape "
                f"of the prompt embeddings {tuple(encoder_hidden_states.shape)} to share one batched call"
            )
        batch = x.shape[0]
        if self.batched:
            sigma_in = per_sample(sigma, batch, x).repeat(2)  # (2B,)
            text = torch.cat([negative_encoder_hidden_states, encoder_hidden_states])  # (2B, N_txt, D)
            with self.branch_context("cond_uncond"):
                uncond, cond = self.model(torch.cat([x, x]), sigma_in, text, **kwargs).chunk(
                    2
                )  # (B, ...) each
        else:
            with self.branch_context("cond"):
                cond = self.model(x, sigma, encoder_hidden_states, **kwargs)
            with self.branch_context("uncond"):
                uncond = self.model(x, sigma, negative_encoder_hidden_states, **kwargs)
        scale = self.guidance_scale
        if isinstance(scale, torch.Tensor) and scale.ndim > 0:
            scale = per_sample(scale, batch, x).to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
        return uncond + scale * (cond - uncond)


def batched_cfg_pays(device: torch.device) -> bool:
    """Whether one batch-2 CFG call beats two batch-1 calls on `device`: on accelerators it amortises
    launches and fills the device; on a CPU the matrix products are the same and the larger buffers cost
    more (measured with `pyramidal-wan bench`: batched 0-0-N was 1.04-1.19x slower than WanPipeline)."""
    return torch.device(device).type != "cpu"
