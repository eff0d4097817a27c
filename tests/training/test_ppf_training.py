"""PPF end to end (METHOD.md 9): ppf-fm steps on a tiny cache, export, pipeline load, per-stage sampling."""

import json

import pytest
import torch
from helpers import record_sampling

from pyramidal_wan.cli import main
from pyramidal_wan.errors import InputError
from pyramidal_wan.models.checkpoint import PYRAMID_CONFIG_NAME
from pyramidal_wan.models.denoiser import batched_cfg_pays
from pyramidal_wan.models.ppf import PPF_LAYERS_NAME, PPFTransformer
from pyramidal_wan.pipelines import PyramidalWanPipeline
from pyramidal_wan.pipelines.planning import plan_sampling
from pyramidal_wan.pyramid import PyramidConfig, get_ppf_segments, ppf_stage_of
from pyramidal_wan.toy.family import assemble_toy_pipeline
from pyramidal_wan.training.config import load_config
from pyramidal_wan.training.ppf import ppf_network, sample_stage_sigmas
from pyramidal_wan.training.trainer import train

PROMPT = "a red circle moving left on a dark blue background"
# Toy 17x64x64 videos: 16x5x16x16 latents; PPF stages 0 / 1 / 2 see 320 / 48 / 8 tokens.
LATENT = (16, 5, 16, 16)
TOKENS = {0: 320, 1: 48, 2: 8}


def overrides(cache, init, out, *extra):
    return [
        f"data.cache={cache}",
        f"model.init={init}",
        f"train.out={out}",
        "train.steps=3",
        "train.batch_size=3",  # one sample per stage
        "train.warmup=0",
        "train.checkpoint_every=3",
        "train.log_every=1",
        "train.threads=1",
        "train.ema=0.5",  # exported from the EMA copy, whose names pass through the PPF wrapper
        "objective.name=ppf-fm",
        "pyramid.kind=patch",
        *extra,
    ]


@pytest.fixture(scope="module")
def trained(tiny_cache, tmp_path_factory):
    """Three ppf-fm steps from a random toy base pipeline folder; returns (base folder, run folder)."""
    root = tmp_path_factory.mktemp("ppf")
    base = assemble_toy_pipeline(root / "base", seed=0)
    config = load_config(None, overrides(tiny_cache, base, root / "run"))
    out = train(config, progress=False)
    return base, out


def stages_and_tokens(pipe, **kwargs):
    """Sample latents; record the stage of every evaluation and the token count of every forward."""
    latents, stages, token_shapes = record_sampling(pipe, PROMPT, **kwargs)
    return latents, stages, [tokens for _, tokens in token_shapes]


def test_ppf_fm_exports_a_folder_the_pipeline_samples(trained):
    base, out = trained
    folder = out / "model"
    config = json.loads((folder / PYRAMID_CONFIG_NAME).read_text())
    assert config["kind"] == "patch" and config["default_schedule"] == "20-20-10"
    assert (folder / "transformer" / PPF_LAYERS_NAME).is_file()

    pipe = PyramidalWanPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    assert isinstance(pipe.ppf, PPFTransformer) and pipe.ppf.transformer is pipe.transformer
    # Training moved the stage layers away from their Kronecker initialisation from the base.
    initial = PPFTransformer(PyramidalWanPipeline.from_pretrained(base).transformer)
    for name, tensor in pipe.ppf.layers_state_dict().items():
        assert not torch.equal(tensor, initial.layers_state_dict()[name]), name

    latents, stages, tokens = stages_and_tokens(pipe, schedule="2-2-1")
    assert latents.shape == (1, *LATENT) and torch.isfinite(latents).all()
    assert stages == [2, 2, 1, 1, 0]
    assert tokens == [TOKENS[s] for s in stages]  # each evaluation used its stage's kernel (CFG batched)

    latents, stages, tokens = stages_and_tokens(pipe, schedule="0-0-3")  # plain baseline: stage 0 only
    calls_per_step = 1 if batched_cfg_pays(torch.device("cpu")) else 2  # CFG: two batch-1 calls on a CPU
    assert latents.shape == (1, *LATENT) and tokens == [TOKENS[0]] * (3 * calls_per_step)

    latents, stages, tokens = stages_and_tokens(pipe, schedule="2-2-1", sampler="fewstep")
    assert latents.shape == (1, *LATENT) and stages == [2, 2, 1, 1, 0]


