"""Loading Wan checkpoints: diffusers pipeline folders, transformer folders, the original release layouts
(Wan2.1, Wan2.2 TI2V-5B's transformer and Wan2.2 A14B's two expert folders), and LoRA adapters on top of a
base transformer.

Everything is local (`local_files_only=True`); nothing is downloaded. Every path is checked before any model
is built: a missing file, a wrong layout, a truncated or corrupt safetensors file, or weights that do not fit
the config raise `CheckpointError` with one line naming the path and what was expected.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import struct
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import diffusers
import torch
import transformers
from diffusers import ModelMixin, SchedulerMixin, WanPipeline, WanTransformer3DModel
from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from pyramidal_wan.errors import CheckpointError
from pyramidal_wan.models.presets import (
    ORIGINAL_EXPERT_FOLDERS,
    PRESETS,
    build_on_meta,
    config_from_json,
    get_transformer_config,
    is_original_wan_config,
    read_config_json,
    read_transformer_config,
)
from pyramidal_wan.models.wan_family import EXPERT_COMPONENT, expert_split

Layout = Literal["pipeline", "transformer", "original", "original-experts"]

# The components of a Wan2.1 text-to-video pipeline folder (diffusers' `WanPipeline` layout).
PIPELINE_COMPONENTS = ("tokenizer", "text_encoder", "vae", "transformer", "scheduler")
_OPTIONAL_COMPONENTS = ("transformer_2",)
_PIPELINE_SETTINGS = (
    "boundary_ratio",
    "expand_timesteps",
)  # WanPipeline arguments stored in model_index.json
_LIBRARIES = ("diffusers", "transformers")
_DIFFUSERS_WEIGHTS = "diffusion_pytorch_model"
_TRANSFORMERS_WEIGHTS = "model"
_MAX_HEADER_BYTES = 100_000_000  # the safetensors format's own limit on the JSON header
# Prefixes other tools put in front of the transformer's module names in adapter files.
_ADAPTER_PREFIXES = ("base_model.model.", "transformer.")
_ADAPTER_METADATA_KEY = "lora_adapter_metadata"  # where diffusers' save_lora_adapter stores the LoraConfig
_HALF_MODEL = (
    "{path}: a two-expert model ({what}); one transformer of it is half the model: this use takes a "
    "one-transformer model (training loads both experts)"
)


# ---------------------------------------------------------------------------------------------------------
# safetensors files


def check_safetensors(path: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """Check that `path` is a complete safetensors file (header and size) and return {name: shape}.

    Reads only the header, so a truncated or corrupt file is caught before any tensor is loaded.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found; expected a .safetensors weights file")
    size = path.stat().st_size
    corrupt = f"{path}: truncated or corrupt safetensors file"
    if size < 8:
        raise CheckpointError(f"{corrupt} ({size} bytes, shorter than the 8-byte header length)")
    with open(path, "rb") as f:
        header_len = struct.unpack("<Q", f.read(8))[0]
        if header_len > min(size - 8, _MAX_HEADER_BYTES):
            raise CheckpointError(f"{corrupt} (header length {header_len} does not fit in {size} bytes)")
        try:
            header = json.loads(f.read(header_len))
            entries = {k: v for k, v in header.items() if k != "__metadata__"}
            shapes = {k: tuple(int(s) for s in v["shape"]) for k, v in entries.items()}
            data_end = max((int(v["data_offsets"][1]) for v in entries.values()), default=0)
        except (ValueError, KeyError, TypeError, AttributeError, IndexError):
            raise CheckpointError(f"{corrupt} (unreadable header)") from None
    if 8 + header_len + data_end != size:
        raise CheckpointError(
            f"{corrupt} ({size} bytes, its header describes {8 + header_len + data_end}); "
            "re-save or re-copy it"
        )
    return shapes


