import pytest
import torch
from helpers import tiny_train_config
from safetensors.torch import load_file

from pyramidal_wan.cli import main
from pyramidal_wan.errors import CheckpointError, InputError, TrainingDiverged
from pyramidal_wan.training import objectives
from pyramidal_wan.training.config import load_config
from pyramidal_wan.training.trainer import export_checkpoint, train


@pytest.mark.parametrize("objective", ["flow-matching", "multires-fm", "pyramidal"])
def test_each_objective_trains_and_exports(tiny_cache, tmp_path, objective):
    out = train(
        tiny_train_config(tiny_cache, tmp_path / objective, f"objective.name={objective}"), progress=False
    )
    weights = load_file(out / "checkpoint" / "generator.safetensors")
    assert weights and all(torch.isfinite(t).all() for t in weights.values())
    assert (out / "model" / "transformer" / "config.json").is_file()
    assert (out / "config.yaml").is_file()
    assert (out / "model" / "pyramid_config.json").is_file() == (objective == "pyramidal")


def test_resume_reaches_the_same_weights(tiny_cache, tmp_path):
    """4 steps at once == 2 steps, stop, resume, 2 more (optimizer, scheduler, RNG and EMA all restored)."""
    common = ["train.ema=0.9", "objective.name=pyramidal", "train.checkpoint_every=2"]
    straight = train(tiny_train_config(tiny_cache, tmp_path / "a", "train.steps=4", *common), progress=False)
    train(tiny_train_config(tiny_cache, tmp_path / "b", "train.steps=2", *common), progress=False)
    resumed = train(tiny_train_config(tiny_cache, tmp_path / "b", "train.steps=4", *common), progress=False)
    for name in ("generator.safetensors", "ema.safetensors"):
        a, b = load_file(straight / "checkpoint" / name), load_file(resumed / "checkpoint" / name)
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


def test_export_checkpoint_equals_the_final_export(tiny_cache, tmp_path):
    """Exporting the last checkpoint of a finished run gives the run's own model folder (EMA weights)."""
    config = tiny_train_config(tiny_cache, tmp_path / "run", "train.ema=0.9", "objective.name=pyramidal")
    out = train(config, progress=False)
    folder, step = export_checkpoint(config)
    assert (folder, step) == (out / "model-step2", 2)
    assert (folder / "pyramid_config.json").read_text() == (out / "model" / "pyramid_config.json").read_text()
    final = load_file(out / "model" / "transformer" / "diffusion_pytorch_model.safetensors")
    exported = load_file(folder / "transformer" / "diffusion_pytorch_model.safetensors")
    assert final.keys() == exported.keys()
    assert all(torch.equal(final[k], exported[k]) for k in final)
    with pytest.raises(CheckpointError, match="nothing to export"):
        export_checkpoint(tiny_train_config(tiny_cache, tmp_path / "none"))


def test_export_cli(tiny_cache, tmp_path, capsys):
    train(tiny_train_config(tiny_cache, tmp_path / "run"), progress=False)
    assert main(["export", "--run", str(tmp_path / "run"), "--out", str(tmp_path / "exported")]) == 0
    assert f"exported step 2 of {tmp_path / 'run'}" in capsys.readouterr().out
    assert (tmp_path / "exported" / "transformer" / "config.json").is_file()
    card = (tmp_path / "exported" / "README.md").read_text()  # the model card names the run and command
    assert f"Trained by the run {tmp_path / 'run'}" in card and "pyramidal-wan export --run" in card
    assert main(["export", "--run", str(tmp_path)]) == 2
    assert "not a training run (no config.yaml)" in capsys.readouterr().err


