import os

import numpy as np
import pytest
import torch

from pyramidal_wan.cli import main
from pyramidal_wan.errors import CheckpointError, InputError
from pyramidal_wan.models.checkpoint import load_pyramid_config
from pyramidal_wan.pipelines import PyramidalWanPipeline
from pyramidal_wan.pyramid import PyramidConfig
from pyramidal_wan.toy.family import SHARED_COMPONENTS, assemble_toy_pipeline, bundle_member
from pyramidal_wan.toy.vae import build_vae, load_vae


def test_assemble_writes_a_loadable_plain_toy_pipeline(tmp_path, capsys):
    build_vae(0).save_pretrained(tmp_path / "vae")
    assert main(["toy", "assemble", "--vae", str(tmp_path / "vae"), "--out", str(tmp_path / "toy")]) == 0
    assert "wrote" in capsys.readouterr().out
    pipe = PyramidalWanPipeline.from_pretrained(tmp_path / "toy")
    assert (pipe.config.default_num_frames, pipe.config.default_height, pipe.config.default_width) == (
        17,
        64,
        64,
    )
    assert pipe.config.default_negative_prompt == ""
    assert load_pyramid_config(tmp_path / "toy") is None  # a plain model until a pyramidal fine-tune
    video = pipe(
        "a red circle moving left on a dark blue background", schedule="0-0-2", output_type="np"
    ).frames
    assert video.shape == (1, 17, 64, 64, 3)


def test_assemble_rejects_a_missing_vae(tmp_path, capsys):
    assert main(["toy", "assemble", "--vae", str(tmp_path / "nope"), "--out", str(tmp_path / "toy")]) == 2
    assert "not a diffusers VAE folder" in capsys.readouterr().err
    assert not (tmp_path / "toy").exists()


def _trained_like(tmp_path, name, vae, seed=0):
    """A toy pipeline folder standing in for a training run's export."""
    return assemble_toy_pipeline(tmp_path / name, vae=vae, seed=seed)


def test_bundle_shares_components_and_loads(tmp_path, capsys):
    vae = build_vae(0)
    base = _trained_like(tmp_path, "base", vae)
    pyramidal = assemble_toy_pipeline(tmp_path / "pyr", vae=vae, pyramid_config=PyramidConfig())
    family = tmp_path / "models" / "toy"
    assert main(["toy", "bundle", "--model", str(base), "--name", "base", "--into", str(family)]) == 0
    assert "now takes" in capsys.readouterr().out
    bundle_member(pyramidal, "pyramidal", family)
    for member in ("base", "pyramidal"):
        for component in SHARED_COMPONENTS:
            link = family / member / component
            assert link.is_symlink() and os.readlink(link) == f"../shared/{component}"
    assert load_pyramid_config(family / "pyramidal") == PyramidConfig()
    assert load_pyramid_config(family / "base") is None
    pipe = PyramidalWanPipeline.from_pretrained(family / "pyramidal")
    ref = PyramidalWanPipeline.from_pretrained(pyramidal)
    prompt = "a red circle moving left on a dark blue background"
    out = pipe(prompt, schedule="1-1-1", output_type="np", generator=torch.Generator().manual_seed(0)).frames
    expected = ref(
        prompt, schedule="1-1-1", output_type="np", generator=torch.Generator().manual_seed(0)
    ).frames
    assert np.array_equal(out, expected)


def test_bundle_checks_the_vae_encoder_and_shared_parts(tmp_path):
    vae = build_vae(0)
    family = tmp_path / "family"
    bundle_member(_trained_like(tmp_path, "base", vae), "base", family)
    # A newer decoder of the same encoder replaces the family's VAE.
    newer = build_vae(0)
    with torch.no_grad():
        newer.decoder.conv_out.bias.add_(0.5)
    newer.save_pretrained(tmp_path / "newer-vae")
    bundle_member(_trained_like(tmp_path, "next", vae), "next", family, vae=tmp_path / "newer-vae")
    bias = load_vae(family / "base" / "vae").decoder.conv_out.bias
    torch.testing.assert_close(bias, newer.decoder.conv_out.bias)
    # Another encoder, or another text encoder, does not belong to this family.
    with pytest.raises(InputError, match="encode differently"):
        bundle_member(_trained_like(tmp_path, "other", build_vae(1)), "other", family)
    with pytest.raises(InputError, match="text_encoder differs"):
        bundle_member(_trained_like(tmp_path, "text", vae, seed=1), "text", family)
    assert not (family / "other").exists() and not (family / "text").exists()
    with pytest.raises(InputError, match="plain folder name"):
        bundle_member(tmp_path / "base", "shared", family)
    with pytest.raises(CheckpointError, match="no model_index.json"):
        bundle_member(tmp_path / "missing", "x", family)
