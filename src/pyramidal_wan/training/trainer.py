"""The one training loop: accelerate, exact resume, NaN stop, EMA, TensorBoard, atomic checkpoints.

Read top to bottom, `train` is: build (models, objective, optimiser), resume, then the loop
(sample a batch; loss; backward; clip; step; EMA; log; checkpoint), then export the model folder.
Objectives are plug-ins (training/objectives.py); nothing here depends on which one runs.
"""

from __future__ import annotations

import copy
import math
import shutil
from pathlib import Path

import torch
from accelerate import Accelerator
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from pyramidal_wan.data.cache import CachedLatents
from pyramidal_wan.errors import CheckpointError, TrainingDiverged
from pyramidal_wan.models.denoiser import WanVelocity
from pyramidal_wan.training.config import Config, save_config
from pyramidal_wan.training.objectives import build_objective
from pyramidal_wan.utils.io import atomic_path

CHECKPOINT = "checkpoint"
# LoRA targets (METHOD.md 7.2): attention projections of both attention layers and the FFN.
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "ffn.net.0.proj", "ffn.net.2"]


def build_transformer(config: Config):
    """The transformer to train: a preset (random init from the run seed) or pretrained weights."""
    from diffusers import WanTransformer3DModel

    from pyramidal_wan.models.loading import load_transformer
    from pyramidal_wan.models.presets import PRESETS, get_transformer_config

    if config.model.init in PRESETS:
        torch.manual_seed(config.train.seed)
        return WanTransformer3DModel(**get_transformer_config(config.model.init))
    return load_transformer(config.model.init)


def add_lora(transformer, rank: int, alpha: float | None):
    """Freeze the base weights and attach a peft LoRA adapter to the METHOD.md 7.2 targets."""
    from peft import LoraConfig

    transformer.requires_grad_(False)
    transformer.add_adapter(LoraConfig(r=rank, lora_alpha=alpha or rank, target_modules=LORA_TARGETS))
    return transformer


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


def save_checkpoint(out: Path, step: int, model, optimizer, scheduler, generators, ema: EMA | None) -> None:
    """Write `out/checkpoint/` atomically: weights (safetensors), EMA, optimiser/scheduler/RNG state."""
    with atomic_path(out / CHECKPOINT) as tmp:
        tmp.mkdir()
        save_file(trainable_state(model), tmp / "model.safetensors")
        if ema is not None:
            save_file({n: t.contiguous() for n, t in ema.shadow.items()}, tmp / "ema.safetensors")
        state = {
            "step": step,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "generators": {name: g.get_state() for name, g in generators.items()},
        }
        torch.save(state, tmp / "train_state.pt")


def load_checkpoint(out: Path, model, optimizer, scheduler, generators, ema: EMA | None) -> int:
    """Restore a `save_checkpoint` folder (weights_only loading, no pickle); returns the step."""
    folder = out / CHECKPOINT
    try:
        weights = load_file(folder / "model.safetensors")
        state = torch.load(folder / "train_state.pt", weights_only=True)
    except (OSError, RuntimeError) as err:
        raise CheckpointError(f"cannot resume from {folder}: {err}; delete it to start over") from err
    missing = set(trainable_state(model)) - set(weights)
    if missing:
        raise CheckpointError(f"{folder} does not match this model ({len(missing)} tensors missing)")
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name in weights:
                param.copy_(weights[name])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    for name, g in generators.items():
        g.set_state(state["generators"][name])
    if ema is not None:
        ema.shadow = {n: t.float() for n, t in load_file(folder / "ema.safetensors").items()}
    return int(state["step"])


def check_ranks_in_sync(accelerator: Accelerator, model: torch.nn.Module, step: int) -> None:
    """Raise if data-parallel ranks hold different weights (a fingerprint of every trainable tensor)."""
    if accelerator.num_processes == 1:
        return
    sums = [p.detach().double().sum() for p in model.parameters() if p.requires_grad]
    fingerprint = torch.stack(sums).sum()
    values = accelerator.gather(fingerprint.reshape(1).to(accelerator.device))
    if not torch.allclose(values, values[0].expand_as(values), rtol=1e-9, atol=0):
        raise RuntimeError(f"ranks diverged at step {step}: weight fingerprints {values.tolist()}")


