"""Wan2.2 A14B's two experts on tiny random transformers: diffusers consistency, expert choice per stage,
and one-line refusals of folders whose expert split is incomplete."""

import json
import shutil

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline
from pipeline_helpers import PROMPT, SIZE, BaselineGridScheduler, build_components, build_pipeline

from pyramidal_wan.cli import main
from pyramidal_wan.errors import CheckpointError, InputError
from pyramidal_wan.models.denoiser import WanVelocity
from pyramidal_wan.models.loading import load_transformer, load_transformer_for
from pyramidal_wan.models.wan_family import ExpertVelocity, describe_experts, expert_evaluations
from pyramidal_wan.pipelines import PyramidalWanPipeline
from pyramidal_wan.pyramid import PyramidConfig, get_fewstep_grid, get_multistep_grid, parse_schedule

BOUNDARY = 0.875  # Wan2.2-T2V-A14B's
TEXT_LEN = 32  # the toy tokenizer's model_max_length


def generator(seed=0):
    return torch.Generator().manual_seed(seed)


def low_noise_expert(seed: int):
    return build_components(seed)["transformer"]


@pytest.fixture(scope="module")
def components():
    return build_components(0)


@pytest.fixture(scope="module")
def a14b_dir(tmp_path_factory, components):
    """A two-expert folder written by diffusers' WanPipeline (the Wan2.2-T2V-A14B-Diffusers layout)."""
    folder = tmp_path_factory.mktemp("a14b")
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    WanPipeline(
        **components, transformer_2=low_noise_expert(1), boundary_ratio=BOUNDARY, scheduler=scheduler
    ).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def pipe(a14b_dir):
    loaded = PyramidalWanPipeline.from_pretrained(a14b_dir)
    loaded.set_progress_bar_config(disable=True)
    return loaded


def count_calls(pipe):
    """Forward calls per expert, counted by hooks; returns (counts, remove)."""
    counts = {"transformer": 0, "transformer_2": 0}
    handles = [
        getattr(pipe, name).register_forward_pre_hook(lambda *_, n=name: counts.__setitem__(n, counts[n] + 1))
        for name in counts
    ]
    return counts, lambda: [h.remove() for h in handles]


def test_plain_schedule_matches_diffusers_with_both_experts(components, a14b_dir, pipe):
    steps = 4  # shifted levels 1, 0.9 (high-noise expert), 0.75, 0.5 (low-noise expert)
    wan = WanPipeline(
        **components,
        transformer_2=PyramidalWanPipeline.from_pretrained(a14b_dir).transformer_2,
        boundary_ratio=BOUNDARY,
        scheduler=BaselineGridScheduler(shift=3.0),
    )
    wan.set_progress_bar_config(disable=True)
    common = {"negative_prompt": "", "guidance_scale": 5.0, "max_sequence_length": TEXT_LEN, **SIZE}
    theirs = wan(PROMPT, num_inference_steps=steps, generator=generator(), output_type="latent", **common)
    counts, remove = count_calls(pipe)
    ours = pipe(PROMPT, schedule=f"0-0-{steps}", generator=generator(), output_type="latent", **common)
    remove()
    assert counts == {"transformer": 4, "transformer_2": 4}  # CPU: cond and uncond calls per step
    diff = (ours.frames - theirs.frames).abs().max().item()
    print(f"two experts, 0-0-{steps}, w=5: max abs latent diff {diff:.3g}")
    assert diff < 1e-4


def test_each_stage_calls_the_expert_of_its_noise_level(pipe):
    schedule = "4-4-2"
    counts, remove = count_calls(pipe)
    pipe(PROMPT, schedule=schedule, guidance_scale=1.0, generator=generator(), output_type="latent", **SIZE)
    remove()
    grid = get_multistep_grid(
        pipe.pyramid_config.pyramid(), parse_schedule(schedule, 3), shift=pipe.pyramid_config.shift
    )
    expected = expert_evaluations(grid, "multistep", BOUNDARY)
    assert counts == {
        "transformer": sum(r["high"] for r in expected),
        "transformer_2": sum(r["low"] for r in expected),
    }
    assert counts["transformer"] > 0 and counts["transformer_2"] > 0


def test_swapping_either_expert_changes_the_video(a14b_dir):
    def video(pipe):
        return pipe(
            PROMPT, schedule="4-4-2", guidance_scale=1.0, generator=generator(), output_type="latent", **SIZE
        ).frames

    pipe = PyramidalWanPipeline.from_pretrained(a14b_dir)
    pipe.set_progress_bar_config(disable=True)
    reference = video(pipe)
    assert torch.equal(video(pipe), reference)  # same seed, same video
    original_low = pipe.transformer_2
    pipe.transformer_2 = low_noise_expert(2)
    assert (video(pipe) - reference).abs().max() > 1e-3
    pipe.transformer_2, pipe.transformer = original_low, low_noise_expert(3)
    assert (video(pipe) - reference).abs().max() > 1e-3


