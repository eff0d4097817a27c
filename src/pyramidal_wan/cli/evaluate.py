"""`pyramidal-wan evaluate`: score models x schedules with ToyBench (--suite toy) or VBench (--suite vbench).

ToyBench: every generated video becomes one JSON record (model, schedule, prompt index, seed, scores, and
what it cost: TFLOPs, seconds per video, seconds per part of the call) appended to --out as soon as it is
scored, so an interrupted evaluation resumes without recomputing anything. The first --samples prompts
(seed 0) are also saved as GIFs beside the records, for `pyramidal-wan report`.

VBench: the standard prompt suite (or --prompt-file) is generated into the layout the `vbench` package
reads ({prompt}-{i}.mp4; existing videos are kept, so a run resumes), then its judge scores the folder.
The package and its judge weights are checked before any video is generated.

Both suites shard generation between processes (accelerate's `PartialState.split_between_processes`):
`torchrun --nproc_per_node N -m pyramidal_wan.cli evaluate ...` or `accelerate launch` on GPUs.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from pyramidal_wan.cli.options import non_negative_int, output_path, positive_int
from pyramidal_wan.errors import InputError

SUITES = ("toy", "vbench")
DEFAULT_OUT = {"toy": "runs/eval/toybench.jsonl", "vbench": "runs/eval/vbench"}
DEFAULT_SAMPLES = 4


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="score models x schedules with ToyBench (JSON records, resumable) or VBench",
        description="Generate the fixed, seeded ToyBench prompt set (or the VBench suite) with each model "
        "and schedule, score every video, and print the table: schedule, TFLOPs, semantic / quality / total "
        "(train and held-out captions; totals ± their bootstrap standard error over prompts), seconds per "
        "video. Shards prompts across processes when launched with torchrun or accelerate.",
    )
    parser.add_argument("--suite", choices=SUITES, default="toy")
    parser.add_argument("--model", action="append", default=[], help="a model folder (repeatable)")
    parser.add_argument(
        "--vae-ceiling",
        metavar="VAE_DIR",
        help="toy: also score the VAE's reconstructions of the real clips (any model's ceiling)",
    )
    parser.add_argument("--schedule", action="append", help="a schedule (repeatable; default: the model's)")
    parser.add_argument(
        "--solver", help="within-stage solver of multistep runs: euler or dpm2m (default: the model's)"
    )
    parser.add_argument(
        "--cache",
        help="a diffusers step cache of multistep runs: first-block, taylorseer, magcache (calibrated "
        "ratios in the model folder) or fastercache (default: none)",
    )
    parser.add_argument(
        "--decoder",
        help="a tiny decoder folder (TinyWanDecoder) decoding in place of each model's VAE decoder; runs are "
        "labelled SCHEDULE+NAME, NAME the folder's name (default: the VAE's)",
    )
    parser.add_argument(
        "--prompts", type=non_negative_int, default=36, help="toy: train-split prompts (default 36)"
    )
    parser.add_argument(
        "--heldout", type=non_negative_int, default=24, help="toy: held-out-split prompts (default 24)"
    )
    parser.add_argument("--seeds", type=positive_int, default=1, help="toy: seeds per prompt (default 1)")
    parser.add_argument(
        "--samples",
        type=non_negative_int,
        default=DEFAULT_SAMPLES,
        help=f"toy: save GIFs of the first N prompts (seed 0) for the report (default {DEFAULT_SAMPLES})",
    )
    parser.add_argument(
        "--no-pyramid-view",
        action="store_true",
        help="toy: skip the pyramid view (one extra sample per pyramidal schedule, for the report)",
    )
    parser.add_argument("--prompt-file", help="vbench: your prompts (.txt, one a line, or a .json list)")
    parser.add_argument(
        "--dimension", action="append", help="vbench: a dimension to judge (repeatable; default: all)"
    )
    parser.add_argument(
        "--videos-per-prompt", type=positive_int, help="vbench: videos (seeds 0..N-1) per prompt (default 5)"
    )
    parser.add_argument("--batch-size", type=positive_int, default=8)
    parser.add_argument(
        "--out",
        type=output_path,
        help=f"toy: JSON-lines records, appended (default {DEFAULT_OUT['toy']}); vbench: a folder (default "
        f"{DEFAULT_OUT['vbench']})",
    )
    parser.add_argument(
        "--device", default="cpu", help="cpu or cuda (default cpu; cuda: each process its GPU)"
    )
    parser.add_argument("--dtype", default="float32", help="float32 or bfloat16 (default float32)")
    parser.add_argument("--threads", type=positive_int, help="torch CPU threads")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.batch_size < 1:
        raise InputError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.threads is not None and args.threads < 1:
        raise InputError(f"--threads must be at least 1, got {args.threads}")
    args.out = args.out or DEFAULT_OUT[args.suite]
    return run_vbench(args) if args.suite == "vbench" else run_toy(args)


def _setup(args, models, schedules):
    """(process state, device, dtype, {(model, schedule): plan}, {model: tiny decoder or None}) with every
    setting checked first."""
    import torch
    from accelerate import PartialState

    from pyramidal_wan.cli.generate import resolve_device, resolve_dtype
    from pyramidal_wan.models.caching import check_cache, check_folder_mag_ratios
    from pyramidal_wan.models.loading import quiet_loading
    from pyramidal_wan.models.tiny_decoder import load_folder_decoder
    from pyramidal_wan.pipelines import plan_from_folder

    device, dtype = resolve_device(args.device), resolve_dtype(args.dtype)
    # Validate every model x schedule before generating anything.
    plans = {(m, s): plan_from_folder(m, schedule=s, solver=args.solver) for m in models for s in schedules}
    for (model, _), plan in plans.items():
        check_cache(args.cache, plan.sampler, plan.kind, plan.guidance_scale)
        if args.cache == "magcache":
            check_folder_mag_ratios(model, plan.steps)
    decoders = {m: load_folder_decoder(m, args.decoder) for m in models}
    state = PartialState(cpu=device.type == "cpu")
    if device.type == "cuda":
        device = state.device  # each process its own GPU
    if args.threads:
        torch.set_num_threads(args.threads)
    quiet_loading()
    return state, device, dtype, plans, decoders


def _load(model, device, dtype, decoder=None):
    from pyramidal_wan.pipelines import PyramidalWanPipeline

    pipe = PyramidalWanPipeline.from_pretrained(
        model, torch_dtype={"transformer": dtype, "text_encoder": dtype}
    )
    pipe.set_decoder(decoder)
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _tflops(pipe, plan) -> float:
    from pyramidal_wan.eval.flops import plan_flops

    ppf_config = pipe.ppf.pyramid_config if pipe.ppf is not None else None  # a PPF model's own kernels
    text_len = pipe.default_max_sequence_length()
    return plan_flops(pipe.transformer.config, plan, text_len, ppf_config)["total_tflops"]


class TimedGenerator:
    """Generate batches with one pipeline and plan, timing each call by part (`eval.timing.StageTimer`)."""

    def __init__(self, pipe, plan, device, cache: str | None = None):
        from pyramidal_wan.eval.timing import StageTimer

        self.pipe, self.plan, self.device, self.cache = pipe, plan, device, cache
        self.timer = StageTimer(pipe)
        self.last: dict = {}  # the last batch: seconds and parts, per video

    def __call__(self, captions: list[str], seeds: list[int]) -> np.ndarray:
        """uint8 videos (B, F, H, W, 3) of one batch."""
        import torch

        with self.timer:
            self.timer.start()
            frames = self.pipe(
                captions,
                plan=self.plan,
                cache=self.cache,
                output_type="np",
                generator=[torch.Generator().manual_seed(s) for s in seeds],
                callback=self.timer.callback,
            ).frames
            parts = self.timer.stop(self.device)
        n = len(captions)
        self.last = {
            "seconds": sum(parts.values()) / n,
            "stage_seconds": {part: seconds / n for part, seconds in parts.items()},
            "transformer_seconds": sum(self.timer.transformer.values()) / n,
        }
        return (frames * 255).round().clip(0, 255).astype("uint8")


def model_name(folder: str) -> str:
    """A model's name in records and tables: its folder's name, or for a training run's export
    (`RUN/model`, `RUN/model-stepN`) the run's name (`RUN`, `RUN-stepN`)."""
    path = Path(folder).resolve()
    if path.name == "model" or path.name.startswith("model-step"):
        return path.parent.name + path.name[len("model") :]
    return path.name


