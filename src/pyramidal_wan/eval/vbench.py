"""VBench hand-off: the prompt suite, the video layout the `vbench` package reads, and the call to its judge.

VBench (Huang et al., CVPR 2024; github.com/Vchitect/VBench) scores videos with learned judges (CLIP, DINO,
RAFT, AMT, MUSIQ, GRiT, ViCLIP, UMT, Tag2Text). Its API, as in `vbench/__init__.py`:

    VBench(device, full_info_json, output_path).evaluate(videos_path, name, prompt_list=[],
        dimension_list=[...], local=True, mode="vbench_standard" | "custom_input")

- "vbench_standard": the prompts of `VBench_full_info.json` (shipped inside the package), each with the
  dimensions it serves; for every prompt the judge looks for `{prompt}-{i}.mp4`, i = 0..4, in videos_path.
- "custom_input": any prompts (`prompt_list` maps each file name to its prompt), for the dimensions that
  need no prompt-specific annotations (`CUSTOM_DIMENSIONS`).

Results go to `{output_path}/{name}_eval_results.json` as {dimension: [score, per-video results]}. With
`local=True` every judge weight is read from VBench's cache folder ($VBENCH_CACHE_DIR, default
~/.cache/vbench), at the paths in `JUDGE_WEIGHTS` (`vbench.utils.init_submodules` and the dimension
modules); VBench would otherwise try to download the missing ones in the middle of an evaluation, so
`check_vbench` requires them all before anything is generated.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from pyramidal_wan.errors import InputError

# VBench's 16 dimensions, in the order of `VBench.build_full_dimension_list`.
VBENCH_DIMENSIONS: tuple[str, ...] = (
    "subject_consistency",
    "background_consistency",
    "aesthetic_quality",
    "imaging_quality",
    "object_class",
    "multiple_objects",
    "color",
    "spatial_relationship",
    "scene",
    "temporal_style",
    "overall_consistency",
    "human_action",
    "temporal_flickering",
    "motion_smoothness",
    "dynamic_degree",
    "appearance_style",
)
# Dimensions whose prompts carry auxiliary annotations: standard prompts only (VBench's
# `check_dimension_requires_extra_info`).
STANDARD_ONLY_DIMENSIONS = frozenset(
    {"object_class", "multiple_objects", "scene", "appearance_style", "color", "spatial_relationship"}
)
CUSTOM_DIMENSIONS: tuple[str, ...] = tuple(d for d in VBENCH_DIMENSIONS if d not in STANDARD_ONLY_DIMENSIONS)
_CLIP_B32 = "clip_model/ViT-B-32.pt"
_GRIT = "grit_model/grit_b_densecap_objectdet.pth"
_VICLIP = ("ViCLIP/ViClip-InternVid-10M-FLT.pth", "ViCLIP/bpe_simple_vocab_16e6.txt.gz")
# Judge weights per dimension, relative to VBench's cache folder, as read in local mode.
JUDGE_WEIGHTS: dict[str, tuple[str, ...]] = {
    "subject_consistency": (
        "dino_model/facebookresearch_dino_main",
        "dino_model/dino_vitbase16_pretrain.pth",
    ),
    "background_consistency": (_CLIP_B32,),
    "aesthetic_quality": ("clip_model/ViT-L-14.pt", "aesthetic_model/emb_reader/sa_0_4_vit_l_14_linear.pth"),
    "imaging_quality": ("pyiqa_model/musiq_spaq_ckpt-358bb6af.pth",),
    "object_class": (_GRIT,),
    "multiple_objects": (_GRIT,),
    "color": (_GRIT,),
    "spatial_relationship": (_GRIT,),
    "scene": ("caption_model/tag2text_swin_14m.pth",),
    "temporal_style": _VICLIP,
    "overall_consistency": _VICLIP,
    "human_action": ("umt_model/l16_ptk710_ftk710_ftk400_f16_res224.pth",),
    "temporal_flickering": (),
    "motion_smoothness": ("amt_model/amt-s.pth",),
    "dynamic_degree": ("raft_model/models/raft-things.pth",),
    "appearance_style": (_CLIP_B32,),
}
FULL_INFO_FILE = "VBench_full_info.json"
STANDARD_VIDEOS_PER_PROMPT = 5  # the standard mode looks for {prompt}-0 .. {prompt}-4
MAX_NAME_BYTES = 255  # a file name on Linux file systems


def vbench_cache_dir() -> Path:
    """VBench's weight cache: $VBENCH_CACHE_DIR, else ~/.cache/vbench (as `vbench.utils.CACHE_DIR`)."""
    return Path(os.environ.get("VBENCH_CACHE_DIR") or Path.home() / ".cache" / "vbench")