def load_safetensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load all tensors of a checked safetensors file onto the CPU."""
    check_safetensors(path)
    try:
        return load_file(os.fspath(path))
    except SafetensorError as err:
        raise CheckpointError(f"{path}: corrupt safetensors file ({err})") from None


def weight_files(folder: str | os.PathLike, stem: str = _DIFFUSERS_WEIGHTS) -> list[Path]:
    """The safetensors files of `folder`: `<stem>.safetensors`, or the shards listed in its index.json."""
    folder = Path(folder)
    index = folder / f"{stem}.safetensors.index.json"
    if index.is_file():
        weight_map = read_config_json(index, "a safetensors shard index").get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{index}: no weight_map; expected a safetensors shard index")
        shards = [folder / name for name in sorted(set(weight_map.values()))]
        missing = [p.name for p in shards if not p.is_file()]
        if missing:
            raise CheckpointError(
                f"{index}: shard(s) {missing} listed in the index are missing from {folder}"
            )
        return shards
    single = folder / f"{stem}.safetensors"
    if single.is_file():
        return [single]
    pickled = sorted(p.name for p in folder.glob(f"{stem}*.bin")) + sorted(
        p.name for p in folder.glob("*.pth")
    )
    hint = (
        f" (found {pickled}: pickle files are never loaded; convert them to safetensors)" if pickled else ""
    )
    raise CheckpointError(f"{folder}: no {stem}.safetensors or {index.name}{hint}")


def read_shapes(files: list[Path]) -> dict[str, tuple[int, ...]]:
    """{name: shape} over all (checked) files; a name in two files is an error."""
    shapes: dict[str, tuple[int, ...]] = {}
    for path in files:
        file_shapes = check_safetensors(path)
        duplicates = sorted(set(file_shapes) & set(shapes))
        if duplicates:
            raise CheckpointError(f"{path}: tensor {duplicates[0]!r} also appears in another shard")
        shapes.update(file_shapes)
    return shapes


def expected_shapes(config: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """{parameter name: shape} of a `WanTransformer3DModel` with `config` (built on meta, no memory)."""
    return {k: tuple(v.shape) for k, v in build_on_meta(config).state_dict().items()}


def check_weights_match(
    shapes: Mapping[str, tuple[int, ...]], config: Mapping[str, Any], source: str | os.PathLike
) -> None:
    """Raise if the diffusers-named `shapes` are not exactly the parameters of a transformer with `config`."""
    expected = expected_shapes(config)
    ignored = [re.compile(p) for p in WanTransformer3DModel._keys_to_ignore_on_load_unexpected or []]
    missing = sorted(set(expected) - set(shapes))
    unexpected = sorted(k for k in set(shapes) - set(expected) if not any(p.search(k) for p in ignored))
    wrong = sorted(k for k in set(shapes) & set(expected) if tuple(shapes[k]) != expected[k])
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing (e.g. {missing[0]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
    if wrong:
        problems.append(
            f"{len(wrong)} with wrong shape (e.g. {wrong[0]} {shapes[wrong[0]]} vs {expected[wrong[0]]})"
        )
    if problems:
        raise CheckpointError(
            f"{source}: weights do not match the transformer config: {'; '.join(problems)}; "
            "expected a checkpoint of this model"
        )


# ---------------------------------------------------------------------------------------------------------
# layouts


def detect_layout(path: str | os.PathLike) -> Layout:
    """Which checkpoint layout `path` is: a diffusers pipeline folder (model_index.json), a diffusers
    transformer folder (config.json of WanTransformer3DModel), the original release of one transformer (a
    WanModel config.json, or a bare .safetensors file), or the original Wan2.2 A14B release of two experts
    (`high_noise_model/` and `low_noise_model/`)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: not found; expected a Wan model folder or .safetensors file")
    if path.is_file():
        if path.suffix != ".safetensors":
            raise CheckpointError(
                f"{path}: not a .safetensors file; expected a model folder or .safetensors file"
            )
        return "original"
    if (path / "model_index.json").is_file():
        return "pipeline"
    if original_expert_folders(path) is not None:
        return "original-experts"
    if (path / "config.json").is_file():
        config = read_config_json(path / "config.json")
        return "original" if is_original_wan_config(config) else "transformer"
    raise CheckpointError(
        f"{path}: no model_index.json (diffusers pipeline), config.json (transformer or original release) "
        f"or {' and '.join(f'{n}/' for n in ORIGINAL_EXPERT_FOLDERS)} (original Wan2.2 A14B release) found; "
        "expected a Wan model folder"
    )


