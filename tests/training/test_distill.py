"""Step distillation end to end on the tiny cache (METHOD.md 6-8): every method, resume, roles, validation."""

import pytest
import torch
from diffusers import WanTransformer3DModel
from helpers import needs_torchrun, record_sampling, run_cli_in_two_cpu_processes
from safetensors.torch import load_file

from pyramidal_wan.cli import main
from pyramidal_wan.data.cache import CachedLatents
from pyramidal_wan.errors import InputError
from pyramidal_wan.models.checkpoint import load_pyramid_config
from pyramidal_wan.models.denoiser import WanVelocity
from pyramidal_wan.models.loading import load_transformer
from pyramidal_wan.models.ppf import PPFTransformer
from pyramidal_wan.models.presets import get_transformer_config
from pyramidal_wan.pipelines import PyramidalWanPipeline
from pyramidal_wan.pipelines.planning import resolve_sampling
from pyramidal_wan.pyramid import (
    PLAIN_SEGMENT,
    PyramidConfig,
    get_fewstep_grid,
    get_ppf_grid,
    ppf_stage_of,
    randn,
    sample_pyramid_few_step,
    start_stage,
)
from pyramidal_wan.pyramid.distillation import grid_points
from pyramidal_wan.toy.family import assemble_toy_pipeline
from pyramidal_wan.training import adversarial, distill
from pyramidal_wan.training.config import load_config
from pyramidal_wan.training.methods import METHODS as REGISTRY
from pyramidal_wan.training.methods import build_objective
from pyramidal_wan.training.trainer import export_checkpoint, sample_batch, train

