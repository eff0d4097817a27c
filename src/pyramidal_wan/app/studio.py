"""What the browser app does, without any UI: generate one video with live per-stage previews, or the same
prompt and seed at two schedules, timing every part of the call.

A pyramid has a cheap answer early: at the end of each stage the sampler's clean estimate x0 is a whole
(low-resolution) video. `Studio.generate` decodes it when the stage's last model evaluation returns (the
pipeline's `callback`; carried to full resolution by R_up and decoded as `eval.pyramid_view` does for the
report) and hands it to `on_preview` while the next stage samples. Decoding is not free, so its time is
measured apart from the stages' and reported as the preview cost.

Every input is checked against the model folder's configs (`plan_from_folder`) before any model work, so a
bad prompt, size or schedule raises a one-line `InputError` and nothing runs. Pipelines are loaded once
per model folder and kept.
"""

from __future__ import annotations

import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from pyramidal_wan.errors import InputError
from pyramidal_wan.eval.pyramid_view import decode_latents, stage_evaluations, to_full_resolution
from pyramidal_wan.eval.timing import DECODE, StageTimer, stage_label

PREVIEW = "preview decode"  # the StageTimer part of the preview decodes


@dataclass
class StagePreview:
    stage: int
    latent_size: tuple[int, int, int]  # (T, H, W) of the stage's clean estimate
    frames: object  # uint8 (F, H, W, 3) at full resolution
    seconds_in: float  # seconds since the call started when the stage ended
    decode_seconds: float  # what decoding this preview cost


@dataclass
class Generation:
    """One finished video and what it cost."""

    model: str
    prompt: str
    schedule: str
    sampler: str
    seed: int
    size: tuple[int, int, int]  # (frames, height, width)
    frames: object  # float (F, H, W, 3) in [0, 1]
    tflops: float
    seconds: dict[str, float]  # per part: text, stage N .. stage 0, decode, and the preview decodes
    previews: list[StagePreview] = field(default_factory=list)

    @property
    def total_seconds(self) -> float:
        return sum(self.seconds.values())

    @property
    def preview_seconds(self) -> float:
        return self.seconds.get(PREVIEW, 0.0)


def parse_size(text: str | None) -> tuple[int | None, int | None, int | None]:
    """'FRAMESxHEIGHTxWIDTH' (e.g. 17x64x64); empty: the model's default size."""
    if text is None or not str(text).strip():
        return None, None, None
    parts = str(text).lower().replace(" ", "").split("x")
    try:
        frames, height, width = (int(p) for p in parts)
    except ValueError:
        raise InputError(
            f"size {text!r} must be FRAMESxHEIGHTxWIDTH like 17x64x64, or empty for the model's"
        ) from None
    if min(frames, height, width) < 1:
        raise InputError(f"size {text!r} must be positive numbers")
    return frames, height, width


