"""`pyramidal-wan export --lora` and `generate --lora`: a tuned tiny model's LoRA reproduces its videos on
the base, LoRAs stack with weights, a trained LoRA is written as it is, and bad input is one line."""

import copy

import numpy as np
import pytest
import torch
from pipeline_helpers import PROMPT, build_pipeline
from safetensors import safe_open

from pyramidal_wan.cli import main
from pyramidal_wan.pyramid import PyramidConfig
from pyramidal_wan.training.networks import add_lora
from pyramidal_wan.utils.video import read_video

CONFIG = PyramidConfig(sampler="fewstep", default_schedule="2-2-1")


def perturb_linears(transformer, seed: int = 1) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in transformer.modules():
            if isinstance(module, torch.nn.Linear):
                for param in module.parameters():
                    param.add_(0.1 * param.std() * torch.randn(param.shape, generator=generator))


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora-cli")
    base = build_pipeline(CONFIG)
    base.save_pretrained(root / "base")
    tuned = build_pipeline(CONFIG)
    perturb_linears(tuned.transformer)
    tuned.save_pretrained(root / "tuned")
    return root


def generate(folder, out, *extra) -> np.ndarray:
    args = ["generate", PROMPT, "--model", str(folder), "--out", str(out), "--threads", "1", *extra]
    assert main(args) == 0
    return read_video(out).astype(int)


def test_exported_lora_on_the_base_generates_the_tuned_video(folders, tmp_path, capsys):
    lora = tmp_path / "lora"
    args = ["export", "--model", str(folders / "tuned"), "--base", str(folders / "base"), "--lora", "full"]
    assert main([*args, "--out", str(lora)]) == 0
    printed = capsys.readouterr().out
    assert "100.00% of the weight delta's energy kept" in printed and "note:" not in printed
    card = (lora / "README.md").read_text()
    assert "license: apache-2.0" in card and f'base_model: "{folders / "base"}"' in card
    assert "| 2-2-1 | fewstep | no CFG |" in card and "pyramidal-wan export --model" in card

    tuned = generate(folders / "tuned", tmp_path / "tuned.mp4")
    base = generate(folders / "base", tmp_path / "base.mp4")
    with_lora = generate(folders / "base", tmp_path / "lora.mp4", "--lora", str(lora))
    halves = generate(
        folders / "base", tmp_path / "halves.mp4", "--lora", f"{lora}:0.5", "--lora", f"{lora}:0.5"
    )
    assert np.abs(tuned - base).max() > 20  # the tuning changed the video
    # The same video up to float rounding (amplified by the MP4's RGB -> YUV rounding), also from two
    # stacked half-weight copies of the LoRA.
    for video in (with_lora, halves):
        assert np.abs(video - tuned).max() <= 3 and np.abs(video - tuned).mean() < 0.05


def test_a_trained_lora_is_written_as_it_is(folders, tmp_path, capsys):
    """A model trained as a LoRA of the base (model.lora_rank): fused transformer + its lora/ adapter."""
    from peft.tuners.lora import LoraLayer

    pipe = build_pipeline(CONFIG)
    transformer = add_lora(pipe.transformer, rank=3, alpha=6)
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for module in transformer.modules():
            if isinstance(module, LoraLayer):
                for name in ("lora_A", "lora_B"):
                    weight = getattr(module, name)["default"].weight
                    weight.copy_(0.05 * torch.randn(weight.shape, generator=generator))
    model = tmp_path / "trained"
    transformer.save_lora_adapter(model / "lora")
    transformer.fuse_lora()
    transformer.unload_lora()
    pipe.save_pretrained(model)
    args = ["export", "--model", str(model), "--base", str(folders / "base"), "--lora", "16"]
    assert main([*args, "--out", str(tmp_path / "out")]) == 0
    assert "trained LoRA (rank 3), written as it is" in capsys.readouterr().out
    with safe_open(str(tmp_path / "out" / "pytorch_lora_weights.safetensors"), "pt") as f:
        keys = list(f.keys())
        assert all(k.startswith("transformer.") for k in keys)
        assert {f.get_tensor(k).shape[0] for k in keys if k.endswith("lora_A.weight")} == {3}
    tuned = generate(model, tmp_path / "tuned.mp4")
    with_lora = generate(folders / "base", tmp_path / "lora.mp4", "--lora", str(tmp_path / "out"))
    # alpha / rank = 2, carried in the file's metadata
    assert np.abs(with_lora - tuned).max() <= 3 and np.abs(with_lora - tuned).mean() < 0.05


@pytest.mark.parametrize(
    "args, message",
    [
        (["export", "--model", "M"], "export needs --run RUN, or --model MODEL --base BASE --lora RANK"),
        (["export", "--model", "{tuned}", "--base", "{tuned}", "--lora", "0"], "positive integer or 'full'"),
        (["export", "--model", "{tuned}", "--base", "{tuned}", "--lora", "4"], "no LoRA to export"),
        (
            ["export", "--model", "{tuned}", "--base", "nowhere", "--lora", "4"],
            "must be the base model's folder",
        ),
        (["generate", PROMPT, "--model", "{base}", "--lora", "nowhere"], "no LoRA file"),
        (
            ["generate", PROMPT, "--model", "{base}", "--lora", "{tuned}/model_index.json"],
            "corrupt safetensors",
        ),
    ],
)
def test_bad_lora_arguments_are_one_line_errors(folders, tmp_path, capsys, args, message):
    args = [a.format(tuned=folders / "tuned", base=folders / "base") for a in args]
    assert main([*args, "--out", str(tmp_path / "out.mp4")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "out.mp4").exists()


def test_a_lora_of_another_model_is_refused_before_sampling(folders, tmp_path, capsys):
    from pyramidal_wan.models.lora import extract_lora, save_lora

    wide = build_pipeline(CONFIG).transformer
    other = copy.deepcopy(wide)
    with torch.no_grad():
        other.proj_out.weight.add_(1.0)
    # A LoRA on proj_out with the wrong number of output features for the base.
    state = extract_lora(other, wide, 2).state_dict
    state = {
        "proj_out.lora_A.weight": state["proj_out.lora_A.weight"],
        "proj_out.lora_B.weight": torch.ones(7, 2),
    }
    save_lora(tmp_path / "bad", state)
    args = ["generate", PROMPT, "--model", str(folders / "base"), "--lora", str(tmp_path / "bad")]
    assert main([*args, "--out", str(tmp_path / "x.mp4")]) == 2
    assert "features where proj_out has" in capsys.readouterr().err