def original_expert_folders(folder: str | os.PathLike) -> tuple[Path, Path] | None:
    """(high_noise_model, low_noise_model) of an original Wan2.2 A14B release folder; None for a folder with
    neither. One without the other is refused: half of a two-expert model must never pass silently."""
    folder = Path(folder)
    present = [folder / name for name in ORIGINAL_EXPERT_FOLDERS if (folder / name).is_dir()]
    if not present:
        return None
    if len(present) == 1:
        (missing,) = set(ORIGINAL_EXPERT_FOLDERS) - {present[0].name}
        raise CheckpointError(
            f"{folder}: has {present[0].name}/ but no {missing}/; expected both experts of a Wan2.2 A14B "
            "release"
        )
    return present[0], present[1]


def _model_files(path: Path, config) -> tuple[list[Path], dict[str, Any]]:
    """Weight files and transformer config of an original-layout file or folder."""
    if path.is_file():
        files, config_path = [path], path.parent / "config.json"
    else:
        config_path = path / "config.json"
        try:
            files = weight_files(path)
        except CheckpointError:
            candidates = sorted(path.glob("*.safetensors"))
            if len(candidates) != 1:
                raise
            files = candidates
    if config is not None:
        return files, get_transformer_config(config)
    if not config_path.is_file():
        raise CheckpointError(
            f"{path}: no config.json beside the weights; pass a config (a preset such as wan2.1-1.3b or a "
            "config.json)"
        )
    return files, read_transformer_config(config_path)


def load_original_transformer(
    path: str | os.PathLike,
    config: str | os.PathLike | Mapping[str, Any] | None = None,
    torch_dtype: torch.dtype | None = None,
) -> WanTransformer3DModel:
    """Load a transformer in the original Wan release layout through diffusers' own conversion.

    `path` is a .safetensors file or a folder with `diffusion_pytorch_model*.safetensors` (one file or
    index-listed shards) and the release config.json (`WanModel`: dim, num_heads, ...): Wan2.1's, Wan2.2
    TI2V-5B's, or one expert folder of Wan2.2 A14B (`load_experts` loads both). `config` overrides
    that config.json (preset name, config path or dict). Keys are renamed by diffusers'
    `convert_wan_transformer_to_diffusers`, checked against the config, and loaded with
    `WanTransformer3DModel.from_single_file` given a local config, so nothing is fetched.
    """
    path = Path(path)
    layout = detect_layout(path)
    if layout == "original-experts":
        raise CheckpointError(_HALF_MODEL.format(path=path, what=" and ".join(ORIGINAL_EXPERT_FOLDERS)))
    if layout != "original":
        raise CheckpointError(
            f"{path}: a diffusers-format folder, not the original layout; use load_transformer"
        )
    files, diffusers_config = _model_files(path, config)
    shapes = read_shapes(files)  # every shard checked before any is loaded
    state_dict: dict[str, torch.Tensor] = {}
    for file in files:
        state_dict.update(load_safetensors(file))
    # A single file may already use diffusers names; renaming those again would swap norm2 and norm3.
    if set(shapes) != set(expected_shapes(diffusers_config)):
        state_dict = convert_wan_transformer_to_diffusers(state_dict)
    check_weights_match({k: tuple(v.shape) for k, v in state_dict.items()}, diffusers_config, path)
    with tempfile.TemporaryDirectory() as config_dir:
        build_on_meta(diffusers_config).save_config(config_dir)
        return WanTransformer3DModel.from_single_file(
            state_dict, config=config_dir, local_files_only=True, torch_dtype=torch_dtype
        )


