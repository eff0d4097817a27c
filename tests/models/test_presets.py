"""Transformer presets, config reading (preset, config.json, folder, original release) and meta builds."""

import json

import pytest
import torch
from diffusers import WanTransformer3DModel

from pyramidal_wan.errors import CheckpointError, InputError
from pyramidal_wan.models.presets import (
    PRESETS,
    build_on_meta,
    count_parameters,
    get_transformer_config,
    original_to_diffusers_config,
)


def test_wan21_1p3b_preset_matches_method():
    config = get_transformer_config("wan2.1-1.3b")
    assert config["num_layers"] == 30 and config["ffn_dim"] == 8960 and config["text_dim"] == 4096
    assert config["num_attention_heads"] * config["attention_head_dim"] == 1536
    assert config["patch_size"] == (1, 2, 2) and config["qk_norm"] == "rms_norm_across_heads"


@pytest.mark.parametrize(
    "name, billions", [("wan2.1-1.3b", 1.419), ("wan2.1-14b", 14.288), ("toy-wan", 0.000984)]
)
def test_meta_build_parameter_counts(name, billions):
    model = build_on_meta(name)
    assert isinstance(model, WanTransformer3DModel)
    assert all(p.is_meta for p in model.parameters())
    # METHOD.md §1.1: about 1.42 B for 1.3B; the toy calibration note: 0.98 M.
    assert count_parameters(model) / 1e9 == pytest.approx(billions, rel=1e-3)  # 1.419 B, 14.288 B, 0.984 M


def test_meta_forward_gives_output_shape():
    model = build_on_meta("wan2.1-1.3b")
    x = torch.empty(1, 16, 6, 14, 26, device="meta")  # (B, C, T, H, W), the lowest paper stage
    with torch.no_grad():
        out = model(
            x, torch.empty(1, device="meta"), torch.empty(1, 512, 4096, device="meta"), return_dict=False
        )
    assert out[0].shape == x.shape


def test_unknown_preset_lists_valid_names():
    with pytest.raises(InputError) as err:
        get_transformer_config("wan2.1-7b")
    for name in PRESETS:
        assert name in str(err.value)


def test_config_json_and_folders(tmp_path):
    torch.manual_seed(0)
    model = WanTransformer3DModel.from_config(get_transformer_config("toy-wan"))
    model.save_pretrained(tmp_path / "pipe" / "transformer")
    expected = get_transformer_config("toy-wan")
    assert get_transformer_config(tmp_path / "pipe") == expected  # pipeline folder: transformer/config.json
    assert get_transformer_config(tmp_path / "pipe" / "transformer") == expected  # transformer folder
    assert get_transformer_config(str(tmp_path / "pipe" / "transformer" / "config.json")) == expected


def test_original_release_config_translates_to_the_preset(tmp_path):
    original = {
        "_class_name": "WanModel",
        "_diffusers_version": "0.30.0",
        "dim": 1536,
        "eps": 1e-06,
        "ffn_dim": 8960,
        "freq_dim": 256,
        "in_dim": 16,
        "model_type": "t2v",
        "num_heads": 12,
        "num_layers": 30,
        "out_dim": 16,
        "text_len": 512,
    }
    (tmp_path / "config.json").write_text(json.dumps(original))
    assert get_transformer_config(tmp_path) == get_transformer_config("wan2.1-1.3b")
    i2v = original_to_diffusers_config({**original, "model_type": "i2v", "in_dim": 36})
    assert i2v["image_dim"] == 1280 and i2v["added_kv_proj_dim"] == 1536 and i2v["in_channels"] == 36


@pytest.mark.parametrize(
    "content, match",
    [
        ("{not json", "not valid JSON"),
        ('{"_class_name": "AutoencoderKLWan"}', "expected WanTransformer3DModel"),
        ('{"num_layers": 2, "bogus": 1}', "unknown WanTransformer3DModel config keys"),
        ('{"_class_name": "WanModel", "dim": 64}', "lacks"),
    ],
)
def test_bad_config_files_raise_one_line(tmp_path, content, match):
    path = tmp_path / "config.json"
    path.write_text(content)
    with pytest.raises(InputError, match=match) as err:
        get_transformer_config(path)
    assert "\n" not in str(err.value)


def test_folder_without_config_raises(tmp_path):
    with pytest.raises(CheckpointError, match="no transformer/config.json"):
        get_transformer_config(tmp_path)