class Studio:
    """Generations on a fixed set of model folders (the first is the default); one at a time per process
    (a lock: the app also queues requests, but the lock makes the class safe on its own)."""

    def __init__(self, models: Sequence[str | Path], device: str = "cpu"):
        from pyramidal_wan.models.bundled import is_model_folder

        self.models = {Path(m).resolve().name: Path(m) for m in models}
        if len(self.models) != len(models):
            raise InputError("two --model folders share a name; give folders with distinct names")
        for folder in self.models.values():
            if not is_model_folder(folder):
                raise InputError(f"--model {folder} is not a diffusers model folder (no model_index.json)")
        self.device = torch.device(device)
        self._pipes: dict[str, object] = {}
        self._lock = threading.Lock()
        self.out_dir = Path(tempfile.mkdtemp(prefix="pyramidal-wan-serve-"))

    @property
    def names(self) -> list[str]:
        return list(self.models)

    def default_schedule(self, name: str) -> str:
        from pyramidal_wan.pipelines import PyramidalWanPipeline

        return PyramidalWanPipeline.plan_from_folder(self.folder(name)).schedule

    def folder(self, name: str) -> Path:
        if name not in self.models:
            raise InputError(f"unknown model {name!r}; choose one of {', '.join(self.models)}")
        return self.models[name]

    def plan(self, name: str, prompt: str, schedule: str | None, size: str | None):
        """The checked sampling plan of one request (raises InputError before any model work)."""
        from pyramidal_wan.pipelines import plan_from_folder

        if not isinstance(prompt, str) or not prompt.strip():
            raise InputError("the prompt is empty: describe the video to generate")
        schedule = schedule.strip() if isinstance(schedule, str) and schedule.strip() else None
        return plan_from_folder(self.folder(name), *parse_size(size), schedule=schedule)

    def pipeline(self, name: str):
        if name not in self._pipes:
            from pyramidal_wan.models.loading import quiet_loading
            from pyramidal_wan.pipelines import PyramidalWanPipeline

            quiet_loading()
            pipe = PyramidalWanPipeline.from_pretrained(self.folder(name)).to(self.device)
            pipe.set_progress_bar_config(disable=True)
            self._pipes[name] = pipe
        return self._pipes[name]

    def generate(
        self,
        name: str,
        prompt: str,
        schedule: str | None = None,
        seed: int = 0,
        size: str | None = None,
        previews: bool = True,
        on_preview: Callable[[StagePreview], None] | None = None,
    ) -> Generation:
        """One video; with `previews`, each stage's decoded clean estimate goes to `on_preview` as the stage
        ends (and into the result)."""
        from pyramidal_wan.eval.flops import plan_flops

        plan = self.plan(name, prompt, schedule, size)
        seed = int(seed)
        with self._lock:
            pipe = self.pipeline(name)
            remaining = stage_evaluations(plan)  # stage -> evaluations left
            final_shape = (1, pipe.transformer.config.out_channels, *plan.geometry[0].latent)
            shown: list[StagePreview] = []
            timer = StageTimer(pipe)

            def callback(info):
                timer.callback(info)
                stage = int(info["stage"])
                remaining[stage] -= 1
                if previews and remaining[stage] == 0:
                    started = time.perf_counter()
                    latent = info["denoised"][:1].float()
                    full = to_full_resolution(pipe, latent, stage, final_shape)
                    frames = decode_latents(pipe, full)[0]
                    preview = StagePreview(
                        stage,
                        tuple(latent.shape[-3:]),
                        frames,
                        sum(timer.seconds.values()),
                        time.perf_counter() - started,
                    )
                    timer.count_as(PREVIEW, latent.device)
                    shown.append(preview)
                    if on_preview is not None:
                        on_preview(preview)

            with timer:
                timer.start()
                frames = pipe(
                    prompt,
                    plan=plan,
                    generator=torch.Generator().manual_seed(seed),
                    callback=callback,
                ).frames[0]
                seconds = timer.stop(self.device)
            ppf_config = pipe.ppf.pyramid_config if pipe.ppf is not None else None
            tflops = plan_flops(pipe.transformer.config, plan, pipe.default_max_sequence_length(), ppf_config)
        return Generation(
            model=name,
            prompt=prompt,
            schedule=plan.schedule,
            sampler=plan.sampler,
            seed=seed,
            size=plan.geometry[0].pixel,
            frames=frames,
            tflops=tflops["total_tflops"],
            seconds=seconds,
            previews=shown,
        )

    def write_video(self, generation: Generation, tag: str) -> Path:
        """The generation as an MP4 in the app's output folder (a fresh name per call)."""
        from pyramidal_wan.pipelines import export_video

        path = self.out_dir / f"{tag}-{time.time_ns()}.mp4"
        return export_video(generation.frames, path)[0]

    def write_preview(self, preview: StagePreview, tag: str) -> Path:
        from pyramidal_wan.pipelines.export import DEFAULT_FPS
        from pyramidal_wan.utils.video import write_video

        path = self.out_dir / f"{tag}-stage{preview.stage}-{time.time_ns()}.gif"
        return write_video(path, preview.frames, fps=DEFAULT_FPS)


def stage_rows(generation: Generation) -> list[tuple[str, str]]:
    """(part, seconds) of a generation in the order they ran, stages labelled with their latent size."""
    sizes = {stage_label(p.stage): p.latent_size for p in generation.previews}
    rows = []
    for part, seconds in generation.seconds.items():
        label = part
        if part in sizes:
            label = f"{part} (latent {'x'.join(map(str, sizes[part]))})"
        elif part == DECODE:
            label = "VAE decode"
        rows.append((label, f"{seconds:.3f}"))
    return rows
