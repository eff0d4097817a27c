"""LoRA export: the difference between a tuned Wan transformer and its base as a diffusers-loadable LoRA.

Each Linear's weight delta W_tuned - W_base is factored by a truncated SVD, delta ~ B A with
B = U_r sqrt(S_r) and A = sqrt(S_r) V_r^T (rank r, scale 1: the diffusers/peft convention alpha = rank);
a bias delta rides along exactly as peft's `lora_B.bias`. The file uses the keys diffusers'
`WanLoraLoaderMixin.load_lora_weights` reads (`transformer.<module>.lora_A.weight`, `.lora_B.weight`,
`.lora_B.bias`) and is written by `WanPipeline.save_lora_weights`.

A LoRA changes only Linear layers: a delta in any other parameter (norms, the patch-embedding Conv3d,
`scale_shift_table`) cannot be carried, and its share of the delta's energy is reported as left out.
"""

from __future__ import annotations

import copy
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers import WanPipeline

from pyramidal_wan.errors import CheckpointError, InputError
from pyramidal_wan.utils.io import atomic_path

LORA_WEIGHTS_NAME = "pytorch_lora_weights.safetensors"  # diffusers' default name: load_lora_weights(folder)
_LORA_KEY = (".lora_A.", ".lora_B.")


@dataclass
class LoraExtraction:
    """A LoRA state dict (module names of the transformer, no prefix) and what the truncation kept."""

    state_dict: dict[str, torch.Tensor]
    kept_energy: float  # squared Frobenius norm of the kept part of the Linear weight deltas
    linear_energy: float  # squared Frobenius norm of all Linear weight and bias deltas
    left_out_energy: float  # squared norm of the deltas of non-Linear parameters (not representable)
    left_out: list[str] = field(default_factory=list)  # those parameters' names
    ranks: dict[str, int] = field(default_factory=dict)  # rank written per module

    @property
    def kept_fraction(self) -> float:
        """The fraction of the whole delta's energy the LoRA carries (1 when nothing differs)."""
        total = self.linear_energy + self.left_out_energy
        return 1.0 if total == 0 else self.kept_energy / total


def parse_rank(value: str | int) -> int | None:
    """A LoRA rank from the command line: a positive integer, or "full" (None: every module's full rank)."""
    if str(value) == "full":
        return None
    try:
        rank = int(value)
    except ValueError:
        rank = 0
    if rank < 1:
        raise InputError(f"LoRA rank {value!r} must be a positive integer or 'full'")
    return rank


@torch.no_grad()
def extract_lora(tuned: torch.nn.Module, base: torch.nn.Module, rank: int | None) -> LoraExtraction:
    """The rank-`rank` LoRA of `tuned - base` (same architecture); `rank=None` keeps every singular value."""
    base_params = dict(base.named_parameters())
    tuned_params = dict(tuned.named_parameters())
    if base_params.keys() != tuned_params.keys() or any(
        base_params[k].shape != p.shape for k, p in tuned_params.items()
    ):
        raise CheckpointError(
            "the tuned and base transformers have different parameters; export a LoRA against the model "
            "the tuned one was made from"
        )
    result = LoraExtraction({}, 0.0, 0.0, 0.0)
    covered = set()
    for name, module in tuned.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        prefix = f"{name}." if name else ""
        covered.update(f"{prefix}{p}" for p, _ in module.named_parameters())
        delta = module.weight.double() - base_params[f"{prefix}weight"].double()
        bias = None
        if module.bias is not None:
            bias = module.bias.double() - base_params[f"{prefix}bias"].double()
        if not delta.any() and (bias is None or not bias.any()):
            continue
        u, s, vh = torch.linalg.svd(delta, full_matrices=False)
        r = len(s) if rank is None else min(rank, len(s))
        root = s[:r].sqrt()
        dtype = module.weight.dtype
        result.state_dict[f"{prefix}lora_A.weight"] = (root[:, None] * vh[:r]).to(dtype).contiguous()
        result.state_dict[f"{prefix}lora_B.weight"] = (u[:, :r] * root).to(dtype).contiguous()
        result.kept_energy += float(s[:r].square().sum())
        result.linear_energy += float(s.square().sum())
        if bias is not None and bias.any():
            result.state_dict[f"{prefix}lora_B.bias"] = bias.to(dtype)
            result.kept_energy += float(bias.square().sum())
            result.linear_energy += float(bias.square().sum())
        result.ranks[name] = r
    for name, param in tuned_params.items():
        if name not in covered:
            energy = float((param.double() - base_params[name].double()).square().sum())
            if energy > 0:
                result.left_out_energy += energy
                result.left_out.append(name)
    if not result.state_dict:
        raise InputError("the tuned model's Linear weights equal the base's: there is no LoRA to export")
    return result


