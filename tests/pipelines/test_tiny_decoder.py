"""The tiny decoder: shapes, causality, chunked decoding, folders, the pipeline's use of it, its training."""

import json
from pathlib import Path

import pytest
import torch
from pipeline_helpers import PROMPT, SIZE, build_pipeline
from safetensors.torch import load_file

from pyramidal_wan.errors import CheckpointError, InputError
from pyramidal_wan.models.tiny_decoder import TinyWanDecoder, load_folder_decoder, load_tiny_decoder
from pyramidal_wan.toy.vae import VAETrainConfig, build_vae, compute_vae_loss, resume_config, train_vae


def decoder(seed: int = 0) -> TinyWanDecoder:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return TinyWanDecoder().eval()


def latents(frames: int = 5, seed: int = 0) -> torch.Tensor:
    return torch.randn(2, 16, frames, 8, 8, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def test_decodes_wan_layout_to_pixels():
    """T latent frames make 1 + 4 (T - 1) frames at 4x the size, in [-1, 1] (the toy VAE's factors)."""
    model = decoder()
    assert (model.temporal_factor, model.spatial_factor) == (4, 4)
    video = model(latents(5))
    assert video.shape == (2, 3, 17, 32, 32)
    assert video.abs().max() <= 1.0
    assert model(latents(1)).shape == (2, 3, 1, 32, 32)


@torch.no_grad()
def test_is_causal_in_time():
    """Changing latent frame k leaves every pixel frame made before it (frames < 1 + 4 (k - 1)) as it was."""
    model = decoder()
    z = latents(5)
    changed = z.clone()
    changed[:, :, 3] += 1.0
    a, b = model(z), model(changed)
    first_affected = 1 + 4 * (3 - 1)
    assert torch.equal(a[:, :, :first_affected], b[:, :, :first_affected])
    assert not torch.allclose(a[:, :, first_affected:], b[:, :, first_affected:])


@torch.no_grad()
def test_chunked_decode_is_the_same_video():
    model = decoder()
    z = latents(5)
    whole = model(z)
    for chunk in (1, 2, 3):
        torch.testing.assert_close(model(z, chunk_frames=chunk), whole, atol=1e-5, rtol=0)


def test_rejects_misfit_inputs_and_architectures():
    with pytest.raises(InputError, match="latents"):
        decoder()(torch.zeros(1, 8, 2, 4, 4))
    with pytest.raises(InputError, match="time factor per level"):
        TinyWanDecoder(channels=(16, 8), blocks=(1, 1), time_factors=(2, 2))


@torch.no_grad()
def test_folder_round_trip_and_errors(tmp_path):
    model = decoder(1)
    model.save_pretrained(tmp_path / "dec")
    loaded = load_tiny_decoder(tmp_path / "dec")
    z = latents(2)
    assert torch.equal(loaded(z), model(z))
    with pytest.raises(CheckpointError, match="no config.json"):
        load_tiny_decoder(tmp_path / "missing")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not a TinyWanDecoder folder"):
        load_tiny_decoder(tmp_path / "bad")
    # Against a VAE with other factors (Wan2.1's 8x space), it is refused with the reason.
    with pytest.raises(InputError, match="4x space, the VAE 16 at 4x / 8x"):
        load_tiny_decoder(
            tmp_path / "dec", {"z_dim": 16, "scale_factor_temporal": 4, "scale_factor_spatial": 8}
        )


@torch.no_grad()
def test_the_pipeline_decodes_with_it(tmp_path):
    pipe = build_pipeline()
    model = decoder()
    z = torch.randn(1, 16, 5, 16, 16, generator=torch.Generator().manual_seed(0))
    with_vae = pipe.decode_latents(z)
    pipe.set_decoder(model)
    # The same un-normalisation as the VAE path, then the tiny decoder.
    mean = torch.tensor(pipe.vae.config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(pipe.vae.config.latents_std).view(1, -1, 1, 1, 1)
    expected = model(z * std + mean)
    torch.testing.assert_close(pipe.decode_latents(z), expected, atol=1e-6, rtol=1e-5)
    assert pipe.decode_latents(z).shape == with_vae.shape
    video = pipe(PROMPT, schedule="1-1-1", guidance_scale=1.0, output_type="np", **SIZE).frames
    assert video.shape == (1, 17, 64, 64, 3)
    pipe.set_decoder(None)
    torch.testing.assert_close(pipe.decode_latents(z), with_vae)
    # Not a component: a saved folder is the same WanPipeline layout, without it.
    pipe.set_decoder(model)
    pipe.save_pretrained(tmp_path / "saved")
    assert "decoder" not in json.loads((tmp_path / "saved" / "model_index.json").read_text())
    wide = TinyWanDecoder(channels=(16, 8, 8, 8), blocks=(1, 0, 0, 0), time_factors=(2, 2, 1))
    with pytest.raises(InputError, match="trained for this VAE"):
        pipe.set_decoder(wide)


def test_load_folder_decoder_checks_the_model_folders_vae(tmp_path):
    build_vae(0).save_pretrained(tmp_path / "model" / "vae")
    decoder().save_pretrained(tmp_path / "dec")
    assert load_folder_decoder(tmp_path / "model", None) is None
    assert isinstance(load_folder_decoder(tmp_path / "model", tmp_path / "dec"), TinyWanDecoder)
    with pytest.raises(CheckpointError, match="expected a VAE config.json"):
        load_folder_decoder(tmp_path / "elsewhere", tmp_path / "dec")


# The toy-VAE trainer's tiny settings (tests/toy/test_vae.py), with a tiny decoder for a frozen VAE.
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
    decoder="tiny",
)


def quiet(_message):
    return None


def test_trains_against_the_frozen_vae_and_resumes_exactly(tmp_path):
    build_vae(3).save_pretrained(tmp_path / "vae")
    config = VAETrainConfig(steps=4, init=str(tmp_path / "vae"), **TINY)
    metrics = train_vae(tmp_path / "a", config, progress=False, log=quiet)
    assert metrics["step"] == 4 and metrics["psnr_heldout"] > 0 and "psnr_heldout_vae_decoder" in metrics
    trained = load_tiny_decoder(tmp_path / "a" / "decoder")
    assert not torch.equal(trained.conv_out.weight, decoder(config.seed).conv_out.weight)
    # Only the decoder is in the checkpoint: the VAE (and so every latent) is untouched.
    weights = load_file(tmp_path / "a" / "checkpoint" / "model.safetensors")
    assert set(weights) == set(trained.state_dict())
    assert not (tmp_path / "a" / "vae").exists()

    train_vae(
        tmp_path / "b", VAETrainConfig(steps=2, init=str(tmp_path / "vae"), **TINY), progress=False, log=quiet
    )
    resumed = resume_config(tmp_path / "b", steps=4)
    train_vae(tmp_path / "b", resumed, resume=True, progress=False, log=quiet)
    a = load_file(tmp_path / "a" / "checkpoint" / "model.safetensors")
    b = load_file(tmp_path / "b" / "checkpoint" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_tiny_decoder_needs_the_vae_it_decodes():
    with pytest.raises(InputError, match="--init"):
        VAETrainConfig(decoder="tiny")
    with pytest.raises(InputError, match="--decoder must be wan or tiny"):
        VAETrainConfig(decoder="small")


def test_distillation_targets_the_vae_decoders_video_of_the_noised_latent():
    vae = build_vae(3).eval().requires_grad_(False)
    vae.register_to_config(latents_std=[0.5] * 16)
    video = torch.rand(2, 3, 5, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    seen = []

    def vae_decoder(latent):  # a "tiny decoder" that is the VAE's own decoder, recording its inputs
        seen.append(latent)
        return vae.decode(latent).sample.clamp(-1, 1)

    with torch.no_grad():
        mean = vae.encode(video).latent_dist.mean
        loss, logs = compute_vae_loss(vae, video, 0.0, decode_mean=True, decoder=vae_decoder, distill=True)
        assert logs["l1"] == 0 and logs["mse"] == 0 and torch.equal(seen[-1], mean)
        _, logs = compute_vae_loss(vae, video, 0.0, decode_mean=True, decoder=vae_decoder)
        assert logs["l1"] > 0  # the clip is the target without distill
        generator = torch.Generator().manual_seed(0)
        _, logs = compute_vae_loss(
            vae, video, 0.0, generator, decode_mean=True, decoder=vae_decoder, distill=True, latent_noise=1.0
        )
    noise = seen[-1] - mean
    assert logs["l1"] == 0 and noise.abs().max() > 0
    # Per clip a std of at most latent_noise x latents_std.
    assert all(0 < noise[i].std() < 0.5 * 1.2 for i in range(2))


def train_three_steps_then_check_resume(tmp_path, settings) -> dict:
    """Train 3 steps in one go and 1 + 2 with a resume; assert the same weights; return them."""
    train_vae(tmp_path / "a", VAETrainConfig(steps=3, **settings), progress=False, log=quiet)
    train_vae(tmp_path / "b", VAETrainConfig(steps=1, **settings), progress=False, log=quiet)
    train_vae(tmp_path / "b", resume_config(tmp_path / "b", steps=3), resume=True, progress=False, log=quiet)
    a = load_file(tmp_path / "a" / "checkpoint" / "model.safetensors")
    b = load_file(tmp_path / "b" / "checkpoint" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    return a


def test_distilled_noised_training_from_a_decoder_resumes_exactly(tmp_path):
    build_vae(3).save_pretrained(tmp_path / "vae")
    decoder(5).save_pretrained(tmp_path / "start")
    settings = dict(init=str(tmp_path / "vae"), decoder_target="vae", latent_noise=0.5, **TINY)
    settings["init_decoder"] = str(tmp_path / "start")
    train_three_steps_then_check_resume(tmp_path, settings)
    # It started from the given decoder: one step at the warm-up's first learning rate moves it little.
    one = VAETrainConfig(steps=1, **{**settings, "lr": 1e-12})
    train_vae(tmp_path / "c", one, progress=False, log=quiet)
    start = decoder(5).state_dict()
    c = load_file(tmp_path / "c" / "checkpoint" / "model.safetensors")
    assert all(torch.allclose(c[k], start[k], atol=1e-6) for k in start)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (dict(decoder_target="vae"), "add --decoder tiny"),
        (dict(latent_noise=0.1, decoder="tiny", init="V"), "add --decoder-target vae"),
        (dict(init_decoder="D"), "add --decoder tiny"),
        (dict(decoder_target="teacher", decoder="tiny", init="V"), "must be clip or vae"),
        (dict(latent_noise=-1.0, decoder="tiny", init="V", decoder_target="vae"), "non-negative"),
        (dict(tiny_channels=(32, 16, 8)), "add --decoder tiny"),
        (dict(tiny_channels=(32, 16), decoder="tiny", init="V"), "three positive channel counts"),
        (dict(tiny_channels=(32, 16, 8), decoder="tiny", init="V", init_decoder="D"), "drop --tiny-channels"),
        (dict(latents="L"), "add --decoder tiny"),
        (dict(latents="L", decoder="tiny", init="V"), "add --decoder-target vae"),
    ],
)
def test_distillation_settings_are_checked(settings, message):
    with pytest.raises(InputError, match=message):
        VAETrainConfig(**settings)


def test_a_narrower_tiny_decoder_trains_and_exports_its_channels(tmp_path):
    build_vae(3).save_pretrained(tmp_path / "vae")
    config = VAETrainConfig(steps=2, init=str(tmp_path / "vae"), tiny_channels=(16, 8, 8), **TINY)
    train_vae(tmp_path / "run", config, progress=False, log=quiet)
    assert load_tiny_decoder(tmp_path / "run" / "decoder").config.channels == [16, 8, 8]
    resumed = resume_config(tmp_path / "run", steps=3)  # config.json holds a list; the run still resumes
    assert resumed.tiny_channels == (16, 8, 8)
    train_vae(tmp_path / "run", resumed, resume=True, progress=False, log=quiet)


REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["tiny-decoder", "tiny-decoder-small"])
def test_the_bundled_tiny_decoders_decode_the_bundled_few_step_model(name):
    """models/toy ships its tiny decoders: each fits the family's VAE and decodes a few-step video close to
    the VAE decoder's (the toy's ToyBench cost of each is in docs/toy.md)."""
    from pyramidal_wan.pipelines import PyramidalWanPipeline

    model = REPO / "models" / "toy" / "few-step"
    tiny = load_folder_decoder(model, REPO / "models" / "toy" / name)
    pipe = PyramidalWanPipeline.from_pretrained(model)
    pipe.set_progress_bar_config(disable=True)
    latents = pipe(PROMPT, generator=torch.Generator().manual_seed(0), output_type="latent").frames
    with torch.no_grad():
        reference = pipe.decode_latents(latents)
        pipe.set_decoder(tiny)
        video = pipe.decode_latents(latents)
    assert video.shape == reference.shape
    psnr = 10 * torch.log10(4.0 / (video - reference).square().mean())
    assert psnr > 22  # measured 27.3 dB (tiny-decoder) on the benchmark's video; random weights give ~10


def test_sample_latents_writes_the_pipelines_raw_latents(tmp_path):
    from pyramidal_wan.toy.vae import sample_latents

    pipe = build_pipeline()
    pipe.vae.register_to_config(latents_mean=[0.5] * 16, latents_std=[2.0] * 16)
    pipe.save_pretrained(tmp_path / "model")
    out = tmp_path / "latents.safetensors"
    latents = sample_latents(tmp_path / "model", out, 3, schedule="0-0-2", batch_size=2, progress=False)
    assert latents.shape == (3, 16, 5, 16, 16) and torch.equal(load_file(out)["latents"], latents)
    again = sample_latents(tmp_path / "model", tmp_path / "again.safetensors", 3, "0-0-2", batch_size=2)
    assert torch.equal(again, latents)  # seeded: the same file twice
    # Raw latents: the pipeline's normalised latents times latents_std plus latents_mean.
    normalised = (latents - 0.5) / 2.0
    assert normalised.std() < 0.7 * latents.std()


def test_latent_batches_crop_generated_latents_from_frame_0(tmp_path):
    from pyramidal_wan.toy.vae import latent_batch, load_latents

    latents = torch.randn(4, 16, 5, 16, 16, generator=torch.Generator().manual_seed(0))
    config = VAETrainConfig(init="V", decoder_target="vae", latents="L", **TINY)
    batch = latent_batch(latents, config, step=3)
    assert batch.shape == (1, 16, 2, 4, 4)  # TINY crops: 5 frames (2 latent frames) of 16x16 (4x4 latent)
    assert torch.equal(batch, latent_batch(latents, config, step=3))
    assert any(not torch.equal(batch, latent_batch(latents, config, step=s)) for s in range(4, 8))
    assert any(
        torch.equal(batch[0], c[:, :2, y : y + 4, x : x + 4])
        for c in latents
        for y in range(13)
        for x in range(13)
    )
    from safetensors.torch import save_file

    save_file(
        {"latents": latents[:, :8].contiguous()}, tmp_path / "eight.safetensors"
    )  # 8 channels: not this VAE's
    with pytest.raises(InputError, match="do not hold"):
        load_latents(tmp_path / "eight.safetensors", config, z_dim=16)
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    with pytest.raises(InputError, match="not a latents file"):
        load_latents(tmp_path / "junk.safetensors", config, z_dim=16)


def test_a_decoder_trains_on_generated_latents_and_resumes_exactly(tmp_path):
    from safetensors.torch import save_file

    build_vae(3).save_pretrained(tmp_path / "vae")
    save_file({"latents": torch.randn(6, 16, 5, 16, 16)}, tmp_path / "latents.safetensors")
    settings = dict(
        init=str(tmp_path / "vae"), decoder_target="vae", latents=str(tmp_path / "latents.safetensors")
    )
    settings.update(TINY)
    a = train_three_steps_then_check_resume(tmp_path, settings)
    assert not torch.equal(a["conv_out.weight"], decoder(0).state_dict()["conv_out.weight"])