def load_diffusers_transformer(
    folder: str | os.PathLike, torch_dtype: torch.dtype | None = None
) -> WanTransformer3DModel:
    """Load a diffusers-format `WanTransformer3DModel` folder (config.json + safetensors), checked first."""
    folder = Path(folder)
    config_path = folder / "config.json"
    config = config_from_json(read_config_json(config_path), str(config_path))
    check_weights_match(read_shapes(weight_files(folder)), config, folder)
    return WanTransformer3DModel.from_pretrained(folder, local_files_only=True, torch_dtype=torch_dtype)


def load_transformer(
    path: str | os.PathLike,
    config: str | os.PathLike | Mapping[str, Any] | None = None,
    torch_dtype: torch.dtype | None = None,
) -> WanTransformer3DModel:
    """Load the Wan transformer from a pipeline folder, a transformer folder or the original release layout.

    `config` is used only by the original layout (to override or supply its config.json). A two-expert
    folder (Wan2.2 A14B, diffusers or original layout) is refused: one transformer of it is half the model
    (load both with `load_experts`, or sample with `PyramidalWanPipeline.from_pretrained`).
    """
    path = Path(path)
    layout = detect_layout(path)
    if layout in ("original", "original-experts"):
        return load_original_transformer(path, config, torch_dtype)
    if layout == "pipeline":
        if expert_split(read_model_index(path), path) is not None:
            raise CheckpointError(
                _HALF_MODEL.format(path=path, what=f"{EXPERT_COMPONENT} and boundary_ratio")
            )
        path = path / "transformer"
        if not (path / "config.json").is_file():
            raise CheckpointError(f"{path}: missing transformer/config.json; expected a Wan pipeline folder")
    return load_diffusers_transformer(path, torch_dtype)


def load_transformer_for(init: str, seed: int = 0) -> WanTransformer3DModel:
    """A WanTransformer3DModel: a preset name (random init from `seed`) or pretrained weights (any layout)."""
    if init in PRESETS:
        torch.manual_seed(seed)
        return WanTransformer3DModel(**get_transformer_config(init))
    return load_transformer(init)


def folder_boundary_ratio(init: str | os.PathLike) -> float | None:
    """The boundary_ratio of a two-expert (Wan2.2 A14B) diffusers pipeline folder; None for a preset or any
    other model, including the original A14B release, which does not record it (reads JSON only)."""
    if str(init) in PRESETS or not Path(init).is_dir() or detect_layout(init) != "pipeline":
        return None
    return expert_split(read_model_index(init), init)


def is_two_expert(init: str | os.PathLike) -> bool:
    """True for a two-expert (Wan2.2 A14B) model: a diffusers folder with `transformer_2` and
    boundary_ratio, or the original release's `high_noise_model/` and `low_noise_model/` (reads JSON and
    folder names only)."""
    if str(init) in PRESETS or not Path(init).is_dir():
        return False
    return original_expert_folders(init) is not None or folder_boundary_ratio(init) is not None


def check_expert_configs(folder: str | os.PathLike) -> dict[str, Any]:
    """The transformer config both experts of an original Wan2.2 A14B folder share (config.json files only):
    two experts of different architectures are not one model."""
    folder = Path(folder)
    experts = original_expert_folders(folder)
    if experts is None:
        raise CheckpointError(
            f"{folder}: no {' or '.join(f'{n}/' for n in ORIGINAL_EXPERT_FOLDERS)}; expected an original "
            "Wan2.2 A14B release folder"
        )
    high, low = (read_transformer_config(expert / "config.json") for expert in experts)
    differing = [key for key in high if high[key] != low[key]]
    if differing:
        key = differing[0]
        raise CheckpointError(
            f"{folder}: the experts differ in {key} ({high[key]} in {experts[0].name}, {low[key]} in "
            f"{experts[1].name}); expected the two experts of one Wan2.2 A14B model"
        )
    return high


