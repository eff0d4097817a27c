"""Fast CPU inference of a Wan VAE: oneDNN 3D convolutions and RMS norms as sums, the same decode."""

import copy
import pickle

import pytest
import torch
from diffusers.models.autoencoders.autoencoder_kl_wan import WanRMS_norm
from torch.profiler import profile

from pyramidal_wan.models.vae_speed import fast_cpu_inference, onednn_conv3d, sum_rms_norm
from pyramidal_wan.toy.vae import build_vae

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="PyTorch without oneDNN")


def conv_kernels(vae, latents) -> tuple[set[str], torch.Tensor]:
    """(the aten convolution kernels one decode runs, the decoded video)."""
    with profile() as prof:
        video = vae.decode(latents, return_dict=False)[0]
    names = {e.key for e in prof.key_averages() if "conv" in e.key and e.key.startswith("aten::")}
    return names, video


def test_routed_decode_matches_the_default_and_runs_onednn():
    plain = build_vae(seed=0).eval()
    routed = copy.deepcopy(plain)
    assert onednn_conv3d(routed) == sum(isinstance(m, torch.nn.Conv3d) for m in routed.modules()) > 0
    assert onednn_conv3d(routed) == 0  # idempotent
    latents = torch.randn(1, 16, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        default_kernels, reference = conv_kernels(plain, latents)
        routed_kernels, video = conv_kernels(routed, latents)
    # The toy VAE's batch-1 3D convolutions fall below aten's oneDNN threshold by default.
    assert "aten::slow_conv3d_forward" in default_kernels
    assert "aten::slow_conv3d_forward" not in routed_kernels and "aten::mkldnn_convolution" in routed_kernels
    torch.testing.assert_close(video, reference, atol=1e-5, rtol=0)
    # A routed VAE pickles and copies with its routing (the copy's convolutions run on the copy's weights).
    restored = pickle.loads(pickle.dumps(routed))
    copied = copy.deepcopy(routed)
    with torch.no_grad():
        copied.decoder.conv_in.weight.mul_(2)
        for vae, same in ((restored, True), (copied, False)):
            kernels, decoded = conv_kernels(vae, latents)
            assert "aten::mkldnn_convolution" in kernels and torch.equal(decoded, video) == same


def test_training_keeps_pytorchs_convolution():
    """With gradients on, the routed VAE runs PyTorch's own kernel (and so its backward)."""
    routed = build_vae(seed=0)
    onednn_conv3d(routed)
    latents = torch.randn(1, 16, 2, 8, 8, generator=torch.Generator().manual_seed(0))
    kernels, video = conv_kernels(routed, latents)
    assert "aten::slow_conv3d_forward" in kernels
    video.square().mean().backward()
    assert routed.decoder.conv_in.weight.grad is not None


def kernels_of(vae, latents) -> tuple[set[str], torch.Tensor]:
    with profile() as prof:
        video = vae.decode(latents, return_dict=False)[0]
    return {e.key for e in prof.key_averages()}, video


def test_sum_rms_norm_decodes_the_same_without_the_vector_norm():
    plain = build_vae(seed=0).eval()
    with torch.no_grad():  # non-trivial gains and biases, so the test sees them used
        for norm in plain.modules():
            if isinstance(norm, WanRMS_norm):
                norm.gamma.uniform_(0.5, 1.5)
    summed = copy.deepcopy(plain)
    count = sum(isinstance(m, WanRMS_norm) for m in summed.modules())
    assert sum_rms_norm(summed) == count > 0
    assert sum_rms_norm(summed) == 0  # idempotent
    latents = torch.randn(1, 16, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        plain_kernels, reference = kernels_of(plain, latents)
        summed_kernels, video = kernels_of(summed, latents)
        encoded = summed.encode(reference).latent_dist.mean
        encoded_reference = plain.encode(reference).latent_dist.mean
    assert "aten::linalg_vector_norm" in plain_kernels
    assert "aten::linalg_vector_norm" not in summed_kernels
    torch.testing.assert_close(video, reference, atol=1e-5, rtol=0)
    torch.testing.assert_close(encoded, encoded_reference, atol=1e-5, rtol=0)
    # With gradients on, diffusers' own norm runs (training differentiates it).
    kernels, video = kernels_of(summed, latents)
    assert "aten::linalg_vector_norm" in kernels
    video.square().mean().backward()
    assert all(m.gamma.grad is not None for m in summed.decoder.modules() if isinstance(m, WanRMS_norm))


def test_fast_cpu_inference_routes_both_once():
    vae = build_vae(seed=0)
    convs = sum(isinstance(m, torch.nn.Conv3d) for m in vae.modules())
    norms = sum(isinstance(m, WanRMS_norm) for m in vae.modules())
    assert fast_cpu_inference(vae) == convs + norms
    assert fast_cpu_inference(vae) == 0