def test_default_schedules_give_the_noisy_low_stage_to_the_high_noise_expert():
    pyramid = PyramidConfig().pyramid()  # stages [0, .586], [.333, .850], [.667, 1]
    multistep = expert_evaluations(get_multistep_grid(pyramid, (20, 20, 10)), "multistep", BOUNDARY)
    # Stage 2 at rho = 1 - k/20: sigma = 2/3 + rho/3 >= 0.875 for k <= 7.
    assert [(r["stage"], r["high"], r["low"]) for r in multistep] == [(2, 8, 12), (1, 0, 20), (0, 0, 10)]
    assert describe_experts(multistep) == "high 8 + low 12 / low 20 / low 10"
    fewstep = expert_evaluations(get_fewstep_grid(pyramid, (2, 2, 1)), "fewstep", BOUNDARY)
    assert [(r["high"], r["low"]) for r in fewstep] == [(1, 1), (0, 2), (0, 1)]  # sigma 1, 0.833, ...
    i2v = expert_evaluations(get_multistep_grid(pyramid, (20, 20, 10)), "multistep", 0.9)
    assert i2v[0]["high"] == 7  # sigma >= 0.9 for k <= 6


def test_a_mixed_batch_is_split_between_the_experts(components):
    high, low = WanVelocity(components["transformer"]), WanVelocity(low_noise_expert(1))
    model = ExpertVelocity(high, low, BOUNDARY)
    x = torch.randn(3, 16, 2, 8, 8, generator=generator())
    text = torch.randn(3, 4, 32, generator=generator(1))
    sigma = torch.tensor([0.95, 0.5, 0.875])
    with torch.no_grad():
        mixed = model(x, sigma, encoder_hidden_states=text)
        for i, expert in enumerate((high, low, high)):
            alone = expert(x[i : i + 1], sigma[i : i + 1], encoder_hidden_states=text[i : i + 1])
            torch.testing.assert_close(mixed[i : i + 1], alone, rtol=1e-5, atol=1e-5)


def edited_copy(a14b_dir, tmp_path, **changes):
    """A copy of the two-expert folder with model_index.json entries changed (None removes one)."""
    folder = tmp_path / "edited"
    shutil.copytree(a14b_dir, folder)
    index_path = folder / "model_index.json"
    index = json.loads(index_path.read_text())
    for key, value in changes.items():
        if value is None:
            index.pop(key, None)
        else:
            index[key] = value
    index_path.write_text(json.dumps(index))
    return folder


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"boundary_ratio": None}, "has transformer_2 but no boundary_ratio"),
        ({"transformer_2": [None, None]}, "names a two-expert model but the folder has no transformer_2"),
        ({"boundary_ratio": 1.5}, "must be a number strictly between 0 and 1"),
    ],
)
def test_an_incomplete_expert_split_is_refused(a14b_dir, tmp_path, capsys, changes, message):
    folder = edited_copy(a14b_dir, tmp_path, **changes)
    with pytest.raises(CheckpointError, match=message):
        PyramidalWanPipeline.from_pretrained(folder)
    out = tmp_path / "out" / "video.mp4"
    assert main(["generate", PROMPT, "--model", str(folder), "--out", str(out), "--schedule", "0-0-2"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not out.parent.exists()


def test_the_experts_come_together(components):
    with pytest.raises(InputError, match="transformer_2 .* and boundary_ratio go together"):
        build_pipeline(components={**components, "transformer_2": low_noise_expert(1)})
    with pytest.raises(InputError, match="go together"):
        build_pipeline(components={**components, "boundary_ratio": BOUNDARY})


def test_generate_reports_the_experts_of_each_stage(components, tmp_path, capsys):
    folder = tmp_path / "model"
    parts = {**components, "transformer_2": low_noise_expert(1), "boundary_ratio": BOUNDARY}
    build_pipeline(PyramidConfig(default_schedule="4-4-2"), components=parts).save_pretrained(folder)
    index = json.loads((folder / "model_index.json").read_text())
    assert index["boundary_ratio"] == BOUNDARY and index["transformer_2"][1] == "WanTransformer3DModel"
    out = tmp_path / "video.mp4"
    assert main(["generate", PROMPT, "--model", str(folder), "--out", str(out), "--threads", "1"]) == 0
    printed = capsys.readouterr().out
    assert "experts per stage (lowest resolution first): high 2 + low 2 / low 4 / low 2" in printed
    loaded = PyramidalWanPipeline.from_pretrained(folder)
    for name in ("transformer", "transformer_2"):
        for (key, a), b in zip(parts[name].state_dict().items(), getattr(loaded, name).state_dict().values()):
            assert torch.equal(a, b), key
    assert np.asarray(loaded.config.boundary_ratio) == BOUNDARY


def test_loading_one_transformer_of_a_two_expert_folder_is_refused(a14b_dir):
    # Training, export and cards load one transformer; half of a two-expert model must not pass silently.
    with pytest.raises(CheckpointError, match="a two-expert model"):
        load_transformer(a14b_dir)
    with pytest.raises(CheckpointError, match="a two-expert model"):
        load_transformer_for(str(a14b_dir))
