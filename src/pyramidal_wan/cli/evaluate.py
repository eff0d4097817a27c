"""`pyramidal-wan evaluate --suite toy`: ToyBench for models x schedules, with TFLOPs and latency per row.

Every generated video becomes one JSON record (model, schedule, prompt index, seed, scores) appended to
--out as soon as it is scored, so an interrupted evaluation resumes without recomputing anything.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from pyramidal_wan.errors import InputError

SUITES = ("toy",)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="score models x schedules with ToyBench (JSON records, resumable)",
        description="Generate the fixed, seeded ToyBench prompt set with each model and schedule, score "
        "every video, and print the table: schedule, TFLOPs, semantic / quality / total (train and held-out "
        "captions), seconds per video.",
    )
    parser.add_argument("--suite", choices=SUITES, default="toy")
    parser.add_argument("--model", action="append", default=[], help="a model folder (repeatable)")
    parser.add_argument(
        "--vae-ceiling",
        metavar="VAE_DIR",
        help="also score the VAE's reconstructions of the real clips: the best any model using it can do",
    )
    parser.add_argument("--schedule", action="append", help="a schedule (repeatable; default: the model's)")
    parser.add_argument("--prompts", type=int, default=36, help="train-split prompts (default 36)")
    parser.add_argument("--heldout", type=int, default=24, help="held-out-split prompts (default 24)")
    parser.add_argument("--seeds", type=int, default=1, help="seeds per prompt (default 1)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--out", default="runs/eval/toybench.jsonl", help="JSON-lines records (appended)")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from pyramidal_wan.cli.generate import plan_flops, quiet_loading
    from pyramidal_wan.eval.toybench import group_records, run_toybench, summarize
    from pyramidal_wan.pipelines import PyramidalWanPipeline
    from pyramidal_wan.toy.world import eval_prompts

    if min(args.prompts, args.heldout, args.seeds, args.batch_size) < 0 or args.seeds == 0:
        raise InputError("--prompts, --heldout and --batch-size must be >= 0 and --seeds >= 1")
    if not args.model and not args.vae_ceiling:
        raise InputError("give at least one --model (or --vae-ceiling VAE_DIR)")
    schedules = args.schedule or [None]
    # Validate every model x schedule before generating anything.
    plans = {
        (m, s): PyramidalWanPipeline.plan_from_folder(m, schedule=s) for m in args.model for s in schedules
    }
    if args.threads:
        torch.set_num_threads(args.threads)
    quiet_loading()
    prompts = eval_prompts(args.prompts, "train") + eval_prompts(args.heldout, "heldout")
    seeds = list(range(args.seeds))
    rows = []
    if args.vae_ceiling:
        rows.append(vae_ceiling_row(args.vae_ceiling, prompts, seeds, args.out, args.batch_size))
    for model in args.model:
        pipe = PyramidalWanPipeline.from_pretrained(model)
        for schedule in schedules:
            plan = plans[(model, schedule)]
            timing = {"seconds": 0.0, "videos": 0}

            def generate(captions, batch_seeds, pipe=pipe, plan=plan, timing=timing):
                started = time.perf_counter()
                frames = pipe(
                    captions,
                    schedule=plan.schedule,
                    sampler=plan.sampler,
                    guidance_scale=plan.guidance_scale,
                    output_type="np",
                    generator=[torch.Generator().manual_seed(s) for s in batch_seeds],
                ).frames
                timing["seconds"] += time.perf_counter() - started
                timing["videos"] += len(captions)
                return (frames * 255).round().clip(0, 255).astype("uint8")

            name = Path(model).name
            records = run_toybench(
                generate,
                prompts,
                seeds,
                out=args.out,
                model=name,
                schedule=plan.schedule,
                batch_size=args.batch_size,
            )
            flops = plan_flops(pipe.transformer.config, plan, pipe.default_max_sequence_length())
            per_video = timing["seconds"] / timing["videos"] if timing["videos"] else None
            rows.append((name, plan.schedule, flops["total_tflops"], summarize(records), per_video))
    print_table(rows)
    print(f"records: {args.out} ({sum(len(g) for g in group_records(_all(args.out)).values())} in file)")
    return 0


def vae_ceiling_row(vae_dir, prompts, seeds, out, batch_size):
    """ToyBench of encode -> decode of the real rendered clips: the ceiling a VAE puts on any model."""
    import torch

    from pyramidal_wan.data.video import to_pixel_tensor, to_uint8_frames
    from pyramidal_wan.eval.toybench import run_toybench, summarize
    from pyramidal_wan.toy.vae import load_vae

    vae = load_vae(vae_dir)
    scenes = {scene.caption(): scene for scene in prompts}
    timing = {"seconds": 0.0, "videos": 0}

    @torch.no_grad()
    def reconstruct(captions, batch_seeds):
        started = time.perf_counter()
        real = to_pixel_tensor(np.stack([scenes[c].render() for c in captions]))
        recon = vae.decode(vae.encode(real).latent_dist.mean).sample
        timing["seconds"] += time.perf_counter() - started
        timing["videos"] += len(captions)
        return to_uint8_frames(recon)

    records = run_toybench(
        reconstruct,
        prompts,
        seeds,
        out=out,
        model=f"vae-ceiling:{Path(vae_dir).name}",
        schedule="-",
        batch_size=batch_size,
    )
    per_video = timing["seconds"] / timing["videos"] if timing["videos"] else None
    return (f"VAE {Path(vae_dir).name}", "encode+dec", 0.0, summarize(records), per_video)


def _all(path):
    from pyramidal_wan.eval.toybench import read_records

    return read_records(path)


def print_table(rows) -> None:
    """One line per model x schedule: TFLOPs, ToyBench (overall and held-out), seconds per video."""
    print(
        f"{'model':<18} {'schedule':>9} {'TFLOPs':>9} {'semantic':>9} {'quality':>8} {'total':>6} "
        f"{'held-out total':>15} {'s/video':>8}"
    )
    for name, schedule, tflops, summary, per_video in rows:
        overall, heldout = summary["overall"], summary.get("heldout") or {}
        held = f"{heldout['total']:.1f}" if heldout.get("total") is not None else "-"
        seconds = f"{per_video:.2f}" if per_video is not None else "cached"
        print(
            f"{name:<18} {schedule:>9} {tflops:>9.4g} {overall['semantic']:>9.1f} {overall['quality']:>8.1f} "
            f"{overall['total']:>6.1f} {held:>15} {seconds:>8}"
        )
