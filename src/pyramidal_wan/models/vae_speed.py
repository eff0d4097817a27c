"""Cheaper Wan VAE decoding on a CPU: oneDNN 3D convolutions in float32.

PyTorch picks its im2col fallback (`aten::slow_conv3d`) for a float32 3D convolution of batch 1 unless
N x C x T x H > 20480 (aten's `use_mkldnn` heuristic). Wan's VAE decodes causally, one latent frame at a
time against a feature cache, so the convolutions of a small VAE (the toy's 16-64 channels over 1-3 frames)
all take the fallback. oneDNN (`aten::mkldnn_convolution`) computes the same float32 convolution several
times faster (`benchmarks/decode_cost.py`: 3.4-4.5x on the toy VAE's decode, the videos within 2.2e-6);
`onednn_conv3d` routes a VAE's 3D convolutions there in inference. Full-size Wan VAEs (96-384 channels)
already pass the heuristic at most sizes, and accelerators never take this path.

Measured and not kept (same benchmark, one run): bfloat16 autocast on top of oneDNN (PSNR 78 dB against
float32, no faster on this CPU, which lacks bfloat16 instructions), `torch.inference_mode` instead of
`no_grad` (no difference), diffusers' spatial tiling (slower: overlapping tiles, and blended seams; it saves
memory, not time). Wan's decoder is already chunked: one latent frame at a time against a feature cache.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

_ROUTED = "_pyramidal_wan_onednn"  # marks a convolution whose `_conv_forward` is routed already


def _onednn_conv_forward(self: nn.Conv3d, input: torch.Tensor, weight: torch.Tensor, bias):
    usable = (
        input.device.type == "cpu"
        and input.dtype == torch.float32
        and weight.dtype == torch.float32
        and self.padding_mode == "zeros"
        and not isinstance(self.padding, str)
        and not torch.is_grad_enabled()  # inference only: training keeps PyTorch's own choice
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
