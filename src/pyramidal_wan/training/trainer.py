"""The one training loop: accelerate, exact resume, NaN stop, EMA, TensorBoard, atomic checkpoints.

Read top to bottom, `train` is: build (models, objective, optimiser), resume, then the loop
(sample a batch; loss; backward; clip; step; EMA; log; checkpoint), then export the model folder.
Objectives are plug-ins (training/methods.py lists them); nothing here depends on which one runs.
"""

from __future__ import annotations

import copy
import math
import shutil
from contextlib import ExitStack
from pathlib import Path

import torch
from accelerate import Accelerator
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from pyramidal_wan.data.cache import CachedLatents
from pyramidal_wan.errors import CheckpointError, TrainingDiverged
from pyramidal_wan.training.config import Config, save_config
from pyramidal_wan.training.methods import build_objective, check_image_to_video
from pyramidal_wan.training.networks import check_experts_trainable, transformer_paths
from pyramidal_wan.training.objectives import check_image_conditioning
from pyramidal_wan.training.sharding import (
    FSDP2,
    check_sharding,
    frozen_networks,
    full_value,
    is_sharded_checkpoint,
    load_sharded_weights,
    mean_over_ranks,
)
from pyramidal_wan.utils.checkpoints import (
    Checkpoint,
    find_checkpoints,
    load_checked,
    recover_checkpoints,
    remove_checkpoints,
    run_lock,
    save_checkpoint_folder,
)
from pyramidal_wan.utils.io import atomic_path, check_output_folder, write_json

CHECKPOINT = "checkpoint"
RUN_RECORD = "run.json"  # what the config alone does not say, e.g. the teachers' unconditional text


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The parameters that train (all of them, or only the LoRA adapter), detached and contiguous."""
    return {n: p.detach().contiguous().clone() for n, p in model.named_parameters() if p.requires_grad}


class EMA:
    """Exponential moving average of the trainable parameters, kept in float32."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.shadow = {n: t.float() for n, t in trainable_state(model).items()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        for name, param in model.named_parameters():
            if name in self.shadow:
                self.shadow[name].lerp_(param.detach().float(), 1 - self.decay)


def _lr_lambda(warmup: int):
    return lambda step: min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0


def save_checkpoint(
    out: Path,
    step: int,
    nets: dict,
    optimizers: dict,
    schedulers: dict,
    generators,
    ema: EMA | None,
    keep: int = 1,
) -> None:
    """Write `out/checkpoint/` (weights per group as safetensors, EMA, optimiser/scheduler/RNG state) so that
    a kill at any instant leaves a complete checkpoint to resume from; `keep` older ones stay beside it."""

    def write(folder: Path) -> None:
        for group, net in nets.items():
            save_file(trainable_state(net), folder / f"{group}.safetensors")
        if ema is not None:
            save_file({n: t.contiguous() for n, t in ema.shadow.items()}, folder / "ema.safetensors")
        state = {
            "step": step,
            "optimizers": {g: o.state_dict() for g, o in optimizers.items()},
            "schedulers": {g: s.state_dict() for g, s in schedulers.items()},
            "generators": {name: g.get_state() for name, g in generators.items()},
        }
        torch.save(state, folder / "train_state.pt")

    save_checkpoint_folder(out, step, write, keep=keep, name=CHECKPOINT)


def _legacy_step(folder: Path) -> int:
    """The step of a checkpoint written before completeness markers (its train state holds it)."""
    return int(torch.load(folder / "train_state.pt", weights_only=True)["step"])


def latest_checkpoint(out: Path) -> Checkpoint | None:
    """The newest complete checkpoint of a run, wherever an interrupted save left it (read only)."""
    found = find_checkpoints(out, CHECKPOINT, _legacy_step)
    return found[0] if found else None


def load_checkpoint(
    checkpoint: Checkpoint, nets: dict, optimizers: dict, schedulers: dict, generators, ema: EMA | None
) -> int:
    """Restore a `save_checkpoint` folder (weights_only loading, no pickle); returns the step."""
    if is_sharded_checkpoint(checkpoint.folder):
        raise CheckpointError(
            f"{checkpoint.folder} was written with train.sharding=fsdp2: resume it with train.sharding=fsdp2 "
            f"on as many processes, or export it (pyramidal-wan export --run {checkpoint.folder.parent}) and "
            "start from model.init=FOLDER"
        )
    state = _load_weights(checkpoint, nets, ema)
    for group in nets:
        optimizers[group].load_state_dict(state["optimizers"][group])
        schedulers[group].load_state_dict(state["schedulers"][group])
    for name, g in generators.items():
        g.set_state(state["generators"][name])
    return int(state["step"])


