"""What a Wan model sees of its VAE and its conditioning image: normalised latents and image conditions.

Image-to-video Wan models take the conditioning image in one of three ways (`wan_family.WanVariant.image`):
"clip" (Wan2.1-I2V: a CLIP image embedding, and a first-frame latent plus a mask as 20 extra input channels),
"channels" (Wan2.2-I2V-A14B: the extra channels only) or "first_frame" (Wan2.2-TI2V-5B: the first latent
frame is the clean image latent and its tokens get timestep 0, diffusers' `expand_timesteps`).

In a pyramid the channels and the clean first frame are made at every stage's own size, as the stage latents
are (METHOD.md 4.5): the image is box-averaged in pixel space to the stage's height and width, then
VAE-encoded and normalised. `ImageCondition` holds them by latent size, so the velocity model picks the
condition of the stage it is called at from the latents' shape; the CLIP embedding is stage-independent.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.utils.torch_utils import get_module_execution_device

IMAGE_MODES = ("clip", "channels", "first_frame")


class LatentEncoder:
    """Pixel videos -> Wan's normalised latents: (posterior mean - latents_mean) / latents_std."""

    def __init__(self, vae):
        self.vae = vae.eval()
        cfg = vae.config
        self.mean = torch.tensor(cfg.latents_mean).view(1, -1, 1, 1, 1)
        self.inv_std = 1.0 / torch.tensor(cfg.latents_std).view(1, -1, 1, 1, 1)

    @torch.no_grad()
    def __call__(self, video: torch.Tensor) -> torch.Tensor:
        param = next(self.vae.parameters())
        latent = self.vae.encode(video.to(param.device, param.dtype)).latent_dist.mean.float()
        return (latent - self.mean.to(latent.device)) * self.inv_std.to(latent.device)