def train(config: Config, resume: bool = True, progress: bool = True) -> Path:
    """Run `config` to `config.train.steps`, resuming from `train.out/checkpoint` when present."""
    tc = config.train
    out = Path(tc.out)
    if tc.threads > 0:
        torch.set_num_threads(tc.threads)
    accelerator = Accelerator(mixed_precision=tc.precision, log_with="tensorboard", project_dir=str(out))
    rank, world = accelerator.process_index, accelerator.num_processes
    seed = tc.seed * world + rank  # one run seed, distinct per rank
    generators = {
        "data": torch.Generator().manual_seed(seed),
        "noise": torch.Generator().manual_seed(seed + 1),
    }

    # Build: data, networks, objective, optimiser.
    data = CachedLatents(config.data.cache)
    transformer = build_transformer(config)
    reference = None
    if config.objective.dist_weight > 0 and config.objective.name == "pyramidal":
        reference = WanVelocity(copy.deepcopy(transformer).requires_grad_(False).eval())
    if config.model.lora_rank > 0:
        add_lora(transformer, config.model.lora_rank, config.model.lora_alpha)
    if config.model.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    model = WanVelocity(transformer).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=tc.lr, betas=tc.betas, weight_decay=tc.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(tc.warmup))
    ema = EMA(model, tc.ema) if tc.ema > 0 else None
    step = 0
    if resume and (out / CHECKPOINT).exists():
        step = load_checkpoint(out, model, optimizer, scheduler, generators, ema)
    prepared, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    if reference is not None:
        reference.to(accelerator.device)
    objective = build_objective(config.objective, prepared, reference)
    empty = data.empty_prompt.float()
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        save_config(config, out / "config.yaml")
        accelerator.init_trackers("logs")
        print(
            f"training {sum(p.numel() for p in params):,} parameters on {len(data)} cached videos, "
            f"{world} process(es), seed {seed}, from step {step}"
        )

    bar = tqdm(
        total=tc.steps, initial=step, desc="train", disable=not (progress and accelerator.is_main_process)
    )
    while step < tc.steps:
        # Batch: random cached videos; text dropout replaces prompts by the empty prompt (for CFG).
        indices = torch.randint(len(data), (tc.batch_size,), generator=generators["data"])
        batch = data.batch(indices)
        drop = torch.rand(tc.batch_size, generator=generators["data"]) < config.data.text_dropout
        batch["prompt_embeds"][drop] = empty
        batch = {
            "latents": [x.to(accelerator.device) for x in batch["latents"]],
            "prompt_embeds": batch["prompt_embeds"].to(accelerator.device),
        }

        with accelerator.autocast():
            loss, logs = objective.generator_loss(batch, generators["noise"])
        if not math.isfinite(loss.item()):
            raise TrainingDiverged(
                f"loss is {loss.item()} at step {step + 1}; stopped, the last good checkpoint is "
                f"{out / CHECKPOINT if (out / CHECKPOINT).exists() else 'none (no checkpoint yet)'}"
            )
        accelerator.backward(loss)
        if tc.grad_clip > 0:
            accelerator.clip_grad_norm_(params, tc.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            ema.update(model)
        step += 1

        if step % tc.log_every == 0 or step == tc.steps:
            accelerator.log(
                {
                    "loss": loss.item(),
                    "lr": scheduler.get_last_lr()[0],
                    **{k: v.item() for k, v in logs.items()},
                },
                step=step,
            )
        bar.set_postfix(loss=f"{loss.item():.4f}")
        bar.update(1)
        if step % tc.checkpoint_every == 0 or step == tc.steps:
            check_ranks_in_sync(accelerator, model, step)
            if accelerator.is_main_process:
                save_checkpoint(out, step, model, optimizer, scheduler, generators, ema)
            accelerator.wait_for_everyone()
    bar.close()
    accelerator.end_training()
    if accelerator.is_main_process:
        export_model(config, model, ema, out / "model")
    return out


def export_model(config: Config, model, ema: EMA | None, folder: Path) -> None:
    """Write a diffusers Wan folder: the trained transformer (EMA weights if kept) beside the base
    pipeline's tokenizer, text encoder, VAE and scheduler, plus `pyramid_config.json` for pyramidal runs."""
    from pyramidal_wan.models.checkpoint import save_pyramid_config
    from pyramidal_wan.pyramid import PyramidConfig

    transformer = copy.deepcopy(model.transformer)
    if ema is not None:
        with torch.no_grad():
            for name, param in transformer.named_parameters():
                key = f"transformer.{name}"
                if key in ema.shadow:
                    param.copy_(ema.shadow[key])
    base = config.model.pipeline or config.model.init
    with atomic_path(folder) as tmp:
        tmp.mkdir()
        if config.model.lora_rank > 0:  # the small adapter alone, then the full fused transformer
            transformer.save_lora_adapter(tmp / "lora")
            transformer.fuse_lora()
            transformer.unload_lora()
        if Path(base, "model_index.json").is_file():
            for item in Path(base).iterdir():
                if item.name not in ("transformer", "pyramid_config.json"):
                    copy_fn = shutil.copytree if item.is_dir() else shutil.copy2
                    copy_fn(item, tmp / item.name)
        transformer.save_pretrained(tmp / "transformer")
        oc = config.objective
        if oc.name == "pyramidal":
            save_pyramid_config(
                tmp, PyramidConfig(num_stages=oc.num_stages, clean_ends=oc.clean_ends, wavelet=oc.wavelet)
            )