def test_export_lora_of_a_lora_run_writes_its_trained_adapter(tiny_cache, tmp_path, capsys):
    """`export --run RUN --lora R` of a run that trained a LoRA (model.lora_rank) on its model.init."""
    first = train(tiny_train_config(tiny_cache, tmp_path / "full"), progress=False)
    run = tmp_path / "lora"
    init = first / "model" / "transformer"  # a run from a preset exports its transformer alone
    train(tiny_train_config(tiny_cache, run, f"model.init={init}", "model.lora_rank=2"), progress=False)
    assert main(["export", "--run", str(run), "--lora", "16"]) == 0
    assert "the model's own trained LoRA (rank 2), written as it is" in capsys.readouterr().out
    assert (run / "lora-r16" / "pytorch_lora_weights.safetensors").is_file()
    card = (run / "lora-r16" / "README.md").read_text()
    assert f'base_model: "{init}"' in card and "trained LoRA, written as it is" in card


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tiny_cache, tmp_path, monkeypatch):
    calls = {"n": 0}
    original = objectives.FlowMatching.generator_loss

    def poisoned(self, batch, generator):
        calls["n"] += 1
        loss, logs = original(self, batch, generator)
        return (loss * float("nan") if calls["n"] == 2 else loss), logs

    monkeypatch.setattr(objectives.FlowMatching, "generator_loss", poisoned)
    with pytest.raises(TrainingDiverged, match="loss is nan at step 2"):
        train(tiny_train_config(tiny_cache, tmp_path / "nan", "train.steps=3"), progress=False)
    state = torch.load(tmp_path / "nan" / "checkpoint" / "train_state.pt", weights_only=True)
    assert state["step"] == 1


def test_lora_trains_only_the_adapter(tiny_cache, tmp_path):
    out = train(
        tiny_train_config(tiny_cache, tmp_path / "lora", "model.lora_rank=4", "objective.name=pyramidal"),
        progress=False,
    )
    weights = load_file(out / "checkpoint" / "generator.safetensors")
    assert weights and all("lora" in k for k in weights)
    assert (out / "model" / "lora").is_dir()


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.nope=1", "unknown config key train.nope"),
        ("bogus.lr=1", "unknown config section 'bogus'"),
        ("train.steps=abc", "train.steps must be a number"),
        ("train.steps=1.5", "train.steps must be an integer"),
        ("objective.name=magic", "unknown objective 'magic'"),
        ("train.checkpoint_every=0", "train.checkpoint_every must be >= 1, got 0"),
        ("train.log_every=0", "train.log_every must be >= 1, got 0"),
        ("train.batch_size=0", "train.batch_size must be >= 1, got 0"),
        ("train.lr=nan", "train.lr must be a finite number, got nan"),
        ("train.critic_lr=-1e-5", "train.critic_lr must be > 0"),
        ("train.ema=1", "train.ema must be >= 0 and < 1"),
        ("train.betas=[0.9]", "train.betas needs 2 values"),
        ("train.precision=fp8", "train.precision must be one of no, bf16, fp16"),
        ("train.keep_checkpoints=-1", "train.keep_checkpoints must be >= 0"),
        ("data.text_dropout=1.5", "data.text_dropout must be >= 0 and <= 1"),
        ("train.sharding=zero3", "train.sharding must be one of none, fsdp2"),
        # the pyramid: section and the per-method objective options are checked by the same types
        ("pyramid.num_stages=0", "pyramid.num_stages must be >= 1, got 0"),
        ("pyramid.shift=inf", "pyramid.shift must be a finite number"),
        ("pyramid.clean_ends=[0.3, nan]", r"pyramid.clean_ends\[1\] must be a finite number"),
        ("objective.clean_ends=[0.3, nan]", r"pyramid.clean_ends\[1\] must be a finite number"),  # legacy key
        ("objective.shift=0", "objective.shift must be > 0, got 0"),
        (
            "objective.timestep_sampling=normal",
            "objective.timestep_sampling must be one of uniform, logit-normal",
        ),
        ("objective.stages=[0, -1]", r"objective.stages\[1\] must be >= 0"),
        (("objective.name=pyramidal", "objective.dist_weight=-1"), "objective.dist_weight must be >= 0"),
        (
            ("objective.name=dmd", "objective.guidance_scale=inf"),
            "objective.guidance_scale must be a finite number",
        ),
        (("objective.name=dmd", "objective.critic_ratio=0"), "objective.critic_ratio must be >= 1, got 0"),
        (
            ("objective.name=dmd", "objective.tau_range=[0.02, 1.5]"),
            r"objective.tau_range\[1\] must be >= 0 and <= 1",
        ),
        (("objective.name=dmd", "objective.teach_weight=-0.1"), "objective.teach_weight must be >= 0"),
        (("objective.name=adv-o", "objective.rec_steps=0"), "objective.rec_steps must be >= 1, got 0"),
        (
            ("objective.name=adv-o", "objective.head_channels=0"),
            "objective.head_channels must be >= 1, got 0",
        ),
    ],
)
def test_bad_config_is_one_line(tiny_cache, tmp_path, override, message):
    overrides = (override,) if isinstance(override, str) else override
    with pytest.raises(InputError, match=message):
        config = tiny_train_config(tiny_cache, tmp_path / "bad", *overrides)
        train(config, progress=False)