METHODS = ("dmd", "dmd-ot", "dmd-pt", "dmd-pt-star", "adv-o", "adv-p")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Random toy-wan transformers standing in for the toy family: base, PyramidalWan, multi-res teacher,
    and "ppf", a PPF pipeline folder (the base in fresh patch layers, toy text stack and VAE)."""
    root = tmp_path_factory.mktemp("models")
    for seed, name in enumerate(("base", "pyramidal", "multires")):
        torch.manual_seed(seed)
        WanTransformer3DModel(**get_transformer_config("toy-wan")).save_pretrained(root / name)
    ppf = PPFTransformer(WanTransformer3DModel.from_pretrained(root / "base"), PyramidConfig(kind="patch"))
    assemble_toy_pipeline(root / "ppf", transformer=ppf, pyramid_config=ppf.pyramid_config)
    return root


def roles(method, folders):
    """The model roles of METHOD.md 7.1 / 8 for each method, on the tiny folders."""
    return {
        "dmd": [f"model.init={folders / 'base'}", "objective.schedule=0-0-2"],
        "dmd-ot": [f"model.init={folders / 'pyramidal'}", f"objective.teacher={folders / 'multires'}"],
        "dmd-pt": [f"model.init={folders / 'pyramidal'}", "model.lora_rank=4"],
        "dmd-pt-star": [f"model.init={folders / 'pyramidal'}", "model.lora_rank=4"],
        "adv-o": [f"model.init={folders / 'pyramidal'}", f"objective.teacher={folders / 'multires'}"],
        "adv-p": [f"model.init={folders / 'pyramidal'}"],
        # METHOD.md 9: the PPF student, the unmodified base as teacher (and fake score).
        "ppf-dmd": [
            f"model.init={folders / 'ppf'}",
            f"objective.teacher={folders / 'base'}",
            "pyramid.kind=patch",
        ],
    }[method]


def overrides(cache, out, method, folders, *extra):
    return [
        f"data.cache={cache}",
        f"train.out={out}",
        "train.batch_size=2",
        "train.steps=3",
        "train.log_every=1",
        "train.checkpoint_every=1",
        "model.pipeline=None",
        "data.text_dropout=0",
        f"objective.name={method}",
        "objective.critic_ratio=2",  # iterations 0 and 2 update the generator; every one the critic
        *(["objective.head_channels=32", "objective.rec_steps=2"] if method.startswith("adv") else []),
        *roles(method, folders),
        *extra,
    ]


def distill_config(cache, out, method, folders, *extra):
    return load_config(None, overrides(cache, out, method, folders, *extra))


@pytest.mark.parametrize("method", METHODS)
def test_each_method_trains_and_exports_a_few_step_model(tiny_cache, tmp_path, folders, method):
    out = train(distill_config(tiny_cache, tmp_path / method, method, folders), progress=False)
    # The trainer stops on a non-finite loss, so three finished iterations mean finite losses throughout.
    state = torch.load(out / "checkpoint" / "train_state.pt", weights_only=True)
    assert state["step"] == 3
    for group in ("generator", "critic"):
        weights = load_file(out / "checkpoint" / f"{group}.safetensors")
        assert weights and all(torch.isfinite(t).all() for t in weights.values())
    if method in ("dmd-pt", "dmd-pt-star"):  # only the adapter trains; it has left its zero init
        generator = load_file(out / "checkpoint" / "generator.safetensors")
        assert all("lora" in k for k in generator)
        assert any(v.abs().sum() > 0 for k, v in generator.items() if "lora_B" in k)
    # The exported folder samples with the few-step sampler at the student's schedule, without flags.
    pyramid_config = load_pyramid_config(out / "model")
    steps = (0, 0, 2) if method == "dmd" else (2, 2, 1)
    assert resolve_sampling(pyramid_config) == (steps, "fewstep", 1.0)
    pyramid = pyramid_config.pyramid()
    grid = get_fewstep_grid(pyramid, steps)
    model = WanVelocity(load_transformer(out / "model" / "transformer")).eval()
    batch = tiny_batch(tiny_cache)
    noise = torch.randn(
        batch["latents"][start_stage(grid)][:1].shape, generator=torch.Generator().manual_seed(0)
    )
    video = sample_pyramid_few_step(
        model, noise, pyramid, grid, {"encoder_hidden_states": batch["prompt_embeds"][:1]}
    )
    assert video.shape == batch["latents"][0][:1].shape and torch.isfinite(video).all()


@needs_torchrun
@pytest.mark.slow
@pytest.mark.parametrize("method", [*METHODS, "ppf-dmd"])
def test_each_method_trains_under_fsdp2(tiny_cache, tmp_path, folders, method):
    """2 gloo processes with train.sharding=fsdp2: student, critic and frozen teachers sharded; three
    iterations (generator and critic updates) finish with finite losses, the sharded checkpoint gathers
    into the same folder the run exported."""
    out = tmp_path / method
    args = overrides(tiny_cache, out, method, folders, "train.sharding=fsdp2", "train.threads=1")
    run_cli_in_two_cpu_processes(["distill", "--method", method, *args], standalone=True)
    state = torch.load(out / "checkpoint" / "train_state.pt", weights_only=True)
    assert (state["step"], state["world_size"]) == (3, 2)
    folder, _ = export_checkpoint(distill_config(tiny_cache, out, method, folders), tmp_path / "gathered")
    name = "transformer/diffusion_pytorch_model.safetensors"
    final, gathered = load_file(out / "model" / name), load_file(folder / name)
    assert final.keys() == gathered.keys()
    assert all(torch.isfinite(final[k]).all() and torch.equal(final[k], gathered[k]) for k in final)


@pytest.mark.parametrize("method", ["dmd-pt", "adv-p"])
def test_resume_reaches_the_same_weights(tiny_cache, tmp_path, folders, method):
    """3 iterations at once == 2, stop, resume for 1 more: student, critic, optimisers and RNG restored."""
    straight = train(distill_config(tiny_cache, tmp_path / "a", method, folders), progress=False)
    train(distill_config(tiny_cache, tmp_path / "b", method, folders, "train.steps=2"), progress=False)
    resumed = train(distill_config(tiny_cache, tmp_path / "b", method, folders), progress=False)
    for group in ("generator", "critic"):
        a = load_file(straight / "checkpoint" / f"{group}.safetensors")
        b = load_file(resumed / "checkpoint" / f"{group}.safetensors")
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


def test_backward_simulation_runs(tiny_cache, tmp_path, folders):
    config = distill_config(
        tiny_cache,
        tmp_path / "sim",
        "dmd-pt-star",
        folders,
        "objective.student_input=backward",
        "objective.teach_weight=0",
    )
    out = train(config, progress=False)
    assert torch.load(out / "checkpoint" / "train_state.pt", weights_only=True)["step"] == 3


def tiny_batch(cache, seed=0):
    return sample_batch(CachedLatents(cache), 2, 0.0, torch.Generator().manual_seed(seed), "cpu")


def test_pt_teacher_is_the_students_base_with_adapters_disabled(tiny_cache, tmp_path, folders):
    objective = build_objective(
        distill_config(tiny_cache, tmp_path / "pt", "dmd-pt", folders, "objective.guidance_scale=1")
    )
    student = objective.nets["generator"]
    base = WanVelocity(WanTransformer3DModel.from_pretrained(folders / "pyramidal")).eval()
    batch = tiny_batch(tiny_cache)
    x, sigma, text = batch["latents"][1], torch.tensor([0.7, 0.4]), batch["prompt_embeds"]
    with torch.no_grad():
        torch.testing.assert_close(
            student(x, sigma, text), base(x, sigma, text), rtol=0, atol=0
        )  # LoRA B = 0
        for name, param in student.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.1, generator=torch.Generator().manual_seed(1))
        trained = student(x, sigma, text)
        assert (trained - base(x, sigma, text)).abs().max() > 1e-3
        teacher = objective.teacher_velocity(x, sigma, text, None)
        torch.testing.assert_close(teacher, base(x, sigma, text), rtol=0, atol=0)
        torch.testing.assert_close(student(x, sigma, text), trained, rtol=0, atol=0)  # adapters back on
    assert objective.teacher is None  # no extra copy is held
    params = [p for p in objective.nets["critic"].parameters()]
    assert all(p.requires_grad for p in params)  # the fake score is full-parameter


def test_adversarial_steps_on_the_smallest_stage(tiny_cache, tmp_path, folders, monkeypatch):
    """Lowest stage (token grid 2x2x2): the hooked forward stops after block 1 of 4; the generator's loss
    reaches the student but leaves the heads' gradients alone; the critic's loss trains only the heads."""
    config = distill_config(tiny_cache, tmp_path / "adv", "adv-p", folders, "objective.adv_blocks=[0, 1]")
    objective = build_objective(config)
    monkeypatch.setattr(adversarial.AdversarialDistillation, "grid_point", lambda self, batch, g: (0, 0))
    assert objective.grid[0].segment.stage == 2
    ran = []
    for j, block in enumerate(objective.backbone.transformer.blocks):
        block.register_forward_hook(lambda m, a, o, j=j: ran.append(j))
    batch, g = tiny_batch(tiny_cache), torch.Generator().manual_seed(0)
    loss, logs = objective.critic_loss(batch, g)
    loss.backward()
    assert torch.isfinite(loss) and ran == [0, 1]  # one batched call for real and fake, blocks 2, 3 skipped
    heads, student = objective.nets["critic"], objective.nets["generator"]
    assert all(p.grad is not None for p in heads.parameters())
    assert all(p.grad is None for p in student.parameters())
    heads.zero_grad(set_to_none=True)
    ran.clear()
    loss, logs = objective.generator_loss(batch, g)
    loss.backward()
    assert torch.isfinite(loss) and {"loss_adv", "loss_rec"} <= set(logs)
    assert all(p.grad is None for p in heads.parameters()) and all(
        p.requires_grad for p in heads.parameters()
    )
    assert all(p.grad is not None for p in student.parameters())
    # Backbone: blocks 0-1 for the fake; the reconstruction teacher (the same PyramidalWan) runs all 4 twice.
    assert ran == [0, 1] + [0, 1, 2, 3] * 2


@pytest.mark.parametrize(
    "method, extra, message",
    [
        ("dmd", ["objective.schedule=2-2-1"], "plain Wan-DMD baseline"),
        ("dmd-ot", ["objective.schedule=0-0-2"], "pyramidal student"),
        ("dmd-ot", ["objective.teacher=None"], "needs objective.teacher"),
        ("adv-o", ["objective.teacher=None"], "needs objective.teacher"),
        ("dmd-pt", ["model.lora_rank=0"], "LoRA student"),
        ("dmd-pt", ["objective.pt_form=v"], "pt_form"),
        ("dmd-pt", ["objective.student_input=backward"], "no paired data latent"),
        ("dmd", ["objective.tau_range=[0.5, 0.2]"], "tau_range"),
        ("adv-p", ["objective.critic_ratio=0"], "critic_ratio"),
        ("adv-p", ["objective.adv_blocks=[1, 4]"], r"adv_blocks \(1, 4\) must be distinct .* 0..3"),
        ("ppf-dmd", ["objective.schedule=0-0-2"], "ppf-dmd trains a pyramidal student"),
        ("ppf-dmd", ["model.lora_rank=4"], "lora_rank=0"),
        ("ppf-dmd", ["pyramid.clean_ends=[0.3, 0.6]"], "match pyramid.num_stages / clean_ends"),
        ("ppf-dmd", ["objective.teacher=None"], "needs objective.teacher"),
        ("ppf-dmd", ["model.init={folders}/pyramidal-folder"], "resolution-pyramid model"),
        (
            "dmd-ot",
            ["objective.teacher=/nonexistent/multires"],
            "objective.teacher /nonexistent/multires does not",
        ),
    ],
)
def test_bad_settings_are_rejected_before_model_work(tiny_cache, tmp_path, folders, method, extra, message):
    if any("pyramidal-folder" in e for e in extra):  # a PyramidalWan folder with its pyramid_config.json
        from pyramidal_wan.models.checkpoint import save_pyramid_config
        from pyramidal_wan.pyramid import PyramidConfig

        (folders / "pyramidal-folder").mkdir(exist_ok=True)
        save_pyramid_config(folders / "pyramidal-folder", PyramidConfig())
    extra = [e.format(folders=folders) for e in extra]
    with pytest.raises(InputError, match=message):  # at the config loader or when the objective is built
        build_objective(distill_config(tiny_cache, tmp_path / "bad", method, folders, *extra))


def test_student_folder_pyramid_must_match_the_objective(tiny_cache, tmp_path, folders):
    """A PyramidalWan folder fine-tuned with other stage boundaries is rejected before any training."""
    import shutil

    from pyramidal_wan.models.checkpoint import save_pyramid_config
    from pyramidal_wan.pyramid import PyramidConfig

    student = tmp_path / "pyramidal-0.3-0.6"
    shutil.copytree(folders / "pyramidal", student)
    save_pyramid_config(student, PyramidConfig(clean_ends=(0.3, 0.6)))
    config = distill_config(tiny_cache, tmp_path / "x", "dmd-pt-star", folders, f"model.init={student}")
    with pytest.raises(InputError, match=r"clean ends \[0.3, 0.6\].*pyramid.clean_ends"):
        build_objective(config)
    config = distill_config(
        tiny_cache,
        tmp_path / "y",
        "dmd-pt-star",
        folders,
        f"model.init={student}",
        "pyramid.clean_ends=[0.3, 0.6]",
    )
    assert build_objective(config).pyramid.segments[1].sigma_c == 0.3


def test_shipped_configs_are_valid(monkeypatch):
    """Every configs/*/distill-<method>.yaml loads and passes its method's checks (no models loaded; the
    model folders they name are produced by earlier recipes, so their existence is not checked here)."""
    from pathlib import Path

    monkeypatch.setattr(distill, "check_model_source", lambda key, value: None)

    root = Path(__file__).resolve().parents[2] / "configs"
    paths = sorted(root.glob("*/distill-*.yaml"))
    assert {p.parent.name for p in paths} == {"toy", "wan2.1-1.3b"}
    for path in paths:
        config = load_config(path)
        method = config.objective.name
        assert path.stem == f"distill-{method}", path
        REGISTRY[method].objective.check(config, REGISTRY[method])
        assert config.objective.critic_ratio == (1 if method.startswith("adv") else 5)


