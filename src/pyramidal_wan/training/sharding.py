"""FSDP2 for the training loop (`train.sharding: fsdp2`): sharded networks, checkpoints and the export.

`torch.distributed.fsdp.fully_shard` is applied directly, one FSDP unit per transformer block plus one for
the rest of each network, on a 1-D mesh over all processes. (accelerate 1.16 turns its FSDP plugin on
only for GPU distributed types, so a plugin path could not run on the CPU/gloo processes the tests use;
one direct path runs the same on both.) accelerate still launches the processes, autocasts and steps the
optimisers; it does not wrap the sharded networks.

- Trained groups (student, fake score, discriminator heads) and the objective's frozen networks (original
  model, teacher, adversarial backbone; bf16 under mixed precision) are sharded alike: every rank holds
  1 / N of each, and a block's full weights exist only while the block runs.
- Checkpoints: `checkpoint/sharded/` is a `torch.distributed.checkpoint` folder (each rank writes its
  shards of the trained parameters, AdamW states and EMA), beside `train_state.pt` (step, schedulers,
  world size) and one RNG file per rank; rank 0 writes the completeness marker last, after every rank has
  written, so an interrupted sharded save is never resumed (`utils.checkpoints`). They resume exactly on
  the same number of processes. Another number of processes would split data and noise into other
  per-rank streams, so that resume is refused; `pyramidal-wan export` gathers the checkpoint into a plain
  model folder (one process, no sharding) that a new run can start from.
- The export at the end of a run gathers the full weights on rank 0 into a meta-device copy of the
  student made before sharding, then writes the usual diffusers folder.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.tensor import DTensor

from pyramidal_wan.errors import CheckpointError, InputError
from pyramidal_wan.utils.checkpoints import commit_checkpoint_folder, new_checkpoint_folder

SHARDINGS = ("none", "fsdp2")
SHARDED = "sharded"  # the torch.distributed.checkpoint folder inside a checkpoint
TRAINED_ONLY = StateDictOptions(ignore_frozen_params=True)  # a LoRA checkpoint holds the adapter alone


def check_sharding(sharding: str) -> None:
    """Reject an unknown `train.sharding` before any model is built."""
    if sharding not in SHARDINGS:
        raise InputError(f"train.sharding must be one of {', '.join(SHARDINGS)}, got {sharding!r}")


def full_value(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor: a DTensor shard is all-gathered (a collective: every rank must call it)."""
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def mean_over_ranks(value: torch.Tensor) -> torch.Tensor:
    """The mean of a scalar over all processes (itself in one process): a NaN on any rank reaches all,
    so every rank stops at the same step instead of waiting forever in the next collective."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value.detach()
    total = value.detach().float().clone()
    dist.all_reduce(total)
    return total / dist.get_world_size()


def frozen_networks(objective) -> list[nn.Module]:
    """The modules an objective keeps besides its trained groups (original model, teacher, backbone),
    each once (Adv-P's backbone is its reconstruction teacher)."""
    trained = {id(net) for net in objective.nets.values()}
    found = {}
    for value in vars(objective).values():
        if isinstance(value, nn.Module) and id(value) not in trained:
            found.setdefault(id(value), value)
    return list(found.values())


def meta_copy(module: nn.Module) -> nn.Module:
    """A copy of `module` whose parameters are on the meta device (no memory): the skeleton the gathered
    weights are assigned to at export. Buffers (RoPE tables) are copied as they are."""
    memo = {
        id(p): nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
        for p in module.parameters()
    }
    return copy.deepcopy(module, memo)


def shard_network(net: nn.Module, mesh) -> None:
    """fully_shard, in place: each transformer block is one unit, the rest of `net` the root unit."""
    from torch.distributed.fsdp import fully_shard

    for name, child in net.named_modules():
        if isinstance(child, nn.ModuleList) and name.rsplit(".", 1)[-1] == "blocks":
            for block in child:
                fully_shard(block, mesh=mesh)
    fully_shard(net, mesh=mesh)


class FSDP2:
    """The sharded layout of one run: shards the objective's networks and saves, loads and exports them."""

    def __init__(self, objective, device: torch.device):
        from torch.distributed.device_mesh import init_device_mesh

        if not dist.is_initialized():
            raise InputError(
                "train.sharding=fsdp2 needs several processes: launch with torchrun or accelerate launch"
            )
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.mesh = init_device_mesh(device.type, (self.world,))
        self.skeleton = meta_copy(objective.nets["generator"])
        for net in [*objective.nets.values(), *frozen_networks(objective)]:
            shard_network(net.to(device), self.mesh)

    # Checkpoints -------------------------------------------------------------------------------------
    def state(self, nets: dict, optimizers: dict, ema) -> dict:
        """The sharded part of a checkpoint: trained parameters, AdamW states, EMA (all DTensor shards)."""
        state = {
            "nets": {g: get_model_state_dict(net, options=TRAINED_ONLY) for g, net in nets.items()},
            "optimizers": {
                g: get_optimizer_state_dict(net, _inner(optimizers[g]), options=TRAINED_ONLY)
                for g, net in nets.items()
            },
        }
        if ema is not None:
            state["ema"] = dict(ema.shadow)
        return state

    def save(
        self, run: Path, step: int, nets, optimizers, schedulers, generators, ema, keep=1, name="checkpoint"
    ) -> None:
        """Write the checkpoint of `step` in the run folder `run` with every rank's shards. Rank 0 makes the
        temporary folder, and commits it (completeness marker last, then the renames of
        `utils.checkpoints`) only after every rank has written its files; so a kill at any instant leaves
        the previous complete checkpoint to resume from, as an unsharded save does."""
        shared = [new_checkpoint_folder(run, name) if self.rank == 0 else None]
        dist.broadcast_object_list(shared, src=0)
        tmp = Path(shared[0])
        dcp.save(self.state(nets, optimizers, ema), checkpoint_id=tmp / SHARDED)
        rng = {name: g.get_state() for name, g in generators.items()}
        torch.save(rng, tmp / f"generators-rank{self.rank}.pt")
        if self.rank == 0:
            train_state = {
                "step": step,
                "sharding": "fsdp2",
                "world_size": self.world,
                "schedulers": {g: s.state_dict() for g, s in schedulers.items()},
            }
            torch.save(train_state, tmp / "train_state.pt")
        dist.barrier()  # every rank's files are in tmp before rank 0 marks it complete
        if self.rank == 0:
            commit_checkpoint_folder(run, tmp, step, keep, name)
        dist.barrier()  # and the checkpoint is in place before any rank goes on

    def load(self, folder: Path, nets, optimizers, schedulers, generators, ema) -> int:
        """Restore a `save` folder written by as many processes; returns its step."""
        train_state = read_train_state(folder)
        if train_state.get("sharding") != "fsdp2":
            raise CheckpointError(
                f"{folder} was written without sharding: resume it with train.sharding=none, or start a new "
                f"run from its export (pyramidal-wan export --run {folder.parent}, then model.init=FOLDER)"
            )
        if train_state["world_size"] != self.world:
            written = train_state["world_size"]
            raise CheckpointError(
                f"{folder} was written by {written} processes and holds their per-rank data and noise "
                f"streams, so it resumes exactly only on {written}, not {self.world}; or export it "
                f"(pyramidal-wan export --run {folder.parent}) and start a new run with model.init=FOLDER"
            )
        state = self.state(nets, optimizers, ema)
        dcp.load(state, checkpoint_id=folder / SHARDED)
        for group, net in nets.items():
            set_model_state_dict(net, state["nets"][group], options=TRAINED_ONLY)
            set_optimizer_state_dict(
                net, _inner(optimizers[group]), state["optimizers"][group], options=TRAINED_ONLY
            )
            schedulers[group].load_state_dict(train_state["schedulers"][group])
        rng = torch.load(folder / f"generators-rank{self.rank}.pt", weights_only=True)
        for name, g in generators.items():
            g.set_state(rng[name])
        return int(train_state["step"])

    # Export ------------------------------------------------------------------------------------------
    def gather(self, net: nn.Module, ema) -> tuple[nn.Module | None, dict | None]:
        """(student, EMA weights) with full tensors on rank 0 (None elsewhere); every rank must call it."""
        full = get_model_state_dict(net, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        shadow = None
        if ema is not None:  # one tensor at a time: only rank 0 keeps the full copies, on the CPU
            shadow = {}
            for name, tensor in ema.shadow.items():
                value = full_value(tensor).cpu()
                if self.rank == 0:
                    shadow[name] = value
        if self.rank != 0:
            return None, None
        student = copy.deepcopy(self.skeleton)
        student.load_state_dict(full, assign=True)
        return student, shadow


def _inner(optimizer):
    """The torch optimiser inside accelerate's AcceleratedOptimizer."""
    return getattr(optimizer, "optimizer", optimizer)


def read_train_state(folder: Path) -> dict:
    try:
        return torch.load(folder / "train_state.pt", weights_only=True)
    except (OSError, RuntimeError) as err:
        first_line = str(err).splitlines()[0] if str(err) else repr(err)
        raise CheckpointError(f"cannot load {folder}: {first_line}; delete it to start over") from err


def is_sharded_checkpoint(folder: Path) -> bool:
    return (folder / SHARDED).is_dir()


def load_sharded_weights(folder: Path, net: nn.Module, ema) -> dict:
    """One process, no sharding: the generator's weights (and EMA) of a sharded checkpoint, gathered from
    its shards into `net` / `ema` (torch.distributed.checkpoint reshards on load); returns its train state.
    The `pyramidal-wan export` path of an FSDP2 run."""
    train_state = read_train_state(folder)
    weights = {n: p.detach().clone() for n, p in net.named_parameters() if p.requires_grad}
    state = {"nets": {"generator": weights}}
    if ema is not None:
        state["ema"] = ema.shadow
    try:
        dcp.load(state, checkpoint_id=folder / SHARDED, no_dist=True)
    except Exception as err:  # DCP wraps missing keys and unreadable files in CheckpointException
        first_line = str(err).splitlines()[0] if str(err) else repr(err)
        raise CheckpointError(f"cannot load {folder / SHARDED}: {first_line}") from err
    with torch.no_grad():
        for name, param in net.named_parameters():
            if name in weights:
                param.copy_(weights[name])
    return train_state
