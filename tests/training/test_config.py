"""Training configs: the `pyramid:` section, per-method objective options, and configs written before them."""

import json
import shutil

import pytest
import torch
import yaml

from pyramidal_wan.data.cache import NEGATIVE_PROMPT, CachedLatents
from pyramidal_wan.errors import InputError
from pyramidal_wan.pyramid import PyramidConfig
from pyramidal_wan.training.config import load_config
from pyramidal_wan.training.distill import DMDOptions
from pyramidal_wan.training.methods import METHODS, build_objective
from pyramidal_wan.training.trainer import sample_batch


def test_objective_options_belong_to_their_method():
    config = load_config(None, ["objective.name=dmd-pt", "objective.pt_form=x0", "pyramid.num_stages=2"])
    assert config.objective.pt_form == "x0" and config.pyramid == PyramidConfig(num_stages=2)
    assert config.pyramid.default_schedule == "20-10"
    # An option the method would ignore is an error naming the key, the method and whose option it is.
    with pytest.raises(
        InputError, match=r"objective.pt_form is not an option of dmd \(an option of dmd-pt\)"
    ):
        load_config(None, ["objective.name=dmd", "objective.pt_form=eps"])
    with pytest.raises(InputError, match="objective.teacher is not an option of pyramidal"):
        load_config(None, ["objective.name=pyramidal", "objective.teacher=x"])
    with pytest.raises(InputError, match="unknown config key pyramid.colour"):
        load_config(None, ["pyramid.colour=red"])


def test_every_method_is_registered_once_with_its_options():
    assert set(METHODS) == {
        *("flow-matching", "multires-fm", "pyramidal", "ppf-fm"),
        *("dmd", "dmd-ot", "dmd-pt", "dmd-pt-star", "ppf-dmd", "adv-o", "adv-p"),
    }
    for name, method in METHODS.items():
        assert method.name == name and load_config(None, [f"objective.name={name}"]).objective.name == name
    assert METHODS["ppf-dmd"].options is DMDOptions and METHODS["ppf-dmd"].kind == "patch"


def test_configs_from_before_the_pyramid_section_still_load(tmp_path):
    path = tmp_path / "old.yaml"
    path.write_text(
        "objective:\n  name: ppf-dmd\n  num_stages: 3\n  stage_embedding: true\n  schedule: 2-2-1\n"
    )
    config = load_config(path)
    assert config.pyramid == PyramidConfig(kind="patch", stage_embedding=True)
    assert config.objective.schedule == "2-2-1" and not hasattr(config.objective, "num_stages")
    old = load_config(None, ["objective.name=pyramidal", "objective.clean_ends=[0.3, 0.6]"])
    assert old.pyramid.clean_ends == (0.3, 0.6) and old.pyramid.kind == "resolution"


def test_a_method_refuses_a_pyramid_of_another_kind(tiny_cache):
    config = load_config(None, ["objective.name=ppf-fm", f"data.cache={tiny_cache}"])
    with pytest.raises(InputError, match="ppf-fm trains a patch pyramid.*set pyramid.kind=patch"):
        build_objective(config)


def test_teachers_use_the_models_negative_prompt_unless_told(tiny_cache, tmp_path):
    """The cache holds the model's negative prompt (text in its metadata); DMD's CFG reads it by default,
    the empty prompt with teacher_uncond=empty, and a cache without it fails before training."""
    data = CachedLatents(tiny_cache)
    assert data.negative_prompt is not None and data.negative_prompt_text == ""  # the toy model's
    batch = sample_batch(data, 2, 0.0, torch.Generator().manual_seed(0), "cpu")
    base = [
        "model.init=toy-wan",
        f"data.cache={tiny_cache}",
        "objective.name=dmd",
        "objective.schedule=0-0-2",
    ]
    objective = build_objective(load_config(None, base))
    assert objective.run_record(data) == {"teacher_uncond": "negative-prompt", "teacher_uncond_text": ""}
    torch.testing.assert_close(objective.unconditional_text(batch)[0], batch["negative_prompt"])
    batch["negative_prompt"] = batch["negative_prompt"] + 1.0  # tell the two apart
    assert not torch.equal(objective.unconditional_text(batch)[1], batch["empty_prompt"])
    empty = build_objective(load_config(None, [*base, "objective.teacher_uncond=empty"]))
    assert empty.run_record(data)["teacher_uncond"] == "empty"
    torch.testing.assert_close(empty.unconditional_text(batch)[1], batch["empty_prompt"])

    older = tmp_path / "older-cache"
    shutil.copytree(tiny_cache, older)
    (older / NEGATIVE_PROMPT).unlink()
    with pytest.raises(InputError, match="rerun `pyramidal-wan prepare-data`.*teacher_uncond=empty"):
        objective.run_record(CachedLatents(older))
    assert json.loads(json.dumps(objective.run_record(data)))  # JSON-ready for run.json


def test_an_older_runs_saved_config_still_loads(tmp_path):
    """Runs saved every field of the one old objective config in config.yaml; `export` reads that file."""
    dump = {
        **{
            "name": "dmd-pt",
            "stages": [0],
            "timestep_sampling": "uniform",
            "logit_mean": 0.0,
            "logit_std": 1.0,
        },
        **{"shift": 1.0, "num_stages": 3, "clean_ends": [0.3, 0.6], "wavelet": "haar"},
        **{
            "noisy_end_signal": "upsampled",
            "dist_weight": 1.0,
            "dist_stage_weights": None,
            "schedule": "2-2-1",
        },
        **{"teacher": None, "fake": None, "guidance_scale": 5.0, "critic_ratio": 5, "teach_weight": 0.01},
        **{"tau_range": [0.02, 0.98], "pt_form": "x0", "student_input": "data", "adv_blocks": None},
        **{
            "adv_weight": 1.0,
            "rec_weight": 2.0,
            "rec_steps": 10,
            "head_channels": 256,
            "stage_embedding": False,
        },
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"train": {"steps": 5}, "objective": dump}))
    config = load_config(path)
    assert config.objective.pt_form == "x0" and not hasattr(config.objective, "head_channels")
    assert config.pyramid == PyramidConfig(clean_ends=(0.3, 0.6))
    # A hand-written config naming an ignored option still fails (only the full old dump is converted).
    path.write_text(yaml.safe_dump({"objective": {"name": "dmd-pt", "head_channels": 64}}))
    with pytest.raises(InputError, match="objective.head_channels is not an option of dmd-pt"):
        load_config(path)