def run_label(plan, cache: str | None = None, decoder: str | None = None) -> str:
    """A run's name in records and tables: its schedule, then a non-default solver, a cache and a tiny
    decoder's folder name, e.g. "10-10-5:dpm2m+taylorseer" or "2-2-1+tiny-decoder"."""
    label = plan.schedule
    if plan.sampler == "multistep" and plan.solver != "euler":
        label += f":{plan.solver}"
    return label + (f"+{cache}" if cache else "") + (f"+{Path(decoder).name}" if decoder else "")


# ---------------------------------------------------------------------------------------------------------
# ToyBench


def run_toy(args: argparse.Namespace) -> int:
    from pyramidal_wan.eval.toybench import merge_parts, run_toybench
    from pyramidal_wan.pyramid import is_baseline_schedule
    from pyramidal_wan.toy.world import eval_prompts

    if min(args.prompts, args.heldout, args.samples) < 0 or args.seeds < 1:
        raise InputError("--prompts, --heldout and --samples must be >= 0 and --seeds >= 1")
    if args.prompts + args.heldout == 0:
        raise InputError("--prompts and --heldout are both 0: nothing to evaluate")
    if not args.model and not args.vae_ceiling:
        raise InputError("give at least one --model (or --vae-ceiling VAE_DIR)")
    if not args.out.endswith(".jsonl"):
        raise InputError(f"--out {args.out} must be a .jsonl records file for --suite toy")
    schedules = args.schedule or [None]
    state, device, dtype, plans, decoders = _setup(args, args.model, schedules)
    prompts = [
        *(eval_prompts(args.prompts, "train") if args.prompts else []),
        *(eval_prompts(args.heldout, "heldout") if args.heldout else []),
    ]
    seeds = list(range(args.seeds))
    out = Path(args.out)
    runs = []
    if args.vae_ceiling:
        runs.append(vae_ceiling(args.vae_ceiling, prompts, seeds, out, args.batch_size, state))
    for model in args.model:
        pipe = _load(model, device, dtype, decoders[model])
        for schedule in schedules:
            plan = plans[(model, schedule)]
            name = model_name(model)
            fields = {
                "model_path": str(Path(model).resolve()),
                "tflops": _tflops(pipe, plan),
                "sampler": plan.sampler,  # multistep or fewstep: the speed-up table tells them apart
                "device": device.type,
                "batch_size": args.batch_size,
            }
            if not (args.no_pyramid_view or is_baseline_schedule(plan.steps)):
                fields["pyramid_view"] = pyramid_view(pipe, plan, out, name, prompts[0].caption(), state)
            generate = TimedGenerator(pipe, plan, device, args.cache)
            label = run_label(plan, args.cache, args.decoder)
            samples = SampleSaver(out, name, label, args.samples)

            def on_batch(indices, batch_seeds, videos, generate=generate, fields=fields, samples=samples):
                saved = samples.save(indices, batch_seeds, videos)
                return [{**fields, **generate.last, "sample": path} for path in saved]

            run_toybench(
                generate,
                prompts,
                seeds,
                out=out,
                model=name,
                schedule=label,
                batch_size=args.batch_size,
                on_batch=on_batch,
                state=state,
            )
            runs.append((name, label))
    state.wait_for_everyone()
    if state.is_main_process:
        records = merge_parts(out)
        print_table(records, runs)
        print(f"records: {out} ({len(records)} in file)")
    return 0


