"""Training beyond Wan2.1's shape: a Wan2.2-TI2V-5B-shaped model (48-channel latents of a 4x16x16 VAE) is
cached by prepare-data and pyramidized by finetune on tiny random weights."""

import torch
from helpers import TI2V_CHANNELS, build_ti2v_components
from safetensors.torch import load_file

from pyramidal_wan.data.cache import CacheSettings, prepare_data
from pyramidal_wan.models.loading import load_transformer
from pyramidal_wan.toy.dataset import make_dataset
from pyramidal_wan.training.config import load_config
from pyramidal_wan.training.trainer import train


def test_a_ti2v_5b_shaped_model_is_cached_and_pyramidized(tmp_path):
    parts = build_ti2v_components()
    make_dataset(tmp_path / "data", n=3, progress=False)
    cache = prepare_data(
        tmp_path / "data",
        tmp_path / "cache",
        parts["vae"],
        parts["tokenizer"],
        parts["text_encoder"],
        CacheSettings(17, 128, 128),
        shard_size=4,
        batch_size=3,
        progress=False,
    )
    parts["transformer"].save_pretrained(tmp_path / "init")
    config = load_config(
        None,
        [
            f"data.cache={tmp_path / 'cache'}",
            f"train.out={tmp_path / 'run'}",
            f"model.init={tmp_path / 'init'}",
            "objective.name=pyramidal",
            "train.batch_size=3",
            "train.steps=2",
            "train.log_every=1",
            "train.checkpoint_every=2",
            "model.pipeline=None",
        ],
    )
    out = train(config, progress=False)
    # The stage latents follow the 4x16x16 VAE: 17x128x128 -> 5x8x8, then halved per stage.
    assert cache["stage_latent_shapes"] == [[48, 5, 8, 8], [48, 3, 4, 4], [48, 2, 2, 2]]
    weights = load_file(out / "checkpoint" / "generator.safetensors")
    assert weights and all(torch.isfinite(t).all() for t in weights.values())
    trained = load_transformer(out / "model" / "transformer")
    assert trained.config.in_channels == TI2V_CHANNELS
    before = parts["transformer"].state_dict()
    changed = [k for k, v in trained.state_dict().items() if not torch.equal(v, before[k])]
    assert changed  # two steps moved the weights