def _load_weights(checkpoint: Checkpoint, nets: dict, ema: EMA | None) -> dict:
    """Copy a checkpoint's weights (and EMA) into `nets` / `ema`; returns its train state. A missing,
    truncated or corrupt file is a one-line `CheckpointError` naming it (and any older complete one)."""
    state = load_checked(checkpoint, "train_state.pt", lambda p: torch.load(p, weights_only=True))
    weights = {group: load_checked(checkpoint, f"{group}.safetensors", load_file) for group in nets}
    ema_shadow = load_checked(checkpoint, "ema.safetensors", load_file) if ema is not None else None
    folder = checkpoint.folder
    for group, net in nets.items():
        missing = set(trainable_state(net)) - set(weights[group])
        if missing:
            raise CheckpointError(f"{folder} does not match this {group} ({len(missing)} tensors missing)")
        with torch.no_grad():
            for name, param in net.named_parameters():
                if name in weights[group]:
                    param.copy_(weights[group][name])
    if ema is not None:
        ema.shadow = {n: t.float() for n, t in ema_shadow.items()}
    return state


def is_model_folder(folder: Path) -> bool:
    """Whether `folder` is a model folder `export_model` wrote (so replacing it loses nothing else)."""
    return (folder / "transformer" / "config.json").is_file()


def export_checkpoint(
    config: Config, folder: str | Path | None = None, overwrite: bool = False
) -> tuple[Path, int]:
    """Export the model folder of a run's newest complete checkpoint (EMA weights if the run keeps them).

    For a run that is still training or was stopped early; `train` exports `out/model` itself at the end.
    Default folder: `out/model-step{step}`. An existing `folder` that is not a model folder is refused unless
    `overwrite`. Returns (folder, step).
    """
    out = Path(config.train.out)
    checkpoint = latest_checkpoint(out)
    if checkpoint is None:
        raise CheckpointError(f"{out / CHECKPOINT} does not exist: nothing to export (train first)")
    folder = Path(folder) if folder is not None else out / f"model-step{checkpoint.step}"
    check_output_folder(folder, is_model_folder, overwrite, "a model folder")
    objective = build_objective(config)
    generator = objective.nets["generator"]
    ema = EMA(generator, config.train.ema) if config.train.ema > 0 else None
    if is_sharded_checkpoint(checkpoint.folder):  # an FSDP2 run: gather its shards in this one process
        step = int(load_sharded_weights(checkpoint.folder, generator, ema)["step"])
    else:
        step = int(_load_weights(checkpoint, {"generator": generator}, ema)["step"])
    export_model(config, generator, ema, objective.export_config(), folder)
    return folder, step


def check_ranks_in_sync(accelerator: Accelerator, model: torch.nn.Module, step: int) -> None:
    """Raise if ranks hold different weights: a fingerprint of every trainable tensor's full value (an
    FSDP2 shard is gathered first, so the ranks compare whole models, not their own slices)."""
    if accelerator.num_processes == 1:
        return
    sums = [full_value(p.detach()).double().sum() for p in model.parameters() if p.requires_grad]
    fingerprint = torch.stack(sums).sum()
    values = accelerator.gather(fingerprint.reshape(1).to(accelerator.device))
    if not torch.allclose(values, values[0].expand_as(values), rtol=1e-9, atol=0):
        raise RuntimeError(f"ranks diverged at step {step}: weight fingerprints {values.tolist()}")


def train(config: Config, resume: bool = True, progress: bool = True) -> Path:
    """Run `config` to `config.train.steps` iterations, resuming from the newest complete checkpoint in
    `train.out` if there is one (`resume=False` discards the run's checkpoints and starts over).

    The main process holds the run folder's lock throughout: a second run on the folder is refused."""
    tc = config.train
    out = Path(tc.out)
    check_sharding(tc.sharding)
    if tc.threads > 0:
        torch.set_num_threads(tc.threads)
    accelerator = Accelerator(mixed_precision=tc.precision, log_with="tensorboard", project_dir=str(out))
    with ExitStack() as lock:
        if accelerator.is_main_process:
            lock.enter_context(run_lock(out))
            if resume:  # finish what a killed save left: the newest complete checkpoint becomes checkpoint/
                recover_checkpoints(out, CHECKPOINT, _legacy_step)
            else:
                remove_checkpoints(out, CHECKPOINT)
        accelerator.wait_for_everyone()
        _train(config, accelerator, resume, progress)
    return out