def pyramid_view(pipe, plan, out: Path, model: str, prompt: str, state) -> str:
    """The run's pyramid view (`eval.pyramid_view`: one prompt, seed 0) in OUT-pyramid/MODEL/SCHEDULE/, made
    by the main process unless already there; its folder relative to the records' folder."""
    from pyramidal_wan.eval.pyramid_view import VIEW_FILE, make_pyramid_view

    relative = Path(f"{out.stem}-pyramid") / model / plan.schedule
    folder = out.parent / relative
    if state.is_main_process and not (folder / VIEW_FILE).is_file():
        make_pyramid_view(pipe, plan, folder, prompt, seed=0)
    state.wait_for_everyone()
    return relative.as_posix()


class SampleSaver:
    """Save the videos of the first `count` prompts (seed 0) as GIFs in OUT-samples/MODEL/SCHEDULE/; return
    their paths relative to the records' folder (None for the others)."""

    def __init__(self, out: Path, model: str, schedule: str, count: int):
        self.base = out.parent
        self.folder = Path(f"{out.stem}-samples") / model / schedule
        self.count = count

    def save(self, indices, seeds, videos) -> list[str | None]:
        from pyramidal_wan.pipelines.export import DEFAULT_FPS
        from pyramidal_wan.utils.video import write_video

        paths = []
        for index, seed, video in zip(indices, seeds, videos):
            if index >= self.count or seed != 0:
                paths.append(None)
                continue
            relative = self.folder / f"p{index:03d}-s{seed}.gif"
            write_video(self.base / relative, np.asarray(video), fps=DEFAULT_FPS)
            paths.append(relative.as_posix())
        return paths


