"""The toy VAE: architecture and shapes, loss, exact resume, exported latent statistics."""

import json

import pytest
import torch
from diffusers import AutoencoderKLWan
from safetensors.torch import load_file

from pyramidal_wan.errors import CheckpointError, InputError
from pyramidal_wan.toy.vae import (
    VAETrainConfig,
    build_vae,
    clip_batch,
    compute_vae_loss,
    crop_offsets,
    latent_shape,
    load_vae,
    measure_latent_stats,
    prepare_for_training,
    resume_config,
    train_vae,
    training_batch,
)
from pyramidal_wan.toy.world import WorldConfig, eval_prompts, seeded_scene

# Tiny settings: crops of 5 frames of 16x16 from 5-frame 32x32 clips, so a step costs a fraction of a second.
TINY = dict(
    num_frames=5,
    resolution=32,
    crop_frames=5,
    crop_size=16,
    batch_size=1,
    checkpoint_every=2,
    warmup_steps=2,
    stats_clips=2,
    eval_clips=1,
)

TINY_WORLD = WorldConfig(num_frames=5, height=32, width=32)


def quiet(_message):
    return None


def test_architecture_and_full_size_shapes():
    vae = build_vae(0).eval()
    assert 1.8e6 < sum(p.numel() for p in vae.parameters()) < 2.0e6
    assert vae.config.scale_factor_spatial == 4 and vae.config.scale_factor_temporal == 4
    video = clip_batch([seeded_scene(0, 0)])  # (1, 3, 17, 64, 64)
    assert video.shape == (1, 3, 17, 64, 64)
    with torch.no_grad():
        posterior = vae.encode(video).latent_dist
        assert posterior.mean.shape == (1, *latent_shape(17, 64, 64)) == (1, 16, 5, 16, 16)
        assert vae.decode(posterior.mode()).sample.shape == video.shape


def test_build_is_seeded():
    a, b = build_vae(0).state_dict(), build_vae(0).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["encoder.conv_in.weight"], build_vae(1).state_dict()["encoder.conv_in.weight"])


def test_latent_shape_rejects_misfit_clips():
    assert latent_shape(5, 32, 48) == (16, 2, 8, 12)
    with pytest.raises(InputError, match="4k \\+ 1"):
        latent_shape(16, 64, 64)
    with pytest.raises(InputError):
        VAETrainConfig(resolution=30)
    with pytest.raises(InputError, match="must fit the clips"):
        VAETrainConfig(num_frames=5, crop_frames=9)


def test_training_crops_come_from_full_size_clips():
    config = VAETrainConfig(batch_size=3, crop_frames=9)
    batch = training_batch(config, 0)  # (3, 3, 9, 32, 32)
    assert batch.shape == (3, 3, 9, 32, 32)
    clips = clip_batch([seeded_scene(0, b) for b in range(3)])  # (3, 3, 17, 64, 64)
    offsets = crop_offsets(config, 0)
    for b, (t, y, x) in enumerate(offsets):
        # The crop is a window of clip b, so objects keep their full-size pixel size and speed.
        assert torch.equal(batch[b], clips[b, :, t : t + 9, y : y + 32, x : x + 32])
    assert len(set(offsets + crop_offsets(config, 1))) == 6


def test_prepare_for_training_sets_output_mean_and_small_posterior_variance():
    vae = build_vae(0)
    prepare_for_training(vae, torch.tensor([-0.5, -0.6, -0.7]), logvar_init=-8.0)
    with torch.no_grad():
        posterior = vae.encode(clip_batch([seeded_scene(0, 0, config=TINY_WORLD)])).latent_dist
    assert posterior.std.max() < 0.1
    torch.testing.assert_close(vae.decoder.conv_out.bias, torch.tensor([-0.5, -0.6, -0.7]))


def test_loss_backward_and_batches_are_deterministic():
    config = VAETrainConfig(**TINY)
    assert torch.equal(training_batch(config, 3), training_batch(config, 3))
    assert not torch.equal(training_batch(config, 3), training_batch(config, 4))
    vae = build_vae(0)
    loss, logs = compute_vae_loss(vae, training_batch(config, 0), 1e-4, torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss) and set(logs) == {"loss", "l1", "mse", "kl"}
    assert vae.encoder.conv_in.weight.grad.abs().sum() > 0


