"""The original (non-diffusers) Wan2.2 release layouts, loaded through diffusers' own key conversion: A14B's
`high_noise_model/` and `low_noise_model/` expert folders and TI2V-5B's transformer at the folder root.

The checkpoints are tiny random transformers of the real shapes (channels, patch, no CLIP branch; small width
and depth) written in the original names by `helpers.save_original`, sharded with an index as released.
"""

import json
import shutil

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel
from helpers import TI2V_CHANNELS, TINY_TRANSFORMER, build_components, save_original, save_original_experts

from pyramidal_wan.errors import CheckpointError
from pyramidal_wan.models.loading import (
    detect_layout,
    folder_boundary_ratio,
    is_two_expert,
    load_experts,
    load_original_transformer,
    load_transformer,
)
from pyramidal_wan.models.presets import get_transformer_config
from pyramidal_wan.models.wan_family import image_mode

BOUNDARY = 0.875  # Wan2.2-T2V-A14B's (diffusers' convert_wan_to_diffusers.py; Wan2.2's wan/configs)
I2V_IN_CHANNELS = 36  # Wan2.2-I2V-A14B: 16 noisy latent + 4 mask + 16 image latent, no CLIP branch


def experts(in_channels: int = 16) -> tuple[WanTransformer3DModel, WanTransformer3DModel]:
    """(high-noise, low-noise) tiny random experts of one architecture, different weights (seeds 0, 1)."""
    pair = []
    for seed in (0, 1):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            pair.append(WanTransformer3DModel.from_config({**TINY_TRANSFORMER, "in_channels": in_channels}))
    return pair[0].eval(), pair[1].eval()


def assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def one_line_error(fn, *args, match, **kwargs) -> str:
    with pytest.raises(CheckpointError, match=match) as err:
        fn(*args, **kwargs)
    assert "\n" not in str(err.value)
    return str(err.value)


@pytest.fixture(scope="module")
def t2v_experts():
    return experts()


@pytest.fixture(scope="module")
def release(tmp_path_factory, t2v_experts):
    """A Wan2.2-T2V-A14B-shaped release folder in the original layout."""
    return save_original_experts(*t2v_experts, tmp_path_factory.mktemp("release") / "Wan2.2-T2V-A14B")


@pytest.fixture(scope="module")
def diffusers_a14b(tmp_path_factory, t2v_experts):
    """The same two experts in diffusers' layout, as its WanPipeline saves them."""
    high, low = t2v_experts
    parts = {**build_components(0), "transformer": high, "transformer_2": low}
    folder = tmp_path_factory.mktemp("diffusers") / "Wan2.2-T2V-A14B-Diffusers"
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    WanPipeline(**parts, scheduler=scheduler, boundary_ratio=BOUNDARY).save_pretrained(folder)
    return folder


def test_the_release_is_detected_as_two_experts(release):
    assert detect_layout(release) == "original-experts"
    assert is_two_expert(release)
    assert folder_boundary_ratio(release) is None  # the release does not record it
    # The folder's transformer config (the high-noise expert's): T2V-A14B's shape at toy size.
    assert get_transformer_config(release) == get_transformer_config(TINY_TRANSFORMER)


def test_experts_load_exactly_as_the_diffusers_layout(release, diffusers_a14b, t2v_experts):
    high, low, ratio = load_experts(release, boundary_ratio=BOUNDARY)
    reference_high, reference_low, reference_ratio = load_experts(diffusers_a14b)
    assert ratio == reference_ratio == BOUNDARY
    assert_same_weights(high, reference_high)
    assert_same_weights(low, reference_low)
    # high_noise_model is `transformer`, low_noise_model `transformer_2` (their weights differ: no swap).
    assert_same_weights(high, t2v_experts[0])
    assert_same_weights(low, t2v_experts[1])
    assert not torch.equal(high.proj_out.weight, low.proj_out.weight)


def test_i2v_experts_take_the_image_as_channels_without_clip(tmp_path):
    high, low = experts(I2V_IN_CHANNELS)
    folder = save_original_experts(high, low, tmp_path / "Wan2.2-I2V-A14B", model_type="i2v")
    config = get_transformer_config(folder)
    assert config["in_channels"] == I2V_IN_CHANNELS and config["image_dim"] is None
    assert image_mode(config) == "channels"
    loaded_high, loaded_low, ratio = load_experts(folder, boundary_ratio=0.9)
    assert ratio == 0.9 and loaded_high.config.image_dim is None
    assert_same_weights(loaded_high, high)
    assert_same_weights(loaded_low, low)
    # The same config.json keys outside an expert folder describe Wan2.1-I2V, which has a CLIP branch.
    (tmp_path / "wan21").mkdir()
    shutil.copy(folder / "high_noise_model" / "config.json", tmp_path / "wan21" / "config.json")
    assert image_mode(get_transformer_config(tmp_path / "wan21")) == "clip"


def test_ti2v_5b_transformer_at_the_folder_root(tmp_path):
    torch.manual_seed(0)
    shape = {**TINY_TRANSFORMER, "in_channels": TI2V_CHANNELS, "out_channels": TI2V_CHANNELS}
    transformer = WanTransformer3DModel.from_config(shape).eval()
    folder = save_original(transformer, tmp_path / "Wan2.2-TI2V-5B", model_type="ti2v")
    assert detect_layout(folder) == "original" and not is_two_expert(folder)
    loaded = load_transformer(folder)
    assert loaded.config.in_channels == loaded.config.out_channels == TI2V_CHANNELS
    assert_same_weights(loaded, transformer)


def test_one_transformer_of_the_release_is_refused(release):
    one_line_error(load_transformer, release, match="a two-expert model")
    one_line_error(load_original_transformer, release, match="a two-expert model")


def test_the_boundary_is_never_guessed(release, diffusers_a14b):
    message = one_line_error(load_experts, release, match="does not record where the low-noise expert")
    assert "pass boundary_ratio" in message
    one_line_error(load_experts, diffusers_a14b, boundary_ratio=0.9, match="sets boundary_ratio 0.875")


@pytest.mark.parametrize(
    "damage, match",
    [
        ("drop low_noise_model", "has high_noise_model/ but no low_noise_model/"),
        ("drop high_noise_model", "has low_noise_model/ but no high_noise_model/"),
        ("deeper low-noise expert", "the experts differ in num_layers"),
        ("no low-noise config.json", "low_noise_model/config.json: file not found"),
    ],
)
def test_bad_release_folders_are_one_line_errors(release, tmp_path, damage, match):
    folder = tmp_path / "release"
    shutil.copytree(release, folder)
    low = folder / "low_noise_model"
    if damage == "drop low_noise_model":
        shutil.rmtree(low)
    elif damage == "drop high_noise_model":
        shutil.rmtree(folder / "high_noise_model")
    elif damage == "deeper low-noise expert":
        shutil.rmtree(low)
        torch.manual_seed(1)
        save_original(WanTransformer3DModel.from_config({**TINY_TRANSFORMER, "num_layers": 3}), low)
    else:
        (low / "config.json").unlink()
    one_line_error(load_experts, folder, boundary_ratio=BOUNDARY, match=match)


def test_weights_that_do_not_fit_their_config_are_refused(release, tmp_path):
    folder = tmp_path / "release"
    shutil.copytree(release, folder)
    config = folder / "low_noise_model" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "ffn_dim": 128}))
    (folder / "high_noise_model" / "config.json").write_text(config.read_text())
    one_line_error(load_experts, folder, boundary_ratio=BOUNDARY, match="weights do not match")