def stage_image(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """An image (B, 3, H, W) box-averaged to (B, 3, height, width): the spatial filter of the stage videos
    (`data.stages.downsample_video`), so a stage's conditioning image is that stage's clean first frame."""
    full_height, full_width = image.shape[-2:]
    if full_height % height or full_width % width:
        raise ValueError(f"a {full_height}x{full_width} image cannot be box-averaged to {height}x{width}")
    if (full_height, full_width) == (height, width):
        return image
    return F.avg_pool2d(image, (full_height // height, full_width // width))


def first_frame_mask(batch: int, latent_size: tuple[int, int, int], channels: int) -> torch.Tensor:
    """The mask channels of Wan's I2V input (B, channels, T, H, W): 1 on latent frame 0, 0 elsewhere.

    diffusers' `WanImageToVideoPipeline.prepare_latents` builds a per-pixel-frame mask (frame 0 repeated
    `vae_scale_factor_temporal` = `channels` times, so every latent frame covers that many pixel frames) and
    packs each latent frame's pixel frames into the channels; with only the first frame given, that packing
    is exactly this: all ones on latent frame 0, zeros after.
    """
    mask = torch.zeros(batch, channels, *latent_size)
    mask[:, :, 0] = 1.0
    return mask


def with_first_frame_mask(latent: torch.Tensor, mask_channels: int) -> torch.Tensor:
    """Wan's I2V conditioning channels of an image latent (B, C, T, H, W): [mask, latent] along channels."""
    mask = first_frame_mask(latent.shape[0], tuple(latent.shape[2:]), mask_channels)
    return torch.cat([mask.to(latent), latent], dim=1)  # (B, mask + C, T, H, W)


@torch.no_grad()
def encode_clip_image(image_encoder, image_processor, images, device: torch.device) -> torch.Tensor:
    """CLIP image tokens (B, N, D) of PIL images: the image encoder's penultimate hidden states, as diffusers'
    `WanImageToVideoPipeline.encode_image` makes them."""
    pixels = image_processor(images=images, return_tensors="pt")
    pixels = pixels.to(get_module_execution_device(image_encoder))
    return image_encoder(**pixels, output_hidden_states=True).hidden_states[-2].to(device)


def _repeat_batch(value: torch.Tensor, batch: int) -> torch.Tensor:
    """`value` (b, ...) repeated to `batch` rows (CFG's batched call stacks [uncond; cond] of one batch)."""
    if value.shape[0] == batch:
        return value
    if batch % value.shape[0]:
        raise ValueError(f"an image condition of batch {value.shape[0]} cannot serve a batch of {batch}")
    return value.repeat(batch // value.shape[0], *([1] * (value.ndim - 1)))


@dataclass(frozen=True)
class ImageCondition:
    """An image-to-video model's conditioning at every latent size it is sampled at.

    `latents` maps a latent size (T, H, W) to the stage's condition: for "clip" and "channels" the mask and
    image-latent channels (B, mask + C, T, H, W), concatenated after the noisy latents; for "first_frame"
    the clean image latent (B, C, 1, H, W), which replaces latent frame 0. `image_embeds` (B, N, D) are the
    CLIP tokens ("clip" only). `image_rows` (B,) bool ("first_frame" only; None: every row) are the rows that
    take the image: a clean-first-frame model also runs text-to-video, and training mixes both in one batch,
    the other rows keeping their noisy frame 0 and one timestep for every token.
    """

    mode: str
    latents: Mapping[tuple[int, int, int], torch.Tensor]
    image_embeds: torch.Tensor | None = None
    image_rows: torch.Tensor | None = None

    def __post_init__(self):
        if self.mode not in IMAGE_MODES:
            raise ValueError(f"unknown image mode {self.mode!r}; choose one of {', '.join(IMAGE_MODES)}")
        if (self.image_embeds is not None) != (self.mode == "clip"):
            raise ValueError("image_embeds go with mode 'clip' and only with it")
        if self.image_rows is not None and self.mode != "first_frame":
            raise ValueError("image_rows go with mode 'first_frame' only (other modes always take the image)")

    def at(self, x: torch.Tensor) -> torch.Tensor:
        """The condition of the stage whose latents `x` (B, C, T, H, W) are, with x's batch size."""
        size = tuple(x.shape[2:])
        if size not in self.latents:
            raise ValueError(
                f"no image condition for latents of size {size}; made for {sorted(self.latents)}"
            )
        return _repeat_batch(self.latents[size], x.shape[0]).to(x.device, x.dtype)

    def model_inputs(
        self, x: torch.Tensor, timestep: torch.Tensor, patch_size: tuple[int, int, int]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(hidden states, timestep, CLIP tokens) of one transformer call on latents `x` at `timestep` (B,).

        "first_frame" gives every token its own timestep (B, tokens), 0 on the clean first latent frame, as
        diffusers' `expand_timesteps` does (tokens in (T, H, W) order, patch size (1, p_h, p_w)).
        """
        condition = self.at(x)
        embeds = None if self.image_embeds is None else _repeat_batch(self.image_embeds, x.shape[0])
        if self.mode != "first_frame":
            return torch.cat([x, condition], dim=1), timestep, embeds  # (B, C + mask + C, T, H, W)
        frames, height, width = (n // p for n, p in zip(x.shape[2:], patch_size))
        per_token = timestep[:, None].repeat(1, frames * height * width)  # (B, tokens)
        per_token[:, : height * width] = 0.0
        per_token = torch.where(self._takes_image(x)[:, None], per_token, timestep[:, None])
        return self.with_clean_first_frame(x), per_token, embeds

    def _takes_image(self, x: torch.Tensor) -> torch.Tensor:
        """(B,) bool: the rows of `x`'s batch that take the image ("first_frame")."""
        if self.image_rows is None:
            return torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        return _repeat_batch(self.image_rows, x.shape[0]).to(x.device)

    def with_clean_first_frame(self, latents: torch.Tensor) -> torch.Tensor:
        """ "first_frame": `latents` with frame 0 set to the clean image latent in the rows that take the
        image (the sampler's frame 0 is never used by the model there); other modes: `latents` unchanged."""
        if self.mode != "first_frame":
            return latents
        clean = torch.cat([self.at(latents), latents[:, :, 1:]], dim=2)  # (B, C, T, H, W)
        return torch.where(self._takes_image(latents).view(-1, 1, 1, 1, 1), clean, latents)

    def rows(self, rows: torch.Tensor) -> ImageCondition:
        """The condition of a subset of a batch (`rows`: a boolean (B,) mask over the calling batch)."""
        batch = rows.shape[0]

        def pick(value: torch.Tensor | None) -> torch.Tensor | None:
            return None if value is None else _repeat_batch(value, batch)[rows.to(value.device)]

        latents = {size: pick(value) for size, value in self.latents.items()}
        return ImageCondition(self.mode, latents, pick(self.image_embeds), pick(self.image_rows))


def training_condition(
    latents: list[torch.Tensor], mask_channels: int, image_embeds: torch.Tensor | None = None
) -> ImageCondition:
    """The condition of a training batch: its cached image latents (B, C, T, H, W) at one or more stages,
    each with the mask in front, and its CLIP tokens ("clip") or none ("channels")."""
    mode = "channels" if image_embeds is None else "clip"
    by_size = {tuple(latent.shape[2:]): with_first_frame_mask(latent, mask_channels) for latent in latents}
    return ImageCondition(mode, by_size, image_embeds)


def first_frame_training_condition(latents: list[torch.Tensor], image_rows: torch.Tensor) -> ImageCondition:
    """The condition of a clean-first-frame (Wan2.2-TI2V) training batch: the first latent frame of its stage
    latents (B, C, T, H, W) at one or more stages, for the rows `image_rows` (B,) bool.

    A stage latent made in pixel space (`data.stages`) is the VAE encoding of the stage video, whose frame 0
    is the first frame box-averaged to the stage size; the causal VAE encodes latent frame 0 from pixel frame
    0 alone, so that latent frame is the image latent the pipeline conditions the stage on
    (`PyramidalWanPipeline.prepare_image_condition`: the image box-averaged to the stage size, encoded).
    """
    by_size = {tuple(latent.shape[2:]): latent[:, :, :1] for latent in latents}
    return ImageCondition("first_frame", by_size, image_rows=image_rows)