def load_experts(
    folder: str | os.PathLike, boundary_ratio: float | None = None
) -> tuple[WanTransformer3DModel, WanTransformer3DModel, float]:
    """(high-noise, low-noise, boundary_ratio) of a two-expert (Wan2.2 A14B) folder.

    A diffusers folder gives `transformer`, `transformer_2` and its model_index.json's boundary_ratio
    (`boundary_ratio`, if given, must equal it). The original release gives `high_noise_model/` and
    `low_noise_model/` (original layout, converted by diffusers as in `load_original_transformer`) but does
    not record the boundary: the Wan2.2 code sets it per task in `wan/configs/` (T2V-A14B 0.875, I2V-A14B
    0.900; diffusers' scripts/convert_wan_to_diffusers.py writes the same), so it must be passed as
    `boundary_ratio` rather than guessed from a folder name.
    """
    folder = Path(folder)
    if detect_layout(folder) == "original-experts":
        if boundary_ratio is None:
            raise CheckpointError(
                f"{folder}: the original Wan2.2 A14B release does not record where the low-noise expert "
                "takes over; pass boundary_ratio (T2V-A14B: 0.875, I2V-A14B: 0.9)"
            )
        check_expert_configs(folder)  # before any weights load
        high, low = (load_transformer(expert) for expert in original_expert_folders(folder))
        return high, low, float(boundary_ratio)
    ratio = folder_boundary_ratio(folder)
    if ratio is None:
        raise CheckpointError(
            f"{folder}: not a two-expert model folder (no {EXPERT_COMPONENT}, or "
            f"{' and '.join(f'{n}/' for n in ORIGINAL_EXPERT_FOLDERS)})"
        )
    if boundary_ratio is not None and boundary_ratio != ratio:
        raise CheckpointError(
            f"{folder}: its model_index.json sets boundary_ratio {ratio}, not {boundary_ratio}; drop "
            "boundary_ratio to use the folder's"
        )
    high, low = (load_diffusers_transformer(folder / name) for name in ("transformer", EXPERT_COMPONENT))
    return high, low, ratio


def quiet_loading() -> None:
    """Hide diffusers' and transformers' weight-loading progress bars (the sampling bars stay)."""
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()


# ---------------------------------------------------------------------------------------------------------
# pipeline folders


