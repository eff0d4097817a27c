"""`synthesize-data`: a synthetic training set sampled by a teacher model, in the format `prepare-data` reads.

The paper fine-tunes on 80K videos made by Wan2.1-14B; synthetic data beat real videos (METHOD.md 4.6).
Layout of the output folder (the dataset layout of `pyramidal_wan.data.dataset`, so `prepare-data` reads it
unchanged):

    000000-00.mp4, 000000-01.mp4, ...   video v of prompt p is `{p:06d}-{v:02d}.mp4` (uint8, lossless H.264)
    captions.jsonl                      {"video", "caption", "prompt_index", "video_index", "seed"} per
                                        video, in prompt order
    synthesis.json                      the teacher and resolved sampling settings, checked on resume

Video v of prompt p is sampled alone from the seed `video_seed(seed, p, v)`, so it does not depend on how
the work is sharded, on the batch it would otherwise share, or on interruptions. The (prompt, video) jobs
are split across processes with `accelerate.PartialState().split_between_processes` (launch with
`accelerate launch` or `torchrun`); each process writes its videos atomically and its own
`captions.part-RRRRR-of-WWWWW.jsonl`, and the main process merges the parts into `captions.jsonl` in
prompt order. A rerun skips the videos already on disk.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from pyramidal_wan.data.dataset import CAPTIONS_FILE
from pyramidal_wan.errors import CheckpointError, InputError
from pyramidal_wan.utils.io import atomic_path, write_json
from pyramidal_wan.utils.video import write_video

MANIFEST_FILE = "synthesis.json"
PART_PATTERN = "captions.part-*.jsonl"
# Wan2.1's `sample_fps`: the frame rate the teacher's videos are meant to play at.
DEFAULT_FPS = 16.0
DTYPES = ("float32", "bfloat16")


@dataclass(frozen=True)
class SynthesisSettings:
    """How each video is sampled; None takes the teacher folder's default."""

    num_frames: int | None = None
    height: int | None = None
    width: int | None = None
    schedule: str | None = None  # steps per stage, lowest resolution first; "0-0-50" is plain Wan
    sampler: str | None = None
    guidance_scale: float | None = None
    negative_prompt: str | None = None
    seed: int = 0
    videos_per_prompt: int = 1
    fps: float = DEFAULT_FPS
    crf: int = 0  # H.264 quality: 0 is lossless; ~18 is visually lossless at a fraction of the size
    dtype: str = "float32"  # of the transformer and text encoder (the VAE stays float32, as in Wan)

    def __post_init__(self):
        if self.videos_per_prompt < 1:
            raise InputError(f"--videos-per-prompt must be at least 1, got {self.videos_per_prompt}")
        if not self.fps > 0:
            raise InputError(f"--fps must be positive, got {self.fps}")
        if not 0 <= self.crf <= 51:
            raise InputError(f"--crf must be in 0..51 (0 is lossless), got {self.crf}")
        if self.dtype not in DTYPES:
            raise InputError(f"unknown dtype {self.dtype!r}; use {' or '.join(DTYPES)}")
        for name in ("num_frames", "height", "width"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise InputError(f"--{name.replace('_', '-')} must be positive, got {value}")


def read_prompts(path: str | Path) -> list[str]:
    """Prompts of a text file (one per line, blank lines skipped) or a .jsonl file ("caption" or "prompt")."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"prompts file {path} does not exist")
    jsonl = path.suffix.lower() == ".jsonl"
    prompts = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        prompts.append(_jsonl_prompt(line, f"{path}:{number}") if jsonl else line.strip())
    if not prompts:
        raise InputError(f"prompts file {path} holds no prompts (one per line, or JSONL with a 'caption')")
    return prompts


def _jsonl_prompt(line: str, where: str) -> str:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise InputError(
            f"{where} is not JSON ({err.msg}); a .jsonl prompts file holds one object a line"
        ) from err
    prompt = record.get("caption", record.get("prompt")) if isinstance(record, dict) else None
    if not isinstance(prompt, str) or not prompt.strip():
        raise InputError(f"{where} needs a non-empty string 'caption' or 'prompt'")
    return prompt.strip()


def video_seed(seed: int, prompt_index: int, video_index: int) -> int:
    """The sampling seed of video `video_index` of prompt `prompt_index`: a hash of all three (63 bits)."""
    state = np.random.SeedSequence([seed, prompt_index, video_index]).generate_state(1, np.uint64)[0]
    return int(state) >> 1


def video_name(prompt_index: int, video_index: int) -> str:
    """File name of video `video_index` of prompt `prompt_index`."""
    return f"{prompt_index:06d}-{video_index:02d}.mp4"


def plan_jobs(prompts: list[str], videos_per_prompt: int, seed: int) -> list[dict]:
    """Every video to make, in prompt order, as its captions.jsonl record."""
    return [
        {
            "video": video_name(p, v),
            "caption": prompt,
            "prompt_index": p,
            "video_index": v,
            "seed": video_seed(seed, p, v),
        }
        for p, prompt in enumerate(prompts)
        for v in range(videos_per_prompt)
    ]


def resolve_manifest(teacher: Path, prompts: list[str], settings: SynthesisSettings) -> dict:
    """What a synthesis run is made with: the teacher, the resolved size and sampling, the prompts' hash.

    Checks the settings against the teacher folder's configs without loading any weights.
    """
    import hashlib

    from pyramidal_wan.pipelines import plan_from_folder

    if not teacher.is_dir():
        raise CheckpointError(
            f"--teacher {teacher} is not a folder; give a diffusers Wan pipeline folder (model_index.json, "
            "transformer/, vae/, text_encoder/, tokenizer/)"
        )
    plan = plan_from_folder(
        teacher,
        settings.num_frames,
        settings.height,
        settings.width,
        settings.schedule,
        settings.sampler,
        settings.guidance_scale,
    )
    num_frames, height, width = plan.geometry[0].pixel
    resolved = {
        **asdict(settings),
        "num_frames": num_frames,
        "height": height,
        "width": width,
        "schedule": plan.schedule,
        "sampler": plan.sampler,
        "guidance_scale": plan.guidance_scale,
    }
    digest = hashlib.sha256("\n".join(prompts).encode("utf-8")).hexdigest()
    return {
        "kind": "pyramidal-wan synthetic dataset",
        "teacher": str(teacher.resolve()),
        "settings": resolved,
        "num_prompts": len(prompts),
        "prompts_sha256": digest,
    }


def check_out(out: Path, manifest: dict) -> None:
    """Raise unless `out` is new or holds a synthesis made with exactly these settings and prompts."""
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file; give a folder")
    path = out / MANIFEST_FILE
    if not path.exists():
        if (out / CAPTIONS_FILE).exists():
            raise InputError(f"{out} holds a dataset not made by synthesize-data; use another --out")
        return
    try:
        existing = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path} is not valid JSON ({err.msg}); use another --out") from err
    if existing != manifest:
        old, new = existing.get("settings", {}), manifest["settings"]
        changed = [k for k in {**old, **new} if old.get(k) != new.get(k)]
        changed += [k for k in manifest if k != "settings" and existing.get(k) != manifest[k]]
        raise InputError(
            f"{out} was synthesised with other settings ({', '.join(changed)} differ); rerun with the same "
            "teacher, prompts and options to resume, or use another --out"
        )


def synthesize(
    teacher: str | Path,
    prompts_file: str | Path,
    out: str | Path,
    settings: SynthesisSettings,
    progress: bool = True,
) -> dict:
    """Sample every (prompt, video) job with the teacher into `out`, resuming; call it on every process.

    Returns {"videos", "written", "skipped"} summed over processes. Every input is checked before any model
    loads; the teacher loads only on processes with videos left to make.
    """
    from accelerate.utils import reduce

    teacher, out = Path(teacher), Path(out)
    prompts = read_prompts(prompts_file)
    manifest = resolve_manifest(teacher, prompts, settings)
    check_out(out, manifest)
    jobs = plan_jobs(prompts, settings.videos_per_prompt, settings.seed)

    state = process_state()
    if state.is_main_process and not (out / MANIFEST_FILE).exists():
        write_json(out / MANIFEST_FILE, manifest)
    with state.split_between_processes(jobs) as mine:
        todo = [job for job in mine if not (out / job["video"]).exists()]
        if todo:
            _sample_videos(teacher, todo, out, manifest["settings"], state, progress)
        part = out / f"captions.part-{state.process_index:05d}-of-{state.num_processes:05d}.jsonl"
        with atomic_path(part) as tmp:
            tmp.write_text("".join(json.dumps(job) + "\n" for job in mine))
        counts = torch.tensor([len(todo), len(mine) - len(todo)], device=state.device)
    state.wait_for_everyone()
    written, skipped = (int(n) for n in reduce(counts, reduction="sum").tolist())
    if state.is_main_process:
        merge_captions(out, state.num_processes, len(jobs))
    state.wait_for_everyone()
    return {"videos": len(jobs), "written": written, "skipped": skipped}


def process_state():
    """accelerate's `PartialState`; with ACCELERATE_USE_CPU (`accelerate launch --cpu`) processes use the CPU.

    Unlike `Accelerator`, `PartialState` does not read that variable itself, and without it a torchrun job
    on a machine without GPUs would run as independent single processes."""
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))


def _sample_videos(teacher: Path, jobs: list[dict], out: Path, resolved: dict, state, progress) -> None:
    """Load the teacher on this process's device and write each job's video, one sampling call per video."""
    from pyramidal_wan.pipelines import PyramidalWanPipeline, plan_from_folder, to_uint8_video

    dtype = getattr(torch, resolved["dtype"])  # the VAE stays float32, as Wan runs it
    pipe = PyramidalWanPipeline.from_pretrained(
        teacher, torch_dtype={"transformer": dtype, "text_encoder": dtype}
    ).to(state.device)
    pipe.set_progress_bar_config(disable=True)
    sampling = {k: resolved[k] for k in ("num_frames", "height", "width", "schedule", "sampler")}
    plan = plan_from_folder(teacher, **sampling, guidance_scale=resolved["guidance_scale"])  # once for all
    # The main process shows its share; the others run at the same pace.
    bar = tqdm(
        total=len(jobs),
        desc="synthesize-data",
        unit="video",
        disable=not (progress and state.is_main_process),
    )
    for job in jobs:
        # One video per call: batching prompts would tie a video's numerics to its batch-mates.
        frames = pipe(
            job["caption"],
            negative_prompt=resolved["negative_prompt"],
            plan=plan,
            generator=torch.Generator().manual_seed(job["seed"]),
        ).frames[0]
        write_video(out / job["video"], to_uint8_video(frames), fps=resolved["fps"], crf=resolved["crf"])
        bar.update(1)
    bar.close()


def merge_captions(out: Path, num_processes: int, num_jobs: int) -> Path:
    """Join the processes' caption parts into `captions.jsonl` in prompt order, then remove every part."""
    records = []
    for rank in range(num_processes):
        part = out / f"captions.part-{rank:05d}-of-{num_processes:05d}.jsonl"
        if not part.is_file():
            raise CheckpointError(f"{part} is missing: process {rank} did not finish; rerun to resume")
        records += [json.loads(line) for line in part.read_text().splitlines() if line.strip()]
    records.sort(key=lambda r: (r["prompt_index"], r["video_index"]))
    missing = [r["video"] for r in records if not (out / r["video"]).is_file()]
    if len(records) != num_jobs or missing:
        raise CheckpointError(
            f"{out}: {num_jobs - len(records) + len(missing)} of {num_jobs} videos are missing"
            + (f" (first: {missing[0]})" if missing else "")
            + "; rerun to resume"
        )
    path = out / CAPTIONS_FILE
    with atomic_path(path) as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
    for part in out.glob(PART_PATTERN):
        part.unlink()
    return path