def test_per_stage_guidance_scales(trained):
    pipe = PyramidalWanPipeline.from_pretrained(trained[1] / "model")
    pipe.set_progress_bar_config(disable=True)
    batches = []
    hook = pipe.transformer.blocks[0].register_forward_pre_hook(
        lambda m, args: batches.append(args[0].shape[0])
    )
    try:
        # Lowest resolution first: CFG 5 and 3 at stages 2 and 1, none at full resolution.
        pipe(PROMPT, schedule="2-2-1", guidance_scale=(5.0, 3.0, 1.0), output_type="latent")
    finally:
        hook.remove()
    assert batches == [2, 2, 2, 2, 1]  # w = 1 runs the conditional branch alone
    with pytest.raises(InputError, match="single guidance_scale"):
        pipe(PROMPT, schedule="0-0-2", guidance_scale=(5.0, 3.0, 1.0), output_type="latent")
    with pytest.raises(InputError, match="3 values >= 1"):
        pipe(PROMPT, schedule="2-2-1", guidance_scale=(5.0, 3.0), output_type="latent")
    with pytest.raises(InputError, match="patch-pyramid"):
        plan_sampling(PyramidConfig(), 17, 64, 64, guidance_scale=(5.0, 3.0, 1.0), patch_size=(1, 2, 2))


def test_pipeline_round_trip_and_kind_checks(trained, tmp_path):
    pipe = PyramidalWanPipeline.from_pretrained(trained[1] / "model")
    pipe.save_pretrained(tmp_path / "copy")
    loaded = PyramidalWanPipeline.from_pretrained(tmp_path / "copy")
    assert loaded.pyramid_config == pipe.pyramid_config
    for name, tensor in pipe.ppf.layers_state_dict().items():
        assert torch.equal(loaded.ppf.layers_state_dict()[name], tensor)
    parts = {"tokenizer": pipe.tokenizer, "text_encoder": pipe.text_encoder, "vae": pipe.vae}
    with pytest.raises(InputError, match="needs a PPFTransformer"):
        PyramidalWanPipeline(**parts, transformer=pipe.transformer, pyramid_config=pipe.pyramid_config)
    with pytest.raises(InputError, match="kind 'patch' with the same"):
        PyramidalWanPipeline(**parts, transformer=pipe.ppf, pyramid_config=PyramidConfig())


def test_a_run_resumes_from_a_ppf_folder(trained):
    base, out = trained
    config = load_config(None, overrides("unused", out / "model", "unused"))
    model = ppf_network(config.model, PyramidConfig(kind="patch"), seed=0)
    saved = PyramidalWanPipeline.from_pretrained(out / "model").ppf
    for name, tensor in saved.layers_state_dict().items():
        assert torch.equal(model.transformer.layers_state_dict()[name], tensor)
    with pytest.raises(InputError, match="match pyramid.num_stages"):
        ppf_network(config.model, PyramidConfig(kind="patch", clean_ends=(0.3, 0.6)), seed=0)
    lora = load_config(None, overrides("unused", base, "unused", "model.lora_rank=4"))
    with pytest.raises(InputError, match="lora_rank=0"):
        ppf_network(lora.model, PyramidConfig(kind="patch"), seed=0)


def test_training_sigmas_fill_each_stage_interval_equally():
    clean_ends = (0.25, 0.6)
    segments = get_ppf_segments(clean_ends)
    sigma = sample_stage_sigmas(segments, 3000, torch.Generator().manual_seed(0))
    stages = ppf_stage_of(sigma.float(), clean_ends)
    assert torch.bincount(stages).tolist() == [1000, 1000, 1000]
    for seg in segments:
        inside = sigma[stages == seg.stage]
        assert seg.sigma_c < inside.min() and inside.max() <= seg.sigma_n
        assert inside.mean().item() == pytest.approx((seg.sigma_c + seg.sigma_n) / 2, abs=0.02)


def test_flops_cli_counts_a_ppf_folder_as_patch(trained, capsys):
    size = ["--num-frames", "17", "--height", "64", "--width", "64", "--text-len", "8", "--json"]
    assert main(["flops", "--model", str(trained[1] / "model"), "--schedule", "2-2-1", *size]) == 0
    ppf = json.loads(capsys.readouterr().out)
    assert main(["flops", "--model", str(trained[0]), "--schedule", "2-2-1", *size]) == 0  # plain base
    resolution = json.loads(capsys.readouterr().out)
    assert (ppf["kind"], resolution["kind"]) == ("patch", "resolution")
    # A folder is counted with its own 4x toy VAE: 17x64x64 -> 5x16x16, tokens 320 / 48 / 8 at either kind.
    assert [s["tokens"] for s in ppf["stages"]] == [s["tokens"] for s in resolution["stages"]] == [320, 48, 8]
    assert all(s["latent"] == [5, 16, 16] for s in ppf["stages"])
    assert ppf["total_tflops"] == pytest.approx(
        resolution["total_tflops"], rel=0.1
    )  # toy: patch layers weigh more