def save_lora(folder: str | os.PathLike, state_dict: dict[str, torch.Tensor], metadata=None) -> Path:
    """Write `state_dict` (transformer module names) as FOLDER/pytorch_lora_weights.safetensors with
    diffusers' own writer, keys prefixed `transformer.`; `metadata` is a LoraConfig dict (rank, alpha) when
    the ranks and alphas cannot be read off the shapes. Returns the file's path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / LORA_WEIGHTS_NAME) as tmp:
        WanPipeline.save_lora_weights(
            tmp.parent,
            transformer_lora_layers=state_dict,
            transformer_lora_adapter_metadata=metadata,
            weight_name=tmp.name,
        )
    return folder / LORA_WEIGHTS_NAME


def lora_file(path: str | os.PathLike) -> Path:
    """The weights file of a LoRA given as a file or a folder holding pytorch_lora_weights.safetensors; its
    header must list only LoRA tensors. Raises a one-line `CheckpointError` otherwise (no tensor is read)."""
    from pyramidal_wan.models.loading import check_safetensors

    path = Path(path)
    if path.is_dir():
        path = path / LORA_WEIGHTS_NAME
    if not path.is_file():
        raise CheckpointError(
            f"{path}: no LoRA file; pass a .safetensors LoRA or a folder with {LORA_WEIGHTS_NAME}"
        )
    keys = check_safetensors(path)
    if not keys or not all(any(k in key for k in _LORA_KEY) for key in keys):
        raise CheckpointError(f"{path}: not a LoRA (expected only lora_A / lora_B tensors)")
    return path


TRAINED_LORA_FOLDER = "lora"  # where a training run with model.lora_rank > 0 keeps its adapter (export_model)


@dataclass
class LoraExport:
    """What `export_lora` wrote: the file, and how it was made."""

    path: Path
    trained: bool  # the run's own adapter, written as it is (no SVD)
    extraction: LoraExtraction | None  # the truncated SVD's bookkeeping (None for a trained adapter)
    rank: int  # the largest rank of any module


@torch.no_grad()
def _trained_adapter(model: Path, base: torch.nn.Module, tuned: torch.nn.Module):
    """The adapter a LoRA training run stored beside its fused transformer (model/lora) as (state dict,
    LoraConfig dict) if applying it to `base` gives `tuned`; None otherwise (another base, or none)."""
    from pyramidal_wan.models.loading import apply_lora, read_adapter

    folder = model / TRAINED_LORA_FOLDER
    if not folder.is_dir():
        return None
    candidate = apply_lora(copy.deepcopy(base), folder)
    candidate.fuse_lora()
    candidate.unload_lora()
    fused, target = candidate.state_dict(), tuned.state_dict()
    if fused.keys() != target.keys() or not all(
        torch.allclose(fused[k], target[k], rtol=1e-4, atol=1e-6) for k in target
    ):
        return None
    return read_adapter(folder)


def export_lora(model: str | os.PathLike, base: str | os.PathLike, rank: int | None, out) -> LoraExport:
    """Write the LoRA of `model` (a Wan folder) against `base` (its base's folder) to OUT/.

    A model trained as a LoRA of exactly this base (its `lora/` adapter fused gives the model) is written
    as it is, its rank and alpha recorded in the file; otherwise each Linear delta is truncated to `rank`
    by SVD (`rank=None`: full rank)."""
    from pyramidal_wan.models.loading import load_transformer

    def transformer_of(folder: Path):  # a model folder, or a training export of a transformer alone
        inner = folder / "transformer"
        return load_transformer(inner if (inner / "config.json").is_file() else folder)

    model = Path(model)
    tuned, base_model = transformer_of(model), transformer_of(Path(base))
    trained = _trained_adapter(model, base_model, tuned)
    if trained is not None:
        state_dict, metadata = trained
        path = save_lora(out, state_dict, metadata)
        ranks = [t.shape[0] for k, t in state_dict.items() if k.endswith("lora_A.weight")]
        return LoraExport(path, True, None, max(ranks))
    extraction = extract_lora(tuned, base_model, rank)
    path = save_lora(out, extraction.state_dict)
    return LoraExport(path, False, extraction, max(extraction.ranks.values()))


def parse_lora_spec(spec: str) -> tuple[Path, float]:
    """'FILE[:WEIGHT]' (a LoRA file or folder, optionally its weight, default 1) -> (weights file, weight);
    the file's header is checked."""
    match = re.fullmatch(r"(.+):([-+.0-9eE]+)", spec)  # a ':' elsewhere belongs to the path
    if match is None:
        return lora_file(spec), 1.0
    try:
        weight = float(match[2])
    except ValueError:
        raise InputError(f"--lora {spec}: the weight {match[2]!r} after ':' must be a number") from None
    return lora_file(match[1]), weight


def load_loras(pipe, loras: list[tuple[Path, float]]) -> None:
    """Stack LoRAs on a pipeline's transformer with their weights (diffusers' `load_lora_weights` and
    `set_adapters`), each checked to fit the transformer first (a one-line `CheckpointError` if not)."""
    from pyramidal_wan.models.loading import check_adapter_fits, read_adapter

    for path, _ in loras:  # all before any is loaded: loading turns the Linears into LoRA layers
        check_adapter_fits(read_adapter(path)[0], pipe.transformer, path)
    names = [f"lora{i}" for i in range(len(loras))]
    for name, (path, _) in zip(names, loras):
        pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name=name)
    if names:
        pipe.set_adapters(names, [weight for _, weight in loras])