def test_training_writes_checkpoint_and_normalising_export(tmp_path):
    config = VAETrainConfig(steps=3, **TINY)
    metrics = train_vae(tmp_path / "run", config, progress=False, log=quiet)
    run = tmp_path / "run"
    assert metrics["step"] == 3 and metrics["psnr_heldout"] > 0
    history = json.loads((run / "checkpoint" / "history.json").read_text())
    assert [h["step"] for h in history] == [1, 2, 3]
    # The optimiser state holds only tensors and numbers: the safe loader accepts it.
    assert "state" in torch.load(run / "checkpoint" / "optimizer.pt", weights_only=True)
    vae = load_vae(run / "vae")
    assert isinstance(vae, AutoencoderKLWan)
    # Normalising with the exported statistics makes the measured latents zero-mean, unit-std per channel.
    scenes = eval_prompts(config.stats_clips, "train", config.seed, config.world())
    with torch.no_grad():
        latents = torch.cat([vae.encode(clip_batch(scenes)).latent_dist.mean])  # (B, C, T, H, W)
    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
    normalised = (latents - mean) / std
    torch.testing.assert_close(normalised.mean(dim=(0, 2, 3, 4)), torch.zeros(16), atol=1e-4, rtol=0)
    torch.testing.assert_close(
        normalised.std(dim=(0, 2, 3, 4), correction=0), torch.ones(16), atol=1e-3, rtol=0
    )


