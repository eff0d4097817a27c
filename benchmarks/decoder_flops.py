"""What a decode costs in FLOPs: Wan's VAE decoder against a tiny decoder, at the toy's and Wan2.1's size.

Counts every convolution and matmul of one decode with `torch.utils.flop_counter` on the meta device (no
weights are allocated, so Wan2.1's VAE at 81x480x832 counts in seconds on a CPU):

- toy, 17x64x64: the toy VAE (`toy.vae.VAE_ARCHITECTURE`) and the toy's `TinyWanDecoder`s (its defaults, the
  architecture of `models/toy/tiny-decoder`, and channels 32-16-8, `models/toy/tiny-decoder-small`);
- Wan2.1, 81x480x832: diffusers' default `AutoencoderKLWan` (Wan2.1's VAE: base_dim 96, dim_mult
  [1, 2, 4, 4], 8x space) and a `TinyWanDecoder` with four levels (WAN_TINY below, 8x space, 4x time).
  The Wan-size tiny decoder is an architecture counted, not a trained model: its quality is unmeasured.

    PYTHONPATH=src python benchmarks/decoder_flops.py
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKLWan
from torch.utils.flop_counter import FlopCounterMode

from pyramidal_wan.models.tiny_decoder import TinyWanDecoder
from pyramidal_wan.toy.vae import LATENT_CHANNELS, VAE_ARCHITECTURE

# Four levels for Wan2.1's 8x spatial factor; time grows 2x at the two finest levels (4x in all).
WAN_TINY = {"channels": (256, 128, 64, 64), "blocks": (3, 3, 3, 0), "time_factors": (1, 2, 2)}


def decode_tflops(decode, latents: torch.Tensor) -> tuple[float, tuple[int, ...]]:
    """(TFLOPs, output shape) of one `decode(latents)` on the meta device."""
    with FlopCounterMode(display=False) as counter:
        video = decode(latents)
    return counter.get_total_flops() / 1e12, tuple(video.shape)


def main() -> None:
    with torch.device("meta"):
        toy_vae = AutoencoderKLWan(**VAE_ARCHITECTURE)
        wan_vae = AutoencoderKLWan()
        rows = [
            ("toy VAE decoder", lambda z: toy_vae.decode(z).sample, (1, LATENT_CHANNELS, 5, 16, 16)),
            ("toy tiny decoder", TinyWanDecoder(), (1, LATENT_CHANNELS, 5, 16, 16)),
            (
                "toy tiny decoder, small",
                TinyWanDecoder(channels=(32, 16, 8)),
                (1, LATENT_CHANNELS, 5, 16, 16),
            ),
            ("Wan2.1 VAE decoder", lambda z: wan_vae.decode(z).sample, (1, 16, 21, 60, 104)),
            ("Wan2.1-size tiny decoder", TinyWanDecoder(**WAN_TINY), (1, 16, 21, 60, 104)),
        ]
        print(f"{'decoder':26} {'video':>14} {'TFLOPs':>10} {'vs VAE':>8}")
        reference = None
        for name, decode, shape in rows:
            tflops, video = decode_tflops(decode, torch.empty(shape))
            reference = tflops if "VAE" in name else reference
            size = "x".join(map(str, video[2:]))
            print(f"{name:26} {size:>14} {tflops:10.4g} {reference / tflops:7.1f}x")


if __name__ == "__main__":
    main()
