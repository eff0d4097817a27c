"""LoRA export: a tuned tiny Wan transformer minus its base, loaded back by a plain diffusers WanPipeline."""

import copy

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel

from pyramidal_wan.errors import CheckpointError, InputError
from pyramidal_wan.models.lora import extract_lora, lora_file, parse_rank, save_lora
from pyramidal_wan.models.presets import get_transformer_config
from pyramidal_wan.toy.text import build_text_encoder, build_tokenizer
from pyramidal_wan.toy.vae import build_vae

TINY = {**get_transformer_config("toy-wan"), "num_layers": 2}


def tiny_transformer(seed: int) -> WanTransformer3DModel:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return WanTransformer3DModel.from_config(TINY).eval()


def tuned_from(base: WanTransformer3DModel, seed: int = 1, norms: bool = False) -> WanTransformer3DModel:
    """`base` with every Linear weight and bias moved (as full fine-tuning moves them), optionally also the
    norms, which no LoRA can carry."""
    tuned = copy.deepcopy(base)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        linear = {
            f"{n}.{p}"
            for n, m in tuned.named_modules()
            if isinstance(m, torch.nn.Linear)
            for p, _ in m.named_parameters()
        }
        for name, param in tuned.named_parameters():
            if name in linear or (norms and "norm" in name):
                param.add_(0.05 * param.std().clamp_min(1e-3) * torch.randn(param.shape, generator=generator))
    return tuned


def velocity(transformer, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    config = transformer.config
    x = torch.randn(1, config.in_channels, 2, 8, 8, generator=generator)
    text = torch.randn(1, 6, config.text_dim, generator=generator)
    with torch.no_grad():
        return transformer(x, torch.tensor([700.0]), text, return_dict=False)[0]


def test_full_rank_lora_round_trips_through_diffusers(tmp_path):
    """A plain WanPipeline, base transformer + the exported LoRA, gives the tuned model's velocity."""
    base = tiny_transformer(0)
    tuned = tuned_from(base)
    extraction = extract_lora(tuned, base, rank=None)
    assert extraction.kept_fraction == pytest.approx(1.0, abs=1e-9)
    assert extraction.left_out == []
    folder = tmp_path / "lora"
    save_lora(folder, extraction.state_dict)

    pipe = WanPipeline(
        tokenizer=build_tokenizer(),
        text_encoder=build_text_encoder(0),
        vae=build_vae(0),
        transformer=copy.deepcopy(base),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
    )
    pipe.load_lora_weights(folder, adapter_name="tuned")
    expected, before = velocity(tuned), velocity(base)
    got = velocity(pipe.transformer)
    error = (got - expected).abs().max() / expected.abs().max()
    assert error < 1e-4, error  # float32 factors of a float64 SVD
    assert (before - expected).abs().max() / expected.abs().max() > 100 * error  # the LoRA did the work


def test_truncation_keeps_the_top_singular_values_and_reports_left_out_parameters():
    base = tiny_transformer(0)
    tuned = tuned_from(base, norms=True)
    full, low = extract_lora(tuned, base, rank=None), extract_lora(tuned, base, rank=2)
    assert set(low.ranks.values()) == {2}
    assert low.kept_energy < full.kept_energy == pytest.approx(full.linear_energy)
    name = "blocks.0.attn1.to_q"
    delta = (tuned.get_submodule(name).weight - base.get_submodule(name).weight).detach().double()
    s = torch.linalg.svdvals(delta)
    b, a = low.state_dict[f"{name}.lora_B.weight"].double(), low.state_dict[f"{name}.lora_A.weight"].double()
    # Eckart-Young: the rank-2 factor's error is the energy of the dropped singular values.
    assert float((delta - b @ a).square().sum()) == pytest.approx(float(s[2:].square().sum()), rel=1e-4)
    assert low.left_out and all("norm" in n for n in low.left_out)
    assert 0 < low.kept_fraction < full.kept_fraction < 1


def test_bad_ranks_files_and_unchanged_models_are_one_line_errors(tmp_path):
    assert parse_rank("full") is None and parse_rank("16") == 16
    for bad in ("0", "-3", "x"):
        with pytest.raises(InputError, match="positive integer or 'full'"):
            parse_rank(bad)
    base = tiny_transformer(0)
    with pytest.raises(InputError, match="no LoRA to export"):
        extract_lora(copy.deepcopy(base), base, rank=4)
    with pytest.raises(CheckpointError, match="different parameters"):
        extract_lora(tiny_transformer(0), WanTransformer3DModel.from_config({**TINY, "num_layers": 1}), 4)
    with pytest.raises(CheckpointError, match="no LoRA file"):
        lora_file(tmp_path)
    from safetensors.torch import save_file

    save_file({"blocks.0.weight": torch.zeros(2)}, tmp_path / "w.safetensors")
    with pytest.raises(CheckpointError, match="not a LoRA"):
        lora_file(tmp_path / "w.safetensors")