def _train(config: Config, accelerator: Accelerator, resume: bool, progress: bool) -> None:
    tc = config.train
    out = Path(tc.out)
    rank, world = accelerator.process_index, accelerator.num_processes
    seed = tc.seed * world + rank  # one run seed, distinct per rank
    generators = {
        "data": torch.Generator().manual_seed(seed),
        "noise": torch.Generator().manual_seed(seed + 1),
    }

    # Build: data, the objective (it builds its networks), one optimiser per trained group.
    data = CachedLatents(config.data.cache)
    check_image_to_video(config, data)
    objective = build_objective(config)
    check_image_conditioning(objective, data)
    check_experts_trainable(objective.nets["generator"], world, tc.sharding)
    record = {"cache": str(config.data.cache), **objective.run_record(data)}  # checks the data fits
    nets = objective.nets
    # FSDP2 shards the networks in place before the optimisers see their parameters; without sharding,
    # accelerate moves the trained groups to the device in `prepare` and the frozen ones move here.
    sharded = FSDP2(objective, accelerator.device) if tc.sharding == "fsdp2" else None
    if sharded is None:
        for net in frozen_networks(objective):
            net.to(accelerator.device)
    optimizers = {
        group: torch.optim.AdamW(
            [p for p in net.parameters() if p.requires_grad],
            lr=tc.lr if group == "generator" else tc.critic_lr,
            betas=tc.betas,
            weight_decay=tc.weight_decay,
        )
        for group, net in nets.items()
    }
    schedulers = {
        g: torch.optim.lr_scheduler.LambdaLR(o, _lr_lambda(tc.warmup)) for g, o in optimizers.items()
    }
    ema = EMA(nets["generator"], tc.ema) if tc.ema > 0 else None
    step = 0
    checkpoint = latest_checkpoint(out) if resume else None  # rank 0 recovered it before any rank got here
    if checkpoint is not None and sharded is None:
        step = load_checkpoint(checkpoint, nets, optimizers, schedulers, generators, ema)
    groups = list(nets)
    wrapped = [] if sharded else [nets[g] for g in groups]  # FSDP2 networks are not wrapped again
    prepared = accelerator.prepare(
        *wrapped, *[optimizers[g] for g in groups], *[schedulers[g] for g in groups]
    )
    n = len(wrapped)
    objective.use(dict(zip(groups, prepared[:n])) if n else nets)
    m = len(groups)
    optimizers, schedulers = dict(zip(groups, prepared[n : n + m])), dict(zip(groups, prepared[n + m :]))
    if checkpoint is not None and sharded is not None:  # collective: after the optimisers
        step = sharded.load(checkpoint.folder, nets, optimizers, schedulers, generators, ema)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        save_config(config, out / "config.yaml")
        write_json(out / RUN_RECORD, record)
        accelerator.init_trackers("logs")
        counts = ", ".join(
            f"{g} {sum(p.numel() for p in nets[g].parameters() if p.requires_grad):,}" for g in groups
        )
        print(
            f"training {counts} parameters on {len(data)} cached videos, {world} process(es), seed {seed}, "
            f"from step {step}"
        )

    bar = tqdm(
        total=tc.steps, initial=step, desc="train", disable=not (progress and accelerator.is_main_process)
    )
    while step < tc.steps:
        # One iteration: a generator update every critic_ratio iterations (every one without a critic),
        # then a critic update; each on its own batch.
        logs = {}
        updates = ["generator"] if objective.critic_ratio == 0 or step % objective.critic_ratio == 0 else []
        updates += ["critic"] if objective.critic_ratio > 0 else []
        for group in updates:
            batch = sample_batch(
                data,
                tc.batch_size,
                config.data.text_dropout,
                generators["data"],
                accelerator.device,
                config.data.image_to_video,
            )
            batch["step"] = step  # what a curriculum (multi-resolution pretraining) keys on
            loss_fn = objective.generator_loss if group == "generator" else objective.critic_loss
            with accelerator.autocast():
                loss, group_logs = loss_fn(batch, generators["noise"])
            mean_loss = mean_over_ranks(loss).item()  # the global batch's loss, on every rank
            if not math.isfinite(mean_loss):
                raise TrainingDiverged(
                    f"{group} loss is {mean_loss} at step {step + 1}; stopped, the last good checkpoint is "
                    f"{out / CHECKPOINT if (out / CHECKPOINT).exists() else 'none (no checkpoint yet)'}"
                )
            # The optimiser's parameters: during FSDP2's forward/backward, a root unit's module attributes
            # are its gathered copies, which receive no gradient.
            params = [p for param_group in optimizers[group].param_groups for p in param_group["params"]]
            # A loss without gradient: every sample fell to a frozen expert (`model.expert`); the step then
            # leaves the weights unchanged (AdamW skips parameters without .grad).
            if loss.requires_grad:
                accelerator.backward(loss)
            if tc.grad_clip > 0:
                accelerator.clip_grad_norm_(params, tc.grad_clip)
            optimizers[group].step()
            schedulers[group].step()
            optimizers[group].zero_grad(set_to_none=True)
            if group == "generator" and ema is not None:
                ema.update(nets["generator"])
            logs.update({f"{group}/loss": mean_loss, **{k: v.item() for k, v in group_logs.items()}})
        step += 1

        if step % tc.log_every == 0 or step == tc.steps:
            accelerator.log({**logs, "lr": schedulers["generator"].get_last_lr()[0]}, step=step)
        bar.set_postfix({k: f"{v:.4f}" for k, v in logs.items() if k.endswith("/loss")})
        bar.update(1)
        if step % tc.checkpoint_every == 0 or step == tc.steps:
            for net in nets.values():
                check_ranks_in_sync(accelerator, net, step)
            if sharded is not None:
                sharded.save(
                    out, step, nets, optimizers, schedulers, generators, ema, tc.keep_checkpoints, CHECKPOINT
                )
            elif accelerator.is_main_process:
                save_checkpoint(out, step, nets, optimizers, schedulers, generators, ema, tc.keep_checkpoints)
            accelerator.wait_for_everyone()
    bar.close()
    generator = nets["generator"]
    if sharded is not None:  # gathered on rank 0, while the process group still exists
        generator, shadow = sharded.gather(generator, ema)
        if ema is not None:
            ema.shadow = shadow
    accelerator.end_training()
    if accelerator.is_main_process:
        export_model(config, generator, ema, objective.export_config(), out / "model")


