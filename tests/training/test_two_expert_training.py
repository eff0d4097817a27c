"""Training a two-expert (Wan2.2 A14B) model on tiny random experts: each sample's sigma picks the expert that
predicts it, only the experts `model.expert` names change, and the exported folder holds both and samples."""

import json

import pytest
import torch
from diffusers import (
    FlowMatchEulerDiscreteScheduler,
    WanImageToVideoPipeline,
    WanPipeline,
    WanTransformer3DModel,
)
from helpers import (
    TINY_TRANSFORMER,
    build_components,
    conditioning_image,
    save_original_experts,
    tiny_train_config,
)

from pyramidal_wan.cli import main
from pyramidal_wan.data.cache import CachedLatents
from pyramidal_wan.errors import InputError
from pyramidal_wan.models.loading import load_diffusers_transformer
from pyramidal_wan.models.wan_family import ExpertVelocity
from pyramidal_wan.pipelines import PyramidalWanPipeline
from pyramidal_wan.toy.dataset import make_dataset
from pyramidal_wan.training.methods import build_objective
from pyramidal_wan.training.trainer import sample_batch, train

BOUNDARY = 0.875  # Wan2.2-T2V-A14B's


@pytest.fixture(scope="module")
def a14b_dir(tmp_path_factory):
    """A two-expert folder in diffusers' Wan2.2-T2V-A14B layout (written by WanPipeline)."""
    folder = tmp_path_factory.mktemp("a14b")
    WanPipeline(
        **build_components(0),
        transformer_2=build_components(1)["transformer"],
        boundary_ratio=BOUNDARY,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
    ).save_pretrained(folder)
    return folder


def expert_weights(folder):
    return {
        name: load_diffusers_transformer(folder / name).state_dict()
        for name in ("transformer", "transformer_2")
    }


def changed(before: dict, after: dict) -> bool:
    return any(not torch.equal(after[k], v) for k, v in before.items())


def test_each_sample_trains_the_expert_of_its_sigma(a14b_dir, tiny_cache, tmp_path):
    config = tiny_train_config(
        tiny_cache, tmp_path / "run", f"model.init={a14b_dir}", "objective.name=pyramidal", "model.expert=low"
    )
    objective = build_objective(config)
    student = objective.nets["generator"]
    assert isinstance(student, ExpertVelocity) and student.boundary_ratio == BOUNDARY
    timesteps = {"high": [], "low": []}
    hooks = [
        getattr(student, name).transformer.register_forward_pre_hook(
            lambda m, a, kw, name=name: timesteps[name].append(kw["timestep"]), with_kwargs=True
        )
        for name in ("high", "low")
    ]
    batch = sample_batch(
        CachedLatents(tiny_cache), 12, 0.0, torch.Generator().manual_seed(0), torch.device("cpu")
    )
    try:
        loss, _ = objective.generator_loss(batch, torch.Generator().manual_seed(0))
    finally:
        for hook in hooks:
            hook.remove()
    loss.backward()
    high, low = torch.cat(timesteps["high"]), torch.cat(timesteps["low"])
    # 4 samples at the lowest stage (sigma in [0.667, 1]): some reach the high-noise expert.
    assert len(high) > 0 and (high >= 1000 * BOUNDARY).all() and (low < 1000 * BOUNDARY).all()
    assert all(p.grad is None for p in student.high.parameters())  # frozen: computes, does not train
    assert all(p.grad is not None for p in student.low.parameters())


@pytest.mark.parametrize(
    "expert, overrides",
    [
        ("low", ["objective.name=pyramidal"]),
        # Noise levels near 1 (logit-normal around sigmoid(5)): the high-noise expert's range.
        ("high", ["objective.timestep_sampling=logit-normal", "objective.logit_mean=5.0"]),
    ],
)
def test_training_changes_only_the_chosen_expert_and_exports_both(
    a14b_dir, tiny_cache, tmp_path, expert, overrides
):
    config = tiny_train_config(
        tiny_cache, tmp_path / "run", f"model.init={a14b_dir}", f"model.expert={expert}", *overrides
    )
    out = train(config, progress=False)
    model = out / "model"
    before, after = expert_weights(a14b_dir), expert_weights(model)
    trained = "transformer" if expert == "high" else "transformer_2"
    frozen = "transformer_2" if expert == "high" else "transformer"
    assert changed(before[trained], after[trained])
    assert not changed(before[frozen], after[frozen])  # exported exactly as loaded
    index = json.loads((model / "model_index.json").read_text())
    assert index["boundary_ratio"] == BOUNDARY and index["transformer_2"][1] == "WanTransformer3DModel"
    pipe = PyramidalWanPipeline.from_pretrained(model)
    pipe.set_progress_bar_config(disable=True)
    calls = {"transformer": 0, "transformer_2": 0}
    for name in calls:
        getattr(pipe, name).register_forward_pre_hook(lambda *_, n=name: calls.__setitem__(n, calls[n] + 1))
    size = {"num_frames": 17, "height": 64, "width": 64}
    for schedule, sampler in (("2-2-1", "fewstep"), ("2-2-2", "multistep")):
        video = pipe(
            "a prompt", schedule=schedule, sampler=sampler, guidance_scale=1.0, output_type="latent", **size
        )
        assert torch.isfinite(video.frames).all()
    assert calls["transformer"] > 0 and calls["transformer_2"] > 0  # both experts sample


