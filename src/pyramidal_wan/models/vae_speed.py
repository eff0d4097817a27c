"""Cheaper Wan VAE decoding on a CPU: oneDNN 3D convolutions and RMS norms as plain sums, in float32.

`fast_cpu_inference(vae)` applies both; each is exact up to float32 rounding and applies only in CPU
float32 inference (gradients off), so training and accelerators run diffusers' own code.

PyTorch picks its im2col fallback (`aten::slow_conv3d`) for a float32 3D convolution of batch 1 unless
N x C x T x H > 20480 (aten's `use_mkldnn` heuristic). Wan's VAE decodes causally, one latent frame at a
time against a feature cache, so the convolutions of a small VAE (the toy's 16-64 channels over 1-3 frames)
all take the fallback. oneDNN (`aten::mkldnn_convolution`) computes the same float32 convolution several
times faster (`benchmarks/decode_cost.py`: 1.8-3.6x on the toy VAE's decode, the videos within 2.2e-6);
`onednn_conv3d` routes a VAE's 3D convolutions there in inference. Full-size Wan VAEs (96-384 channels)
already pass the heuristic at most sizes, and accelerators never take this path.

Wan's `WanRMS_norm` normalises over channels with `F.normalize`, i.e. `torch.linalg.vector_norm` over dim 1
of a (B, C, T, H, W) tensor. On a CPU that strided norm is far slower than the same sum of squares as a
plain reduction, and after the oneDNN routing it was the largest part of the toy decode in a profile.
`sum_rms_norm` computes `x / max(||x||, 1e-12)` as `x * rsqrt(max(sum(x^2), 1e-24))` instead (the toy
decode 1.4x faster, `benchmarks/decode_cost.py`).

Measured and not kept (same benchmark, one run): bfloat16 autocast on top of oneDNN (PSNR 78 dB against
float32, no faster on this CPU, which lacks bfloat16 instructions), `torch.inference_mode` instead of
`no_grad` (no difference), diffusers' spatial tiling (slower: overlapping tiles, and blended seams; it saves
memory, not time). Wan's decoder is already chunked: one latent frame at a time against a feature cache.
"""

from __future__ import annotations

import functools

import torch
from diffusers.models.autoencoders.autoencoder_kl_wan import WanRMS_norm
from torch import nn

_ROUTED = "_pyramidal_wan_onednn"  # marks a convolution whose `_conv_forward` is routed already
_SUMMED = "_pyramidal_wan_sum_norm"  # marks a WanRMS_norm whose `forward` is routed already


def _cpu_float32_inference(x: torch.Tensor) -> bool:
    # Inference only: with gradients on, training runs PyTorch's and diffusers' own code (and its backward).
    return x.device.type == "cpu" and x.dtype == torch.float32 and not torch.is_grad_enabled()


def _onednn_conv_forward(self: nn.Conv3d, input: torch.Tensor, weight: torch.Tensor, bias):
    usable = (
        _cpu_float32_inference(input)
        and weight.dtype == torch.float32
        and self.padding_mode == "zeros"
        and not isinstance(self.padding, str)
    )
    if not usable:
        return nn.Conv3d._conv_forward(self, input, weight, bias)
    return torch.ops.aten.mkldnn_convolution(
        input.contiguous(), weight, bias, self.padding, self.stride, self.dilation, self.groups
    )


def onednn_conv3d(module: nn.Module) -> int:
    """Route every `nn.Conv3d` of `module` through oneDNN in float32 CPU inference (others unchanged).

    Idempotent; a no-op where PyTorch is built without oneDNN. Returns the number of convolutions routed.
    """
    if not torch.backends.mkldnn.is_available():
        return 0
    routed = 0
    for conv in module.modules():
        if isinstance(conv, nn.Conv3d) and not getattr(conv, _ROUTED, False):
            # A partial, not a bound method: it survives pickling and deep copies (bound to the copy).
            conv._conv_forward = functools.partial(_onednn_conv_forward, conv)
            setattr(conv, _ROUTED, True)
            routed += 1
    return routed


def _sum_rms_norm_forward(self: WanRMS_norm, x: torch.Tensor) -> torch.Tensor:
    if not _cpu_float32_inference(x):
        return WanRMS_norm.forward(self, x)
    # F.normalize's x / max(||x||, 1e-12), with the norm as a plain sum of squares (see the module docstring).
    inverse_norm = torch.rsqrt(x.square().sum(1 if self.channel_first else -1, keepdim=True).clamp_min(1e-24))
    return x * inverse_norm * self.scale * self.gamma + self.bias


def sum_rms_norm(module: nn.Module) -> int:
    """Route every `WanRMS_norm` of `module` through a plain sum of squares in float32 CPU inference.

    Idempotent. Returns the number of norms routed.
    """
    routed = 0
    for norm in module.modules():
        if isinstance(norm, WanRMS_norm) and not getattr(norm, _SUMMED, False):
            norm.forward = functools.partial(_sum_rms_norm_forward, norm)
            setattr(norm, _SUMMED, True)
            routed += 1
    return routed


def fast_cpu_inference(vae: nn.Module) -> int:
    """`onednn_conv3d` and `sum_rms_norm` on a Wan VAE; the number of modules routed (0 when done already)."""
    return onednn_conv3d(vae) + sum_rms_norm(vae)