def test_config_types_and_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 3.0e-4\n  betas: [0.9, 0.95]\nobjective:\n  stages: [0, 1]\n")
    config = load_config(path, ["train.steps=7", "objective.clean_ends=[0.3, 0.6]", "model.pipeline=none"])
    assert config.train.lr == 3e-4 and config.train.betas == (0.9, 0.95) and config.train.steps == 7
    assert config.objective.stages == (0, 1) and config.pyramid.clean_ends == (0.3, 0.6)
    assert config.model.pipeline is None


def test_exponent_without_a_dot_is_a_number(tmp_path):
    # YAML 1.1 reads "1e-4" as a string; in a file and on the command line it means the float.
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 1e-4\n")
    config = load_config(path, ["train.critic_lr=2e-5", "train.steps=1e3"])
    assert config.train.lr == 1e-4 and config.train.critic_lr == 2e-5 and config.train.steps == 1000


def test_curriculum_groups_follow_the_schedule_and_fill_the_batch():
    mix = ((0, 0.0, 0.4, 0.6), (10, 0.5, 0.3, 0.2))
    early = objectives.curriculum_groups(mix, 0.25, 16, step=9)
    late = objectives.curriculum_groups(mix, 0.0, 16, step=10)
    assert {stage for stage, _, _ in early} == {1, 2}  # low resolution first
    assert sorted((s, r.stop - r.start, img) for s, r, img in early) == [
        (1, 2, True),
        (1, 4, False),
        (2, 2, True),
        (2, 8, False),
    ]
    assert [(s, r.stop - r.start) for s, r, _ in late] == [(0, 8), (1, 5), (2, 3)]
    for groups in (early, late):  # contiguous, disjoint rows covering the whole batch
        assert [r.start for _, r, _ in groups] == [0] + [r.stop for _, r, _ in groups[:-1]]
        assert groups[-1][1].stop == 16


def test_multiresolution_pretraining_trains_every_stage_and_images(tiny_cache, tmp_path, monkeypatch):
    shapes = []
    original = objectives.FlowMatching.generator_loss

    def spy(self, batch, generator):
        model = self.nets["generator"]
        hook = model.register_forward_pre_hook(
            lambda m, args: shapes.append((batch["step"], args[0].shape[2:]))
        )
        try:
            return original(self, batch, generator)
        finally:
            hook.remove()

    monkeypatch.setattr(objectives.FlowMatching, "generator_loss", spy)
    config = tiny_train_config(
        tiny_cache,
        tmp_path / "pretrain",
        "train.batch_size=4",
        "objective.stage_mix=[[0,0,0,1],[1,0.5,0.25,0.25]]",
        "objective.image_fraction=0.5",
    )
    train(config, progress=False)
    first = {shape for step, shape in shapes if step == 0}
    second = {shape for step, shape in shapes if step == 1}
    assert len(first) == 2 and all(s[0] in (1, max(f[0] for f in first)) for s in first)  # images + clips
    assert len({s[1:] for s in second}) == 3  # every stage geometry in the mix
    assert any(s[0] == 1 for s in second)


@pytest.mark.parametrize("mix", ["[[5,1,0,0]]", "[[0,-1,1,1]]"])
def test_bad_curriculum_is_one_line(tiny_cache, tmp_path, mix):
    with pytest.raises(InputError, match="stage_mix"):
        train(tiny_train_config(tiny_cache, tmp_path / "bad", f"objective.stage_mix={mix}"), progress=False)


@pytest.mark.parametrize(
    "text, message",
    [
        ("train:\n  lr: [1e-4\n", "is not valid YAML"),
        ("train:\n\tlr: 1\n", "is not valid YAML"),
        ("train:\n  log_every: 0\n", "train.log_every must be >= 1"),
    ],
)
def test_a_bad_config_file_is_one_line_and_nothing_is_written(tiny_cache, tmp_path, capsys, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    out = tmp_path / "run"
    assert main(["finetune", "--config", str(path), f"data.cache={tiny_cache}", f"train.out={out}"]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
    path.write_bytes(b"\xff\xfe\x00")
    assert main(["finetune", "--config", str(path)]) == 2 and "is not valid YAML" in capsys.readouterr().err
