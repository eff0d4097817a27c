"""Memory options of diffusers keep working on the pyramidal pipeline: offloading and VAE tiling (CPU)."""

import numpy as np
import torch
from pipeline_helpers import PROMPT, build_pipeline

from pyramidal_wan.pyramid import PyramidConfig


def run(pipe, output_type="np"):
    generator = torch.Generator().manual_seed(0)
    return pipe(PROMPT, schedule="2-2-1", generator=generator, output_type=output_type).frames


def test_model_and_group_offloading_give_the_same_videos():
    """Offloading moves weights, never changes numbers: both equal the plain pipeline exactly (every stage
    shape runs through the offloaded transformer)."""
    expected = run(build_pipeline(PyramidConfig()))
    model_offload = build_pipeline(PyramidConfig())
    model_offload.enable_model_cpu_offload(device="cpu")
    group_offload = build_pipeline(PyramidConfig())
    group_offload.enable_group_offload(
        onload_device=torch.device("cpu"), offload_type="block_level", num_blocks_per_group=1
    )
    for pipe in (model_offload, group_offload):
        np.testing.assert_array_equal(run(pipe), expected)


def test_vae_tiling_decodes_in_tiles(monkeypatch):
    """With tiles smaller than the 64x64 video the decode goes through the VAE's tiled path and returns
    the full video; the pipeline's latents are untouched by it."""
    pipe = build_pipeline(PyramidConfig())
    latents = run(pipe, "latent")
    pipe.vae.enable_tiling(
        tile_sample_min_height=32,
        tile_sample_min_width=32,
        tile_sample_stride_height=16,
        tile_sample_stride_width=16,
    )
    calls = []
    tiled_decode = pipe.vae.tiled_decode
    monkeypatch.setattr(
        pipe.vae, "tiled_decode", lambda z, **kw: calls.append(z.shape) or tiled_decode(z, **kw)
    )
    video = run(pipe)
    assert calls == [latents.shape]
    assert video.shape == (1, 17, 64, 64, 3) and np.isfinite(video).all()
    assert torch.equal(run(pipe, "latent"), latents)