def sample_batch(
    data: CachedLatents, batch_size: int, text_dropout: float, generator, device, image_to_video: float = 0.0
) -> dict:
    """Random cached videos; text dropout swaps prompts for the empty prompt (trains the CFG branch).

    `empty_prompt` and `negative_prompt` (L, D; None for an older cache) are the cache's embeddings of the
    empty prompt and of the model's negative prompt: the candidates for the teachers' unconditional text.
    With `image_to_video` > 0 (a clean-first-frame model), `image_rows` (B,) bool marks the samples drawn to
    train image-to-video, each with that probability (drawn after text dropout, so runs without it keep
    their random stream)."""
    indices = torch.randint(len(data), (batch_size,), generator=generator)
    batch = data.batch(indices)
    drop = torch.rand(batch_size, generator=generator) < text_dropout
    batch["prompt_embeds"][drop] = data.empty_prompt.float()
    out = {
        "latents": [x.to(device) for x in batch["latents"]],
        "prompt_embeds": batch["prompt_embeds"].to(device),
        "empty_prompt": data.empty_prompt.float().to(device),
        "negative_prompt": None if data.negative_prompt is None else data.negative_prompt.float().to(device),
    }
    if image_to_video > 0:
        out["image_rows"] = (torch.rand(batch_size, generator=generator) < image_to_video).to(device)
    if "image_conditions" in batch:  # an image-to-video cache: the image stays (no image dropout)
        embeds = batch["image_embeds"]
        out["image_conditions"] = [x.to(device) for x in batch["image_conditions"]]
        out["image_embeds"] = None if embeds is None else embeds.to(device)
        out["mask_channels"] = batch["mask_channels"]
    return out


def export_model(config: Config, model, ema: EMA | None, pyramid_config, folder: Path) -> None:
    """Write a diffusers Wan folder: the trained transformer (EMA weights if kept; both experts of a
    two-expert model) beside the base pipeline's tokenizer, text encoder, VAE and scheduler, plus
    `pyramid_config.json` for pyramidal models."""
    from pyramidal_wan.models.checkpoint import save_pyramid_config

    model = getattr(model, "module", model)  # unwrap DDP
    paths = transformer_paths(model)  # a two-expert model: both experts, the frozen one as loaded
    transformers = {name: copy.deepcopy(model.get_submodule(path)) for name, path in paths.items()}
    if ema is not None:
        with torch.no_grad():
            for component, transformer in transformers.items():
                for name, param in transformer.named_parameters():
                    key = f"{paths[component]}.{name}"
                    if key in ema.shadow:
                        param.copy_(ema.shadow[key])
    base = config.model.pipeline or config.model.init
    with atomic_path(folder) as tmp:
        tmp.mkdir()
        if config.model.lora_rank > 0:  # the small adapter alone, then the full fused transformer
            transformer = transformers["transformer"]
            transformer.save_lora_adapter(tmp / "lora")
            transformer.fuse_lora()
            transformer.unload_lora()
        if Path(base, "model_index.json").is_file():
            for item in Path(base).iterdir():
                if item.name not in (*transformers, "pyramid_config.json"):
                    copy_fn = shutil.copytree if item.is_dir() else shutil.copy2
                    copy_fn(item, tmp / item.name)
        for component, transformer in transformers.items():
            transformer.save_pretrained(tmp / component)
        if pyramid_config is not None:
            save_pyramid_config(tmp, pyramid_config)