def vae_ceiling(vae_dir, prompts, seeds, out, batch_size, state) -> tuple[str, str]:
    """ToyBench of encode -> decode of the real rendered clips: the ceiling a VAE puts on any model."""
    import torch

    from pyramidal_wan.eval.report import VAE_CEILING_PREFIX
    from pyramidal_wan.eval.toybench import run_toybench
    from pyramidal_wan.models.vae_speed import fast_cpu_inference
    from pyramidal_wan.toy.vae import load_vae
    from pyramidal_wan.utils.video import to_pixel_tensor, to_uint8_frames

    vae = load_vae(vae_dir)
    fast_cpu_inference(vae)  # as the pipeline decodes
    scenes = {scene.caption(): scene for scene in prompts}
    timing = {}

    @torch.no_grad()
    def reconstruct(captions, batch_seeds):
        started = time.perf_counter()
        real = to_pixel_tensor(np.stack([scenes[c].render() for c in captions]))
        recon = vae.decode(vae.encode(real).latent_dist.mean).sample
        timing["seconds"] = (time.perf_counter() - started) / len(captions)
        return to_uint8_frames(recon)

    def on_batch(indices, batch_seeds, videos):
        fields = {"tflops": 0.0, "device": "cpu", "batch_size": batch_size, **timing}
        return [{**fields, "stage_seconds": {"encode+decode": timing["seconds"]}} for _ in indices]

    model = f"{VAE_CEILING_PREFIX}{Path(vae_dir).name}"
    run_toybench(
        reconstruct,
        prompts,
        seeds,
        out=out,
        model=model,
        schedule="-",
        batch_size=batch_size,
        on_batch=on_batch,
        state=state,
    )
    return model, "-"


def print_table(records, runs) -> None:
    """One line per model x schedule of this evaluation: the report's main table, then its seconds per
    video by part (text, each stage, decode, total, inside transformer forwards), from the records."""
    from pyramidal_wan.eval.report import latency_table, main_table, toy_runs

    summaries = toy_runs([r for r in records if (r.get("model"), r.get("schedule")) in set(runs)])
    for header, rows in (main_table(summaries), latency_table(summaries)):
        if not rows:
            continue
        widths = [max([len(h), *(len(row[i]) for row in rows)]) for i, h in enumerate(header)]
        for line in (header, *rows):
            cells = (c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths)))
            print("  ".join(cells))
        print()


# ---------------------------------------------------------------------------------------------------------
# VBench


