"""`pyramidal-wan generate`: one video from a prompt with a (pyramidal) Wan model folder, as MP4 and GIF.

Every argument is checked before the model runs, and the video files are written atomically at the end,
so a bad argument gives a one-line error (exit status 2) and no output file.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from pathlib import Path

import torch

from pyramidal_wan.cli.options import image_file, output_path, positive_float, positive_int
from pyramidal_wan.errors import InputError
from pyramidal_wan.eval.flops import plan_flops
from pyramidal_wan.models.bundled import BUNDLED_MODELS, bundled_model_path
from pyramidal_wan.models.caching import CACHES, check_cache, check_folder_mag_ratios
from pyramidal_wan.models.loading import quiet_loading
from pyramidal_wan.models.lora import load_loras, parse_lora_spec
from pyramidal_wan.models.presets import get_transformer_config
from pyramidal_wan.models.tiny_decoder import load_folder_decoder
from pyramidal_wan.models.wan_family import describe_experts, expert_evaluations
from pyramidal_wan.pipelines import PyramidalWanPipeline, SamplingPlan, export_video, plan_from_folder
from pyramidal_wan.pipelines.export import DEFAULT_FPS
from pyramidal_wan.pipelines.parallel import MODES, check_context_parallel, enable_context_parallel
from pyramidal_wan.pipelines.planning import check_fits_in_memory
from pyramidal_wan.pyramid.config import SAMPLERS
from pyramidal_wan.pyramid.sampling import SOLVERS
from pyramidal_wan.utils.io import check_output_file

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
OUT_SUFFIX = ".mp4"


def register(subparsers) -> None:
    """Add the `generate` sub-command."""
    add_arguments(
        subparsers.add_parser(
            "generate",
            help="generate a video from a prompt (MP4, optionally GIF)",
            description=(
                "Generate one video from a text prompt (and, for image-to-video models, an --image) with a "
                "diffusers Wan model folder and its "
                "pyramid_config.json. Unset options take the model's defaults (size, schedule, sampler, "
                "CFG). "
                "Schedules list steps per stage from the lowest resolution to the highest: 20-20-10 "
                "(multi-step), 2-2-1 (few-step), 0-0-50 (plain Wan)."
            ),
        )
    )


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The arguments of `generate` (also used to build a namespace programmatically)."""
    parser.add_argument("prompt", help="the text prompt")
    parser.add_argument(
        "--image",
        type=image_file,
        help="conditioning image, the video's first frame: needed by image-to-video models (Wan2.1-I2V, "
        "Wan2.2-I2V), optional for Wan2.2-TI2V-5B, refused by text-to-video models",
    )
    parser.add_argument(
        "--model",
        help="diffusers Wan pipeline folder (default: the best bundled model of "
        + ", ".join(BUNDLED_MODELS)
        + ")",
    )
    parser.add_argument("--schedule", help="steps per stage, lowest resolution first (default: the model's)")
    parser.add_argument("--sampler", help=f"{' or '.join(SAMPLERS)} (default: the model's)")
    parser.add_argument(
        "--solver",
        help=f"within-stage solver of multistep sampling: {' or '.join(SOLVERS)} (default: the model's, "
        "else euler)",
    )
    parser.add_argument(
        "--cache",
        help=f"a diffusers step cache for multistep sampling, fresh at every stage change: "
        f"{' or '.join(CACHES)} (magcache: ratios from `calibrate-magcache` in the model folder; "
        "default: none)",
    )
    parser.add_argument(
        "--decoder",
        help="a tiny decoder folder (TinyWanDecoder, e.g. models/toy/tiny-decoder) that decodes in place of "
        "the VAE's decoder: several times cheaper, slightly less sharp (default: the VAE's)",
    )
    parser.add_argument(
        "--guidance-scale",
        help="standard CFG scale, 1 = off (default: the model's for multistep, 1 for fewstep); a PPF model "
        "takes one per stage, lowest resolution first, e.g. 3,4,5",
    )
    parser.add_argument(
        "--lora",
        action="append",
        default=[],
        metavar="FILE[:WEIGHT]",
        help="a LoRA (.safetensors or a folder with pytorch_lora_weights.safetensors) applied with WEIGHT "
        "(default 1); repeatable, LoRAs stack",
    )
    parser.add_argument("--negative-prompt", help="unconditional text for CFG (default: the model's)")
    parser.add_argument("--num-frames", type=positive_int, help="pixel frames, 4k+1 (default: the model's)")
    parser.add_argument("--height", type=positive_int, help="pixel height (default: the model's)")
    parser.add_argument("--width", type=positive_int, help="pixel width (default: the model's)")
    parser.add_argument("--seed", type=int, default=0, help="seed of all sampling noise (default 0)")
    parser.add_argument(
        "--out", type=output_path, default="video.mp4", help="output .mp4 path (default video.mp4)"
    )
    parser.add_argument("--gif", action="store_true", help="also write a GIF beside the MP4")
    parser.add_argument(
        "--fps", type=positive_float, default=DEFAULT_FPS, help=f"frame rate (default {DEFAULT_FPS:g})"
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the transformer blocks, one graph per stage (pays from the second video on)",
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--dtype", default="float32", help=f"{' or '.join(DTYPES)} (default float32)")
    parser.add_argument("--threads", type=positive_int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument(
        "--context-parallel",
        choices=MODES,
        help="split every transformer forward over the GPUs of a torchrun launch (Ulysses or ring "
        "attention); rank 0 writes the video",
    )
    parser.set_defaults(func=run)
    return parser


def build_parser_namespace(prompt: str, **options) -> argparse.Namespace:
    """A `generate` namespace with its defaults, e.g. `build_parser_namespace("a red circle", seed=1)`."""
    args = add_arguments(argparse.ArgumentParser()).parse_args([prompt])
    for key, value in options.items():
        if not hasattr(args, key):
            raise KeyError(f"generate has no option {key!r}")
        setattr(args, key, value)
    return args


def resolve_device(name: str) -> torch.device:
    """A torch device from --device; CUDA must be present."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InputError(f"unknown device {name!r}; use cpu or cuda") from None
    if device.type not in ("cpu", "cuda"):
        raise InputError(f"device {name!r} is not supported; use cpu or cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda was given but no CUDA GPU is available; use --device cpu")
    return device


def resolve_dtype(name: str) -> torch.dtype:
    """The transformer and text-encoder dtype from --dtype."""
    if name not in DTYPES:
        raise InputError(f"unknown dtype {name!r}; use {' or '.join(DTYPES)}")
    return DTYPES[name]


def parse_guidance_scale(value) -> float | tuple[float, ...] | None:
    """--guidance-scale: a number, or comma-separated numbers (one per PPF stage, lowest resolution first)."""
    if value is None or isinstance(value, (int, float, tuple)):
        return value
    try:
        scales = tuple(float(w) for w in str(value).split(","))
    except ValueError:
        scales = (math.nan,)
    if not all(math.isfinite(w) for w in scales):
        raise InputError(
            f"--guidance-scale {value!r} must be a finite number, or one number per stage like 3,4,5"
        )
    return scales[0] if len(scales) == 1 else scales


def describe_guidance(plan: SamplingPlan) -> str:
    """'no CFG', 'CFG 5', or per PPF stage 'CFG 3/4/5 (lowest resolution first)'."""
    if plan.stage_guidance is not None:
        return f"CFG {'/'.join(f'{w:g}' for w in plan.stage_guidance)} (lowest resolution first)"
    return f"CFG {plan.guidance_scale:g}" if plan.guidance_scale > 1 else "no CFG"


def run(args: argparse.Namespace) -> int:
    """Entry point of `pyramidal-wan generate`."""
    out = Path(args.out)
    if out.suffix.lower() != OUT_SUFFIX:
        raise InputError(f"--out {out} must end in {OUT_SUFFIX} (add --gif for a GIF beside it)")
    for path in (out, out.with_suffix(".gif")) if args.gif else (out,):
        check_output_file(path)
    device, dtype = resolve_device(args.device), resolve_dtype(args.dtype)
    folder = Path(args.model) if args.model is not None else bundled_model_path()
    loras = [parse_lora_spec(spec) for spec in args.lora]
    guidance_scale = parse_guidance_scale(args.guidance_scale)
    # Every setting is checked against the folder's configs before any weights are loaded; the pipeline
    # samples this plan.
    plan = plan_from_folder(
        folder,
        args.num_frames,
        args.height,
        args.width,
        args.schedule,
        args.sampler,
        guidance_scale,
        solver=args.solver,
        image=args.image is not None,
    )
    check_cache(args.cache, plan.sampler, plan.kind, plan.guidance_scale)
    if args.cache == "magcache":
        check_folder_mag_ratios(folder, plan.steps)
    decoder = load_folder_decoder(folder, args.decoder)
    num_frames, height, width = plan.geometry[0].pixel
    check_fits_in_memory(plan, get_transformer_config(str(folder))["out_channels"], device)
    world_size, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    if args.context_parallel is not None:
        heads = get_transformer_config(str(folder))["num_attention_heads"]
        check_context_parallel(plan, args.context_parallel, world_size, heads)
        if device.type != "cuda":
            raise InputError(
                "--context-parallel needs GPUs (diffusers picks each rank's device from torch.accelerator): "
                "add --device cuda"
            )
        torch.distributed.init_process_group("nccl")
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    quiet_loading()
    # The VAE stays float32, as Wan runs it; --dtype applies to the transformer and the text encoder.
    dtypes = {"transformer": dtype, "transformer_2": dtype, "text_encoder": dtype}  # both A14B experts
    pipe = PyramidalWanPipeline.from_pretrained(folder, torch_dtype=dtypes)
    load_loras(pipe, loras)
    pipe.set_decoder(decoder)
    pipe.to(device)
    if args.context_parallel is not None:
        for expert in (pipe.transformer, pipe.transformer_2):
            if expert is not None:
                enable_context_parallel(expert, args.context_parallel, world_size)
    if args.compile:
        pipe.compile_blocks()
    started = time.perf_counter()
    video = pipe(
        args.prompt,
        negative_prompt=args.negative_prompt,
        plan=plan,
        cache=args.cache,
        generator=torch.Generator().manual_seed(args.seed),
        image=args.image,
    ).frames[0]
    seconds = time.perf_counter() - started
    if args.context_parallel is not None:
        torch.distributed.destroy_process_group()
    if rank != 0:  # every rank holds the same video
        return 0
    written = export_video(video, out, fps=args.fps, gif=args.gif)

    ppf_config = pipe.ppf.pyramid_config if pipe.ppf is not None else None
    flops = plan_flops(pipe.transformer.config, plan, pipe.default_max_sequence_length(), ppf_config)
    cfg = describe_guidance(plan)
    print(f"wrote {' and '.join(str(p) for p in written)}")
    print(
        f"  {num_frames} frames of {height}x{width} at {args.fps:g} fps, "
        f"schedule {plan.schedule} ({describe_sampler(plan)}, {cfg}), seed {args.seed}"
    )
    print(
        f"  {seconds:.1f} s on {device.type} ({args.dtype}); {flops['total_tflops']:.4g} TFLOPs in "
        f"{flops['forwards']} transformer forwards"
    )
    if pipe.transformer_2 is not None:
        grid = pipe.get_grid(plan, pipe.pyramid_config.pyramid())
        counts = expert_evaluations(grid, plan.sampler, pipe.config.boundary_ratio)
        print(f"  experts per stage (lowest resolution first): {describe_experts(counts)}")
    return 0


def describe_sampler(plan) -> str:
    """The sampler of a plan in words: "fewstep", "multistep" (Euler) or "multistep dpm2m"."""
    return (
        plan.sampler
        if plan.sampler == "fewstep" or plan.solver == "euler"
        else f"{plan.sampler} {plan.solver}"
    )