def test_distilling_a_two_expert_model_trains_its_student_and_fake_score_experts(
    a14b_dir, tiny_cache, tmp_path
):
    config = tiny_train_config(
        tiny_cache,
        tmp_path / "run",
        f"model.init={a14b_dir}",
        "objective.name=dmd-ot",
        f"objective.teacher={a14b_dir}",
        "objective.critic_ratio=1",
        "objective.teacher_uncond=empty",
    )
    objective = build_objective(config)
    assert all(isinstance(objective.nets[g], ExpertVelocity) for g in ("generator", "critic"))
    assert isinstance(objective.teacher, ExpertVelocity)
    out = train(config, progress=False)
    before, after = expert_weights(a14b_dir), expert_weights(out / "model")
    assert changed(before["transformer_2"], after["transformer_2"])  # 2-2-1: the low expert serves 4 of 5


@pytest.mark.parametrize(
    "command, overrides, message",
    [
        (["finetune"], ["model.init=toy-wan", "model.expert=high"], "model.expert=high needs a two-expert"),
        (["finetune"], ["model.lora_rank=4"], "LoRA on a two-expert model is not supported"),
        (["distill", "--method", "adv-p"], [], "adv-p reads one backbone's features but model.init"),
    ],
)
def test_unsupported_two_expert_settings_are_one_line_errors(
    a14b_dir, tiny_cache, tmp_path, capsys, command, overrides, message
):
    out = tmp_path / "run"
    args = [f"data.cache={tiny_cache}", f"train.out={out}", f"model.init={a14b_dir}", *overrides]
    assert main([*command, *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert [p.name for p in out.glob("*")] in ([], ["run.lock"])  # no config, checkpoint or model


def test_a_one_transformer_pipeline_for_two_experts_is_refused(a14b_dir, tiny_cache, tmp_path):
    """The export copies model.pipeline's model_index.json: one without transformer_2 would hide an expert."""
    WanPipeline(**build_components(0), scheduler=FlowMatchEulerDiscreteScheduler()).save_pretrained(
        tmp_path / "one"
    )
    config = tiny_train_config(
        tiny_cache, tmp_path / "run", f"model.init={a14b_dir}", f"model.pipeline={tmp_path / 'one'}"
    )
    with pytest.raises(InputError, match="has one transformer but model.init .* two experts"):
        build_objective(config)


def test_a_wan22_i2v_a14b_shaped_model_is_pyramidized_distilled_and_sampled(tmp_path):
    """Two 36-channel experts without CLIP (boundary 0.9): prepare-data caches the per-stage conditions, a
    pyramidal fine-tune and then a DMD-OT distillation train on them, and the result samples with an image."""
    parts = build_components(0)
    for name, seed in (("transformer", 0), ("transformer_2", 1)):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            parts[name] = WanTransformer3DModel.from_config({**TINY_TRANSFORMER, "in_channels": 36})
    folder = tmp_path / "i2v-a14b"
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    WanImageToVideoPipeline(**parts, boundary_ratio=0.9, scheduler=scheduler).save_pretrained(folder)
    make_dataset(tmp_path / "data", n=3, progress=False)
    size = ["--num-frames", "17", "--height", "64", "--width", "64"]
    cache = tmp_path / "cache"
    assert (
        main(
            [
                "prepare-data",
                "--data",
                str(tmp_path / "data"),
                "--model",
                str(folder),
                "--out",
                str(cache),
                *size,
            ]
        )
        == 0
    )
    assert CachedLatents(cache).image_conditioning == "channels"
    pyramidal = train(
        tiny_train_config(cache, tmp_path / "pyr", f"model.init={folder}", "objective.name=pyramidal"),
        progress=False,
    )
    distill = [f"model.init={pyramidal / 'model'}", "objective.name=dmd-ot", f"objective.teacher={folder}"]
    distilled = train(
        tiny_train_config(
            cache, tmp_path / "dmd", *distill, "objective.critic_ratio=1", "objective.teacher_uncond=empty"
        ),
        progress=False,
    )
    for before, after in ((folder, pyramidal / "model"), (pyramidal / "model", distilled / "model")):
        weights = expert_weights(before), expert_weights(after)
        assert changed(weights[0]["transformer_2"], weights[1]["transformer_2"])
    pipe = PyramidalWanPipeline.from_pretrained(distilled / "model")
    pipe.set_progress_bar_config(disable=True)
    assert pipe.image_mode == "channels" and pipe.config.boundary_ratio == 0.9
    video = pipe(
        "a prompt", image=conditioning_image(), output_type="latent", num_frames=17, height=64, width=64
    )
    assert torch.isfinite(video.frames).all()  # the exported few-step defaults (2-2-1, no CFG)


# ---- the original (non-diffusers) Wan2.2 A14B release ----------------------------------------------------


@pytest.fixture(scope="module")
def a14b_release(tmp_path_factory):
    """The original release layout (high_noise_model/, low_noise_model/) of experts other than a14b_dir's
    (seeds 2 and 3), so a test can tell which folder's weights were loaded."""
    high, low = (build_components(seed)["transformer"] for seed in (2, 3))
    return save_original_experts(high, low, tmp_path_factory.mktemp("release") / "Wan2.2-T2V-A14B")


def release_weights(folder):
    from pyramidal_wan.models.loading import load_experts

    high, low, _ = load_experts(folder, boundary_ratio=BOUNDARY)
    return {"transformer": high.state_dict(), "transformer_2": low.state_dict()}


def test_the_original_release_trains_at_the_boundary_of_model_pipeline(
    a14b_release, a14b_dir, tiny_cache, tmp_path
):
    """model.init is the release, model.pipeline the same model's diffusers folder: the experts come from the
    release, the boundary and the exported components from model.pipeline."""
    overrides = [f"model.init={a14b_release}", f"model.pipeline={a14b_dir}", "objective.name=pyramidal"]
    config = tiny_train_config(tiny_cache, tmp_path / "run", *overrides, "model.expert=low")
    out = train(config, progress=False)
    before, after = release_weights(a14b_release), expert_weights(out / "model")
    assert changed(before["transformer_2"], after["transformer_2"])
    assert not changed(before["transformer"], after["transformer"])  # the release's frozen expert, exported
    assert changed(expert_weights(a14b_dir)["transformer"], after["transformer"])  # not model.pipeline's
    index = json.loads((out / "model" / "model_index.json").read_text())
    assert index["boundary_ratio"] == BOUNDARY and index["transformer_2"][1] == "WanTransformer3DModel"
    # The boundary is model.pipeline's, whatever it is; DMD's teacher and fake score take it too.
    other = tmp_path / "boundary-0.8"
    parts = {**build_components(0), "transformer_2": build_components(1)["transformer"]}
    scheduler = FlowMatchEulerDiscreteScheduler()
    WanPipeline(**parts, boundary_ratio=0.8, scheduler=scheduler).save_pretrained(other)
    distill = [f"objective.teacher={a14b_release}", "objective.name=dmd-ot", "objective.critic_ratio=1"]
    models = [f"model.init={a14b_release}", f"model.pipeline={other}"]
    config = tiny_train_config(tiny_cache, tmp_path / "dmd", *models, *distill)
    objective = build_objective(config)
    for net in (objective.nets["generator"], objective.nets["critic"], objective.teacher):
        assert isinstance(net, ExpertVelocity) and net.boundary_ratio == 0.8


@pytest.mark.parametrize(
    "command, pipeline, message",
    [
        (["finetune"], None, "model.init {release} is the original Wan2.2 A14B release, which does not"),
        (["finetune"], "one", "does not record where the low-noise expert takes over; set model.pipeline"),
        (["finetune"], "i2v", "is another model than model.init {release} (in_channels 36 vs 16)"),
        (["distill", "--method", "dmd-ot"], None, "objective.teacher {release} is the original Wan2.2 A14B"),
    ],
)
def test_a_release_without_its_boundary_is_a_one_line_error(
    a14b_release, a14b_dir, tiny_cache, tmp_path, capsys, command, pipeline, message
):
    init = a14b_dir if command[0] == "distill" else a14b_release  # distill: the teacher is the release
    args = [f"data.cache={tiny_cache}", f"train.out={tmp_path / 'run'}", f"model.init={init}"]
    if command[0] == "distill":
        args.append(f"objective.teacher={a14b_release}")
    if pipeline is not None:
        parts = build_components(0)
        if pipeline == "i2v":  # two experts of Wan2.2-I2V-A14B's shape: its boundary (0.9) is not T2V's
            for name, seed in (("transformer", 0), ("transformer_2", 1)):
                torch.manual_seed(seed)
                parts[name] = WanTransformer3DModel.from_config({**TINY_TRANSFORMER, "in_channels": 36})
            parts["boundary_ratio"] = 0.9
        WanPipeline(**parts, scheduler=FlowMatchEulerDiscreteScheduler()).save_pretrained(tmp_path / pipeline)
        args.append(f"model.pipeline={tmp_path / pipeline}")
    capsys.readouterr()  # saving's progress bars
    assert main([*command, *args]) == 2
    err = capsys.readouterr().err
    assert message.format(release=a14b_release) in err and len(err.strip().splitlines()) == 1
    assert [p.name for p in (tmp_path / "run").glob("*")] in ([], ["run.lock"])  # nothing written