def run_vbench(args: argparse.Namespace) -> int:
    from pyramidal_wan.eval import vbench as vb

    if not args.model:
        raise InputError("--suite vbench needs at least one --model")
    if args.vae_ceiling:
        raise InputError("--vae-ceiling is a ToyBench option; drop it for --suite vbench")
    custom = args.prompt_file is not None
    per_prompt = args.videos_per_prompt or vb.STANDARD_VIDEOS_PER_PROMPT
    if per_prompt < 1:
        raise InputError(f"--videos-per-prompt must be >= 1, got {per_prompt}")
    if not custom and per_prompt != vb.STANDARD_VIDEOS_PER_PROMPT:
        raise InputError(
            f"the standard VBench suite scores {vb.STANDARD_VIDEOS_PER_PROMPT} videos per prompt"
        )
    dimensions = vb.check_dimensions(args.dimension, custom)
    vbench_module = vb.check_vbench(dimensions)  # before any model work: package and judge weights
    full_info = vb.full_info_path(vbench_module)
    prompts = vb.read_prompt_file(args.prompt_file) if custom else vb.standard_prompts(full_info, dimensions)
    names = {(p, i): vb.video_name(p, i) for p in prompts for i in range(per_prompt)}
    schedules = args.schedule or [None]
    state, device, dtype, plans, decoders = _setup(args, args.model, schedules)
    out = Path(args.out)
    runs = []  # generate everything first, then free the models for the judges
    for model in args.model:
        pipe = _load(model, device, dtype, decoders[model])
        for schedule in schedules:
            plan = plans[(model, schedule)]
            folder = out / model_name(model) / run_label(plan, args.cache, args.decoder)
            generate = TimedGenerator(pipe, plan, device, args.cache)
            seconds = generate_vbench_videos(generate, names, folder / "videos", args.batch_size, state)
            runs.append((model, plan, folder, _tflops(pipe, plan), _gather(state, seconds)))
        del pipe
    _empty_cache(device)
    state.wait_for_everyone()
    prompts_by_file = {n: p for (p, _), n in names.items()} if custom else None
    for model, plan, folder, tflops, timings in runs:
        name = f"{model_name(model)}_{run_label(plan, args.cache, args.decoder)}"
        # every process calls the judge: VBench splits the videos between ranks itself
        scores = vb.run_judge(
            vbench_module,
            device,
            full_info,
            folder / "videos",
            folder / "vbench",
            name,
            dimensions,
            prompts_by_file,
        )
        if state.is_main_process:
            seconds = [s for per_process in timings for s in per_process]
            record = {
                "suite": "vbench",
                "model": model_name(model),
                "schedule": run_label(plan, args.cache, args.decoder),
                "model_path": str(Path(model).resolve()),
                "mode": "custom_input" if custom else "vbench_standard",
                "prompts": len(prompts),
                "videos": len(names),
                "tflops": tflops,
                "seconds": float(np.mean(seconds)) if seconds else None,
                "device": device.type,
                "batch_size": args.batch_size,
                "dimensions": scores,
            }
            _append_json_line(out / "records.jsonl", record)
            print(f"{name}: " + ", ".join(f"{d} {100 * s:.2f}" for d, s in scores.items()))
    if state.is_main_process:
        print(f"records: {out / 'records.jsonl'}")
    return 0


def _empty_cache(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.empty_cache()


def generate_vbench_videos(generate, names: dict, videos_dir: Path, batch_size: int, state) -> list[float]:
    """Write every missing `{prompt}-{i}.mp4` (seed i) of `names`, this process's share of them; return
    the seconds per video of the batches it generated."""
    from pyramidal_wan.pipelines.export import DEFAULT_FPS
    from pyramidal_wan.utils.video import write_video

    todo = [key for key, name in names.items() if not (videos_dir / name).exists()]
    with state.split_between_processes(todo) as mine:
        mine = list(mine)
    seconds = []
    for start in range(0, len(mine), batch_size):
        batch = mine[start : start + batch_size]
        videos = generate([p for p, _ in batch], [i for _, i in batch])
        seconds += [generate.last["seconds"]] * len(batch)
        for key, video in zip(batch, videos):
            write_video(videos_dir / names[key], video, fps=DEFAULT_FPS)
    return seconds


def _gather(state, values: list) -> list[list]:
    """Every process's `values` (a list per process); the plain list when there is one process."""
    if state.num_processes == 1:
        return [values]
    from accelerate.utils import gather_object

    return gather_object([values])


def _append_json_line(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")