def test_resume_reproduces_the_uninterrupted_run(tmp_path):
    train_vae(tmp_path / "a", VAETrainConfig(steps=4, **TINY), progress=False, log=quiet)
    train_vae(tmp_path / "b", VAETrainConfig(steps=2, **TINY), progress=False, log=quiet)
    resumed = resume_config(tmp_path / "b", steps=4)
    assert resumed == VAETrainConfig(steps=4, **TINY)
    train_vae(tmp_path / "b", resumed, resume=True, progress=False, log=quiet)
    a = load_file(tmp_path / "a" / "checkpoint" / "model.safetensors")
    b = load_file(tmp_path / "b" / "checkpoint" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    history_a = json.loads((tmp_path / "a" / "checkpoint" / "history.json").read_text())
    history_b = json.loads((tmp_path / "b" / "checkpoint" / "history.json").read_text())
    assert history_a == history_b


def test_a_kill_between_the_checkpoint_renames_resumes_exactly(tmp_path, monkeypatch):
    """The second save sets checkpoint/ aside as checkpoint-step2, then renames the new one in; killed in
    between, the run has no checkpoint/ but resumes from the complete temporary folder of step 4."""
    from pyramidal_wan.utils import checkpoints

    class Killed(BaseException):
        pass

    rename = checkpoints._rename

    def killed_before_swap_in(src, dst):
        if dst.name == "checkpoint" and (dst.parent / "checkpoint-step2").exists():
            raise Killed
        rename(src, dst)

    train_vae(tmp_path / "a", VAETrainConfig(steps=6, **TINY), progress=False, log=quiet)
    monkeypatch.setattr(checkpoints, "_rename", killed_before_swap_in)
    with pytest.raises(Killed):
        train_vae(tmp_path / "b", VAETrainConfig(steps=6, **TINY), progress=False, log=quiet)
    monkeypatch.undo()
    assert (
        not (tmp_path / "b" / "checkpoint").exists()
        and len(list((tmp_path / "b").glob(".checkpoint.*"))) == 1
    )
    train_vae(tmp_path / "b", VAETrainConfig(steps=6, **TINY), resume=True, progress=False, log=quiet)
    a = load_file(tmp_path / "a" / "checkpoint" / "model.safetensors")
    b = load_file(tmp_path / "b" / "checkpoint" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not list((tmp_path / "b").glob(".checkpoint.*"))


def test_run_folder_guards(tmp_path):
    config = VAETrainConfig(steps=2, **TINY)
    with pytest.raises(CheckpointError, match="drop --resume"):
        train_vae(tmp_path / "none", config, resume=True, progress=False, log=quiet)
    train_vae(tmp_path / "run", config, progress=False, log=quiet)
    with pytest.raises(InputError, match="pass --resume"):
        train_vae(tmp_path / "run", config, progress=False, log=quiet)
    with pytest.raises(InputError, match="lr=0.0001"):
        train_vae(
            tmp_path / "run", resume_config(tmp_path / "run", lr=0.1), resume=True, progress=False, log=quiet
        )
    (tmp_path / "run" / "checkpoint" / "model.safetensors").write_bytes(b"corrupt")
    with pytest.raises(CheckpointError, match=r"model.safetensors is corrupt \(7 bytes, the save wrote"):
        train_vae(tmp_path / "run", config, resume=True, progress=False, log=quiet)
    with pytest.raises(CheckpointError):
        load_vae(tmp_path / "none")


def test_latent_stats_match_direct_computation():
    vae = build_vae(0).eval()
    scenes = eval_prompts(3, "train", 0)
    mean, std = measure_latent_stats(vae, scenes, batch_size=2)
    with torch.no_grad():
        latents = vae.encode(clip_batch(scenes)).latent_dist.mean.double()
    expected_mean = latents.mean(dim=(0, 2, 3, 4))
    expected_std = latents.std(dim=(0, 2, 3, 4), correction=0)
    torch.testing.assert_close(torch.tensor(mean, dtype=torch.float64), expected_mean, atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.tensor(std, dtype=torch.float64), expected_std, atol=1e-5, rtol=0)


def test_freezing_the_encoder_keeps_latents_and_trains_the_decoder(tmp_path):
    train_vae(tmp_path / "a", VAETrainConfig(steps=2, **TINY), progress=False, log=quiet)
    before = load_file(tmp_path / "a" / "checkpoint" / "model.safetensors")
    # Setting the freeze step at the checkpoint's step is allowed; before it would rewrite history.
    with pytest.raises(InputError, match="use a value >= 2"):
        train_vae(
            tmp_path / "a",
            resume_config(tmp_path / "a", steps=4, freeze_encoder_from=1),
            resume=True,
            progress=False,
            log=quiet,
        )
    config = resume_config(tmp_path / "a", steps=4, freeze_encoder_from=2)
    train_vae(tmp_path / "a", config, resume=True, progress=False, log=quiet)
    after = load_file(tmp_path / "a" / "checkpoint" / "model.safetensors")
    latent_side = [k for k in before if k.startswith(("encoder.", "quant_conv."))]
    decoder_side = [k for k in before if k.startswith("decoder.")]
    assert latent_side and decoder_side
    assert all(torch.equal(before[k], after[k]) for k in latent_side)
    assert any(not torch.equal(before[k], after[k]) for k in decoder_side)
    assert resume_config(tmp_path / "a").freeze_encoder_from == 2


def test_object_centred_crops_hold_the_first_object():
    config = VAETrainConfig(batch_size=4, crop_frames=9, crop_centre="object")
    scenes = [seeded_scene(0, b) for b in range(4)]
    for scene, (t, y, x) in zip(scenes, crop_offsets(config, 0, scenes)):
        cx, cy = scene.centers()[t + 4, 0]
        assert x <= cx <= x + 32 and y <= cy <= y + 32
    batch = training_batch(config, 0)
    assert batch.shape == (4, 3, 9, 32, 32)
    with pytest.raises(InputError, match="crop-centre"):
        VAETrainConfig(crop_centre="middle")


def test_the_frozen_phase_can_decode_the_posterior_mean():
    """With decode_mean the loss no longer depends on the posterior noise, so the decoder learns the latent
    the cache stores; a posterior sample gives a different loss per noise draw."""
    config = VAETrainConfig(**TINY)
    vae = build_vae(0)
    batch = training_batch(config, 0)

    def loss(seed, decode_mean):
        generator = torch.Generator().manual_seed(seed)
        return compute_vae_loss(vae, batch, 1e-4, generator, train_encoder=False, decode_mean=decode_mean)[0]

    with torch.no_grad():
        assert torch.equal(loss(0, True), loss(1, True))
        assert not torch.equal(loss(0, False), loss(1, False))
        mean = vae.encode(batch).latent_dist.mean
        expected = compute_vae_loss(vae, batch, 0.0, None, train_encoder=False, decode_mean=True)[1]["mse"]
        assert expected == pytest.approx(torch.nn.functional.mse_loss(vae.decode(mean).sample, batch).item())
    with pytest.raises(InputError, match="--decoder-latent"):
        VAETrainConfig(decoder_latent="mode", **TINY)