def check_dimensions(dimensions: Sequence[str] | None, custom: bool) -> tuple[str, ...]:
    """The dimensions to judge (default: all the mode supports); unknown or unsupported ones raise."""
    allowed = CUSTOM_DIMENSIONS if custom else VBENCH_DIMENSIONS
    if not dimensions:
        return allowed
    unknown = [d for d in dimensions if d not in VBENCH_DIMENSIONS]
    if unknown:
        raise InputError(
            f"unknown VBench dimension(s) {', '.join(unknown)}; choose from {', '.join(allowed)}"
        )
    unsupported = [d for d in dimensions if d not in allowed]
    if unsupported:
        raise InputError(
            f"VBench dimension(s) {', '.join(unsupported)} need the standard prompt suite (their prompts "
            "carry annotations); drop --prompt-file or choose from " + ", ".join(CUSTOM_DIMENSIONS)
        )
    return tuple(dict.fromkeys(dimensions))


def check_vbench(dimensions: Sequence[str]):
    """Import `vbench` and check that every judge weight of `dimensions` is in its cache folder; return the
    module. Raises one-line `InputError`s saying what to install and where."""
    cache = vbench_cache_dir()
    try:
        import vbench
    except ImportError as err:
        raise InputError(
            f"--suite vbench needs the vbench package and its judge weights: pip install vbench, then put "
            f"the weights under {cache} (or set VBENCH_CACHE_DIR); importing it failed: {err}"
        ) from None
    needed = dict.fromkeys(path for d in dimensions for path in JUDGE_WEIGHTS[d])
    missing = [path for path in needed if not (cache / path).exists()]
    if missing:
        raise InputError(
            f"VBench judge weights missing under {cache} (VBENCH_CACHE_DIR): {', '.join(missing)}; "
            "download them there as VBench's README lists (vbench fetches them with wget on first use, which "
            "needs the network) before generating any video"
        )
    return vbench


def full_info_path(vbench_module) -> Path:
    """The `VBench_full_info.json` shipped inside the vbench package."""
    path = Path(vbench_module.__file__).resolve().parent / FULL_INFO_FILE
    if not path.is_file():
        raise InputError(
            f"{path} is missing: reinstall the vbench package (pip install --force-reinstall vbench)"
        )
    return path


def standard_prompts(full_info: str | os.PathLike, dimensions: Sequence[str]) -> list[str]:
    """The standard suite's prompts that serve any of `dimensions`, in the file's order, each once."""
    entries = json.loads(Path(full_info).read_text())
    wanted = set(dimensions)
    return list(dict.fromkeys(e["prompt_en"] for e in entries if wanted & set(e["dimension"])))


def read_prompt_file(path: str | os.PathLike) -> list[str]:
    """Prompts of a .txt file (one per line, blank lines skipped) or a .json list of strings, each once."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"--prompt-file {path} is not a file")
    if path.suffix == ".json":
        prompts = json.loads(path.read_text())
        if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
            raise InputError(f"--prompt-file {path} must hold a JSON list of prompt strings")
    else:
        prompts = path.read_text().splitlines()
    prompts = list(dict.fromkeys(p.strip() for p in prompts if p.strip()))
    if not prompts:
        raise InputError(f"--prompt-file {path} has no prompts")
    return prompts


def video_name(prompt: str, index: int) -> str:
    """VBench's file name for video `index` of a prompt: f"{prompt}-{index}.mp4" (the prompt is the name)."""
    name = f"{prompt}-{index}.mp4"
    if "/" in prompt or "\0" in prompt or len(name.encode()) > MAX_NAME_BYTES:
        raise InputError(
            f"prompt {prompt[:60]!r}... cannot be a VBench file name (no '/', at most {MAX_NAME_BYTES} bytes "
            "with -N.mp4); shorten it in the prompt file"
        )
    return name


def run_judge(
    vbench_module,
    device,
    full_info: str | os.PathLike,
    videos_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    name: str,
    dimensions: Sequence[str],
    prompts_by_file: dict[str, str] | None = None,
) -> dict[str, float]:
    """Run VBench on a folder of videos and return {dimension: score}. `prompts_by_file` (file name ->
    prompt) selects the custom-input mode; without it the standard suite is judged. Every process of a
    distributed run must call it (VBench splits the videos between ranks)."""
    judge = vbench_module.VBench(device, str(full_info), str(output_dir))
    judge.evaluate(
        videos_path=str(videos_dir),
        name=name,
        prompt_list=prompts_by_file or [],
        dimension_list=list(dimensions),
        local=True,
        mode="custom_input" if prompts_by_file else "vbench_standard",
    )
    return read_results(Path(output_dir) / f"{name}_eval_results.json")


def read_results(path: str | os.PathLike) -> dict[str, float]:
    """{dimension: score} of a VBench results file ({dimension: [score, per-video results]})."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"VBench wrote no results at {path}")
    return {dim: float(value[0]) for dim, value in json.loads(path.read_text()).items()}