def read_model_index(folder: str | os.PathLike) -> dict[str, Any]:
    """The model_index.json of a diffusers pipeline folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: not found; expected a diffusers Wan pipeline folder")
    return read_config_json(folder / "model_index.json", "a diffusers pipeline's model_index.json")


def _component_class(folder: Path, name: str, entry) -> type:
    """The class named by a model_index.json entry such as ["diffusers", "AutoencoderKLWan"]."""
    if not (isinstance(entry, list) and len(entry) == 2 and all(isinstance(e, str) for e in entry)):
        raise CheckpointError(
            f"{folder}/model_index.json: component {name!r} is {entry!r}; expected [library, class]"
        )
    library, class_name = entry
    if library not in _LIBRARIES:
        raise CheckpointError(
            f"{folder}/model_index.json: {name} comes from {library!r}; expected {_LIBRARIES}"
        )
    cls = getattr(importlib.import_module(library), class_name, None)
    if cls is None:
        raise CheckpointError(f"{folder}/model_index.json: {library} has no class {class_name} (for {name})")
    return cls


def _check_component(folder: Path, cls: type) -> None:
    """Check the files one component folder needs before `from_pretrained` opens it."""
    import transformers

    if not folder.is_dir():
        raise CheckpointError(f"{folder}: component folder missing; expected it beside model_index.json")
    if issubclass(cls, ModelMixin):
        read_config_json(folder / "config.json", f"the {cls.__name__} config.json")
        read_shapes(weight_files(folder, _DIFFUSERS_WEIGHTS))
    elif issubclass(cls, transformers.PreTrainedModel):
        read_config_json(folder / "config.json", f"the {cls.__name__} config.json")
        read_shapes(weight_files(folder, _TRANSFORMERS_WEIGHTS))
    elif issubclass(cls, SchedulerMixin):
        read_config_json(folder / "scheduler_config.json", "a scheduler_config.json")
    elif issubclass(cls, transformers.ImageProcessingMixin):  # Wan2.1-I2V's CLIP image preprocessing
        read_config_json(folder / "preprocessor_config.json", "an image processor's preprocessor_config.json")
    elif not (folder / "tokenizer_config.json").is_file():
        raise CheckpointError(f"{folder}: no tokenizer_config.json; expected a saved tokenizer")


def load_pipeline_components(
    folder: str | os.PathLike,
    components: tuple[str, ...] = PIPELINE_COMPONENTS,
    torch_dtype: torch.dtype | Mapping[str, torch.dtype] | None = None,
) -> dict[str, Any]:
    """Load components of a diffusers Wan pipeline folder, each with its class's local `from_pretrained`.

    `torch_dtype` is one dtype for every model component, or a {component: dtype} mapping (others keep
    their saved dtype). All requested components are checked before any is loaded.
    """
    folder = Path(folder)
    index = read_model_index(folder)
    classes = {}
    for name in components:
        entry = index.get(name)
        if entry is None or entry == [None, None]:
            raise CheckpointError(
                f"{folder}/model_index.json: no {name!r} component; expected {PIPELINE_COMPONENTS}"
            )
        classes[name] = _component_class(folder, name, entry)
        _check_component(folder / name, classes[name])
    loaded = {}
    for name, cls in classes.items():
        dtype = torch_dtype.get(name) if isinstance(torch_dtype, Mapping) else torch_dtype
        if issubclass(cls, WanTransformer3DModel):
            loaded[name] = load_diffusers_transformer(folder / name, dtype)  # also checks weight names
            continue
        kwargs: dict[str, Any] = {"local_files_only": True}
        if dtype is not None and issubclass(cls, ModelMixin):
            kwargs["torch_dtype"] = dtype
        elif dtype is not None and issubclass(cls, torch.nn.Module):
            kwargs["dtype"] = dtype  # transformers' name for it
        loaded[name] = cls.from_pretrained(folder / name, **kwargs)
    return loaded


def load_wan_pipeline(
    folder: str | os.PathLike, torch_dtype: torch.dtype | Mapping[str, torch.dtype] | None = None
) -> WanPipeline:
    """A diffusers `WanPipeline` from a local pipeline folder, loaded component by component.

    An optional second transformer (Wan2.2's `transformer_2`) and the pipeline's config values
    (`boundary_ratio`, `expand_timesteps`) are carried over from model_index.json when present.
    """
    index = read_model_index(folder)
    names = PIPELINE_COMPONENTS + tuple(
        n for n in _OPTIONAL_COMPONENTS if index.get(n) not in (None, [None, None])
    )
    settings = {k: index[k] for k in _PIPELINE_SETTINGS if index.get(k) is not None}
    return WanPipeline(**load_pipeline_components(folder, names, torch_dtype), **settings)


# ---------------------------------------------------------------------------------------------------------
# LoRA adapters


def read_adapter(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """The LoRA state dict (module names as in the transformer) and its LoraConfig kwargs, if recorded."""
    if not path.exists():
        raise CheckpointError(f"{path}: not found; expected a LoRA adapter folder or .safetensors file")
    if path.is_dir():
        peft_weights, diffusers_weights = (
            path / "adapter_model.safetensors",
            path / "pytorch_lora_weights.safetensors",
        )
        if peft_weights.is_file():  # peft's save_pretrained: LoraConfig in adapter_config.json
            from peft import LoraConfig

            read_config_json(path / "adapter_config.json", "peft's adapter_config.json")
            metadata = LoraConfig.from_pretrained(os.fspath(path)).to_dict()
            weights = peft_weights
        elif diffusers_weights.is_file():  # diffusers' save_lora_adapter: LoraConfig in the file's metadata
            weights, metadata = diffusers_weights, None
        else:
            raise CheckpointError(
                f"{path}: no adapter_model.safetensors (peft) or pytorch_lora_weights.safetensors "
                "(diffusers); expected a LoRA adapter folder"
            )
    else:
        weights, metadata = path, None
    state_dict = load_safetensors(weights)
    if metadata is None:
        with safe_open(os.fspath(weights), "pt") as f:
            recorded = (f.metadata() or {}).get(_ADAPTER_METADATA_KEY)
        metadata = json.loads(recorded) if recorded else None
    if not state_dict or not all(".lora_A." in k or ".lora_B." in k for k in state_dict):
        raise CheckpointError(f"{weights}: not a LoRA adapter (expected only lora_A / lora_B tensors)")
    for prefix in _ADAPTER_PREFIXES:
        if all(k.startswith(prefix) for k in state_dict):
            state_dict = {k.removeprefix(prefix): v for k, v in state_dict.items()}
    return state_dict, metadata


def check_adapter_fits(state_dict: Mapping[str, torch.Tensor], transformer: torch.nn.Module, source) -> None:
    """Every LoRA pair must sit on an existing Linear of the transformer with matching feature sizes."""
    modules = dict(transformer.named_modules())
    ranks: dict[str, set[int]] = {}
    for key, tensor in state_dict.items():
        name, kind, param = re.split(r"\.(lora_A|lora_B)\.", key)
        module = modules.get(name)
        if not isinstance(module, torch.nn.Linear):
            raise CheckpointError(
                f"{source}: adapter tensor {key} targets {name!r}, not a Linear of this model"
            )
        if kind == "lora_A":
            size, expected = tensor.shape[-1], module.in_features  # lora_A: (r, in_features)
        else:
            size, expected = tensor.shape[0], module.out_features  # lora_B: (out_features, r), bias (out,)
        if size != expected:
            raise CheckpointError(
                f"{source}: adapter tensor {key} has {size} features where {name} has {expected}; "
                "expected an adapter trained on this base model"
            )
        if param == "weight":
            ranks.setdefault(name, set()).add(tensor.shape[0] if kind == "lora_A" else tensor.shape[1])
    bad = [name for name, r in ranks.items() if len(r) != 1]
    if bad:
        raise CheckpointError(
            f"{source}: lora_A and lora_B of {bad[0]} have different ranks; corrupt adapter"
        )


def apply_lora(
    transformer: WanTransformer3DModel, adapter: str | os.PathLike, adapter_name: str = "default"
) -> WanTransformer3DModel:
    """Load a LoRA adapter onto `transformer` in place (diffusers' `load_lora_adapter`) and return it.

    `adapter` is a peft folder (`save_pretrained`: adapter_config.json + adapter_model.safetensors), a
    diffusers folder (`save_lora_adapter`: pytorch_lora_weights.safetensors) or such a .safetensors file.
    The adapter's recorded LoraConfig (rank, alpha, targets) is used as is. Fuse with
    `transformer.fuse_lora()` for adapter-free inference speed.
    """
    path = Path(adapter)
    state_dict, metadata = read_adapter(path)
    check_adapter_fits(state_dict, transformer, path)
    transformer.load_lora_adapter(state_dict, prefix=None, adapter_name=adapter_name, metadata=metadata)
    loaded = {
        re.sub(rf"\.(lora_[AB])\.{re.escape(adapter_name)}\.", r".\1.", name)
        for name, _ in transformer.named_parameters()
        if f".{adapter_name}." in name and ".lora_" in name
    }
    missing = sorted(loaded - set(state_dict))
    if missing:
        # peft would leave these layers at their random initialisation.
        transformer.delete_adapters(adapter_name)
        raise CheckpointError(
            f"{path}: adapter config targets {missing[0]} but the file has no weights for it"
        )
    return transformer