def test_cli_rejects_a_config_of_another_method(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("objective:\n  name: dmd-pt\n")
    assert main(["distill", "--method", "adv-p", "--config", str(path)]) == 2
    assert "is a dmd-pt config but --method is adv-p" in capsys.readouterr().err


def _broadcast_worker(rank, init_file, results):
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        results[rank] = distill.synchronised([rank + 3, 10 * rank], "cpu")
    finally:
        torch.distributed.destroy_process_group()


def test_grid_point_choice_is_rank_0s_on_every_rank(tmp_path):
    import torch.multiprocessing as mp

    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_broadcast_worker, args=(str(tmp_path / "init"), results), nprocs=2)
        assert dict(results) == {0: [3, 0], 1: [3, 0]}


@pytest.mark.slow
@pytest.mark.parametrize("method", ["dmd-pt", "adv-o"])
def test_two_cpu_processes_under_ddp(tiny_cache, tmp_path, folders, method):
    """torchrun with 2 gloo processes: DDP-wrapped student and critic, the PT teacher through the wrapped
    student, unwrapped heads in the generator step; the trainer's rank fingerprint check must pass.
    (accelerate launch --cpu starts a single process in this accelerate version, hence torchrun.)"""
    import os
    import shutil
    import subprocess
    import sys

    launcher = os.path.join(os.path.dirname(sys.executable), "torchrun")
    if not os.path.exists(launcher) and shutil.which("torchrun") is None:
        pytest.skip("torchrun not installed")
    cmd = [
        launcher if os.path.exists(launcher) else "torchrun",
        "--nproc_per_node",
        "2",
        "-m",
        "pyramidal_wan.cli",
    ]
    settings = [
        s for s in overrides(tiny_cache, tmp_path / "ddp", method, folders) if "objective.name" not in s
    ]
    cmd += ["distill", "--method", method, *settings, "train.threads=1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 process(es)" in result.stdout
    state = torch.load(tmp_path / "ddp" / "checkpoint" / "train_state.pt", weights_only=True)
    assert state["step"] == 3


# PPF-DMD (METHOD.md 9) ---------------------------------------------------------------------------------
@pytest.mark.parametrize("teacher", ["base", "ppf"])
def test_ppf_dmd_trains_and_exports_a_few_step_ppf_folder(tiny_cache, tmp_path, folders, teacher):
    """Three iterations through the one distillation trainer; teacher the plain base (METHOD.md 9) or the PPF
    folder itself. The exported folder samples 2-2-1 few-step with per-stage kernels, no flags."""
    extra = [f"objective.teacher={folders / 'ppf'}"] if teacher == "ppf" else []
    out = train(distill_config(tiny_cache, tmp_path / teacher, "ppf-dmd", folders, *extra), progress=False)
    assert torch.load(out / "checkpoint" / "train_state.pt", weights_only=True)["step"] == 3
    generator = load_file(out / "checkpoint" / "generator.safetensors")
    assert "transformer.patch_embeds.2.weight" in generator  # the student is the PPF model, layers and all
    for group in ("generator", "critic"):
        weights = load_file(out / "checkpoint" / f"{group}.safetensors")
        assert all(torch.isfinite(t).all() for t in weights.values())

    pyramid_config = load_pyramid_config(out / "model")
    assert pyramid_config.kind == "patch"
    assert resolve_sampling(pyramid_config) == ((2, 2, 1), "fewstep", 1.0)
    pipe = PyramidalWanPipeline.from_pretrained(out / "model")
    pipe.set_progress_bar_config(disable=True)
    assert isinstance(pipe.ppf, PPFTransformer)
    video, stages, token_shapes = record_sampling(pipe, "a red circle moving left")
    assert video.shape == (1, 16, 5, 16, 16) and torch.isfinite(video).all()
    assert stages == [2, 2, 1, 1, 0]
    assert token_shapes == [(1, 8), (1, 8), (1, 48), (1, 48), (1, 320)]  # no CFG, PPF kernels


def test_ppf_dmd_runs_the_plain_process_at_full_resolution(tiny_cache, tmp_path, folders):
    """The stage hooks: PPF grid, data-noised inputs (1 - sigma) x0 + sigma eps on the full-resolution
    latent, x0_hat = x - sigma F, tau inside the PPF stage; the teacher as configured (plain or PPF)."""
    objective = build_objective(distill_config(tiny_cache, tmp_path / "p", "ppf-dmd", folders))
    assert isinstance(objective.teacher.transformer, WanTransformer3DModel)  # the unmodified base
    assert isinstance(objective.nets["critic"].transformer, WanTransformer3DModel)  # fake score from it
    clean_ends = PyramidConfig(kind="patch").clean_ends
    assert objective.grid == get_ppf_grid(clean_ends, (2, 2, 1), "fewstep")
    batch = tiny_batch(tiny_cache)
    x0, embeds = batch["latents"][0], batch["prompt_embeds"]
    for n, k in grid_points(objective.grid):
        sigma = objective.grid[n].sigmas[k]
        x_s = objective.student_input(batch, n, k, torch.Generator().manual_seed(5))
        noise = randn(x0.shape, x0, torch.Generator().manual_seed(5))
        torch.testing.assert_close(x_s, (1 - sigma) * x0 + sigma * noise, rtol=0, atol=1e-6)
        velocity, x_hat = objective.predict(x_s, n, k, embeds)
        torch.testing.assert_close(x_hat, x_s - sigma * velocity, rtol=0, atol=0)
        assert objective.process_segment(n) == PLAIN_SEGMENT
        _, tau = objective.draw_tau(n, 64, x0, torch.Generator().manual_seed(n))
        segment = objective.grid[n].segment
        assert (ppf_stage_of(tau, clean_ends) == segment.stage).all()
        assert segment.sigma_c < tau.min() and tau.max() < segment.sigma_n
    ppf_taught = build_objective(
        distill_config(tiny_cache, tmp_path / "q", "ppf-dmd", folders, f"objective.teacher={folders / 'ppf'}")
    )
    assert isinstance(ppf_taught.teacher.transformer, PPFTransformer)  # the PPF folder, its stage kernels
    assert isinstance(ppf_taught.nets["critic"].transformer, PPFTransformer)


def test_ppf_dmd_backward_simulation_replays_the_ppf_sampler(tiny_cache, tmp_path, folders):
    config = distill_config(
        tiny_cache,
        tmp_path / "sim",
        "ppf-dmd",
        folders,
        "objective.student_input=backward",
        "objective.teach_weight=0",
    )
    objective = build_objective(config)
    batch, g = tiny_batch(tiny_cache), torch.Generator().manual_seed(0)
    loss, logs = objective.generator_loss(batch, g)
    loss.backward()
    assert torch.isfinite(loss) and logs["stage"] in (0, 1, 2)
    x_s = objective.student_input(batch, 2, 0, g)  # the last grid point: after four plain re-noisings
    assert x_s.shape == batch["latents"][0].shape
