"""FSDP2 (`train.sharding=fsdp2`) on 2 gloo CPU processes under torchrun: the same training as one process on
the same global batch, exact resume, and a gathered export that a plain pipeline loads."""

import json
import math
from contextlib import contextmanager

import pytest
import torch
from helpers import needs_torchrun, run_cli_in_two_cpu_processes
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from pyramidal_wan.data.cache import CachedLatents
from pyramidal_wan.errors import CheckpointError, InputError
from pyramidal_wan.pipelines import PyramidalWanPipeline
from pyramidal_wan.toy.family import assemble_toy_pipeline
from pyramidal_wan.training.config import load_config
from pyramidal_wan.training.methods import build_objective
from pyramidal_wan.training.sharding import FSDP2, check_sharding
from pyramidal_wan.training.trainer import export_checkpoint, sample_batch, train
from pyramidal_wan.utils.checkpoints import MARKER

WORLD = 2
STEPS = 3


def overrides(cache, init, out, *extra):
    return [
        f"data.cache={cache}",
        f"model.init={init}",
        f"train.out={out}",
        f"train.steps={STEPS}",
        "train.batch_size=3",  # per process: one sample per pyramid stage
        "train.lr=1e-3",  # large enough that a wrong gradient shows in the next steps' losses
        "train.warmup=0",
        "train.log_every=1",
        "train.checkpoint_every=2",
        "train.threads=1",
        "train.sharding=fsdp2",
        "objective.name=pyramidal",
        *extra,
    ]


def logged_losses(out, tag="generator/loss") -> list[float]:
    events = EventAccumulator(str(out / "logs")).Reload()
    return [e.value for e in sorted(events.Scalars(tag), key=lambda e: e.step)]


def single_process_reference(config, world: int, steps: int):
    """(losses, generator): one process training on the global batch of `world` processes, i.e. the
    concatenation of each rank's batch (drawn from that rank's data and noise streams), as one AdamW step
    on the mean of the per-rank mean losses; clipping and optimiser as in the trainer."""
    tc = config.train
    objective = build_objective(config)
    net = objective.nets["generator"]
    params = [p for p in net.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=tc.lr, betas=tc.betas, weight_decay=tc.weight_decay)
    streams = [
        (
            torch.Generator().manual_seed(tc.seed * world + r),
            torch.Generator().manual_seed(tc.seed * world + r + 1),
        )
        for r in range(world)
    ]
    data, losses = CachedLatents(config.data.cache), []
    for _ in range(steps):
        total = 0.0
        for data_rng, noise_rng in streams:
            batch = sample_batch(data, tc.batch_size, config.data.text_dropout, data_rng, "cpu")
            loss, _ = objective.generator_loss(batch, noise_rng)
            (loss / world).backward()
            total += loss.item() / world
        if tc.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, tc.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(total)
    return losses, net


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A random toy pipeline folder (text stack, VAE, transformer): the init, and what the export ships."""
    return assemble_toy_pipeline(tmp_path_factory.mktemp("fsdp2") / "base", seed=0)


@needs_torchrun
@pytest.mark.slow  # 65 s here: two torchrun processes plus the one-process reference
def test_fsdp2_trains_like_one_process_and_exports_a_loadable_pipeline(tiny_cache, base, tmp_path):
    """Two FSDP2 processes: the logged loss of every step (the mean over both ranks) equals one process
    stepping on the same global batch, within float32 tolerance; the gathered export (EMA off) holds the
    reference's weights and loads in a plain PyramidalWanPipeline, which samples a finite video."""
    out = tmp_path / "run"
    args = overrides(tiny_cache, base, out)
    run_cli_in_two_cpu_processes(["finetune", *args], standalone=True)

    losses, reference = single_process_reference(load_config(None, args), WORLD, STEPS)
    sharded = logged_losses(out)
    assert len(sharded) == STEPS
    print(f"loss curve FSDP2 {sharded} vs one process {losses}")
    torch.testing.assert_close(torch.tensor(sharded), torch.tensor(losses), rtol=1e-5, atol=1e-6)

    pipe = PyramidalWanPipeline.from_pretrained(out / "model")
    pipe.set_progress_bar_config(disable=True)
    expected = reference.transformer.state_dict()
    exported = pipe.transformer.state_dict()
    assert exported.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(exported[name], expected[name], rtol=1e-4, atol=1e-5)
    video = pipe(
        "a red circle", schedule="1-1-1", output_type="latent", generator=torch.Generator().manual_seed(0)
    )
    assert torch.isfinite(video.frames).all()

    # The last checkpoint is sharded (DCP); `export` gathers it in one process, equal to the run's export.
    assert (out / "checkpoint" / "sharded" / ".metadata").is_file()
    folder, step = export_checkpoint(load_config(out / "config.yaml"), tmp_path / "exported")
    assert step == STEPS
    final = load_file(out / "model" / "transformer" / "diffusion_pytorch_model.safetensors")
    gathered = load_file(folder / "transformer" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(final[k], gathered[k]) for k in final)
    # Neither one process without sharding nor FSDP2 on another number of processes resumes it; each says
    # why and how to go on from the export.
    more = [*args, f"train.steps={STEPS + 1}"]
    with pytest.raises(CheckpointError, match="written with train.sharding=fsdp2"):
        train(load_config(None, [*more, "train.sharding=none"]), progress=False)
    with (
        one_process_group(tmp_path / "store"),
        pytest.raises(CheckpointError, match="written by 2 processes .* resumes exactly only on 2, not 1"),
    ):
        train(load_config(None, more), progress=False)


@contextmanager
def one_process_group(store_path):
    """A gloo process group of this one process (FSDP2 needs one); the trainer's end closes it."""
    store = torch.distributed.FileStore(str(store_path), 1)
    torch.distributed.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        yield
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def test_fsdp2_in_one_process_resumes_exactly_and_exports(tiny_cache, base, tmp_path, monkeypatch):
    """The sharded code path without torchrun (a world of one): DCP checkpoint, exact resume (weights,
    AdamW, EMA, RNG), the gathered export at the end and `export` of the sharded checkpoint agree. A kill
    after every rank wrote its shards but before rank 0 committed the save leaves an unmarked folder that
    is never resumed: the rerun resumes from the previous complete checkpoint and removes it."""
    common = ["train.ema=0.9", "train.checkpoint_every=1"]

    class Killed(Exception):
        pass

    def killed(*args, **kwargs):
        raise Killed("killed before the completeness marker")

    for out, steps, kill in (("a", 2, False), ("b", 1, False), ("b", 2, True), ("b", 2, False)):
        config = load_config(
            None, overrides(tiny_cache, base, tmp_path / out, *common, f"train.steps={steps}")
        )
        with monkeypatch.context() as patch, one_process_group(tmp_path / f"store-{out}-{steps}-{kill}"):
            if kill:
                patch.setattr("pyramidal_wan.training.sharding.commit_checkpoint_folder", killed)
                with pytest.raises(Killed):
                    train(config, progress=False)
                (leftover,) = (tmp_path / "b").glob(".checkpoint.*")
                assert (leftover / "sharded" / ".metadata").is_file() and not (leftover / MARKER).exists()
                assert json.loads((tmp_path / "b" / "checkpoint" / MARKER).read_text())["step"] == 1
            else:
                train(config, progress=False)
    assert not list((tmp_path / "b").glob(".checkpoint.*"))
    name = "transformer/diffusion_pytorch_model.safetensors"
    a, b = load_file(tmp_path / "a" / "model" / name), load_file(tmp_path / "b" / "model" / name)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    folder, step = export_checkpoint(load_config(tmp_path / "a" / "config.yaml"), tmp_path / "exported")
    gathered = load_file(folder / name)
    assert step == 2 and all(torch.equal(a[k], gathered[k]) for k in a)


@needs_torchrun
@pytest.mark.slow
def test_fsdp2_kill_and_resume_reaches_the_same_weights(tiny_cache, base, tmp_path):
    """4 steps at once == 2 steps, stop, rerun to 4 (2 processes each time): trained weights, AdamW states,
    EMA and per-rank RNG restored from the sharded checkpoint; the exports are bitwise equal."""
    common = ["train.steps=4", "train.ema=0.9"]
    run_cli_in_two_cpu_processes(["finetune", *overrides(tiny_cache, base, tmp_path / "a", *common)], True)
    stopped = overrides(tiny_cache, base, tmp_path / "b", *common, "train.steps=2")
    run_cli_in_two_cpu_processes(["finetune", *stopped], standalone=True)
    result = run_cli_in_two_cpu_processes(
        ["finetune", *overrides(tiny_cache, base, tmp_path / "b", *common)], True
    )
    assert "from step 2" in result.stdout
    a = load_file(tmp_path / "a" / "model" / "transformer" / "diffusion_pytorch_model.safetensors")
    b = load_file(tmp_path / "b" / "model" / "transformer" / "diffusion_pytorch_model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert logged_losses(tmp_path / "a")[2:] == logged_losses(tmp_path / "b")[-2:]


@needs_torchrun
@pytest.mark.slow
@pytest.mark.parametrize(
    "objective",
    [
        ["objective.name=flow-matching"],
        ["objective.name=multires-fm"],
        ["objective.name=pyramidal", "model.lora_rank=4", "train.precision=bf16"],
        ["objective.name=ppf-fm", "pyramid.kind=patch", "train.ema=0.5"],
    ],
    ids=["flow-matching", "multires-fm", "pyramidal-lora-bf16", "ppf-fm"],
)
def test_each_finetune_objective_trains_under_fsdp2(tiny_cache, base, tmp_path, objective):
    out = tmp_path / "run"
    run_cli_in_two_cpu_processes(["finetune", *overrides(tiny_cache, base, out, *objective)], True)
    assert len(logged_losses(out)) == STEPS and all(math.isfinite(v) for v in logged_losses(out))
    pipe = PyramidalWanPipeline.from_pretrained(out / "model")
    assert all(torch.isfinite(p).all() for p in pipe.transformer.parameters())


def test_world_size_and_sharding_are_checked(tmp_path):
    with pytest.raises(InputError, match="train.sharding must be one of none, fsdp2"):
        check_sharding("fsdp")
    with pytest.raises(InputError, match="needs several processes"):
        FSDP2(None, torch.device("cpu"))
