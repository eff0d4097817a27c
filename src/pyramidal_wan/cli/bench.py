"""`pyramidal-wan bench`: per-stage forward latency, pipeline time per schedule, and the WanPipeline anchor.

All numbers come from one run on one device:

- the median latency of one batch-1 transformer forward at every stage (`eval.latency`);
- the wall-clock time of the whole pipeline call for each schedule, end to end and split into its parts
  (`eval.timing`: text encoding, each stage's sampling, the VAE decode) next to the seconds inside the
  transformer's forwards; the sampling time (the call up to the latents) and its speed-up over the first
  schedule (the 0-0-N reference) against the speed-up the transformer FLOPs predict (`eval.flops`, meta
  device): their ratio shows how much time outside the transformer eats the savings; and the end-to-end
  speed-up, decode included;
- our 0-0-N pipeline against diffusers' `WanPipeline` (two batch-1 calls per step) on the same
  components, steps and guidance. Ours batches cond and uncond into one call on accelerators only
  (`models.denoiser.batched_cfg_pays`): on one CPU core batching saves nothing (the same matrix products,
  no launch overhead to amortise), and glibc's allocator, which hands large freed buffers back to the OS,
  makes every call fault them in again, which costs the batch-2 buffers more: measured here with batched
  CFG, ours / WanPipeline was 1.04-1.19 by default and 0.99-1.01 with
  `MALLOC_MMAP_THRESHOLD_=4000000000 MALLOC_TRIM_THRESHOLD_=4000000000`.

Without --model, random-weight components are built: the `BENCH_TRANSFORMER` below with the toy VAE and
text stack, at 17x128x128. Why that size: the toy model (width 128) at 17x64x64 has 8 tokens at the lowest
stage, where a CPU forward is mostly fixed per-call overhead (about 7 GFLOP/s against 20-40 at full
resolution), so no CPU could turn its FLOPs savings into time. At 17x128x128 the stages have 1280 / 192 /
32 tokens; width 384 (6 heads of 64) keeps even the 32-token stage's matrix products large enough to run
near the full-resolution rate, as the full-size model's stages do on a GPU (546 tokens at width 1536).
Measured on one core of the shared 2-core CPU: width 256 kept 89-92% of the FLOPs-predicted 20-20-10
speed-up, width 384 99-101%. Two blocks keep 0-0-50 with CFG at about 20-35 s there.

A patch-pyramid (PPF, METHOD.md 9) model folder, or random components with `--kind patch`, is timed with its
PPF stage kernels: every stage forward takes the full-resolution latent, patchified with the stage's kernel
(the stage picked by a timestep in the middle of its interval), and the FLOPs predictions count the PPF
stage forwards. Its 0-0-N rows and the WanPipeline comparison run the base transformer, PPF's stage 0.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel

from pyramidal_wan.cli.generate import resolve_device, resolve_dtype
from pyramidal_wan.cli.options import finite_float, positive_int
from pyramidal_wan.errors import InputError
from pyramidal_wan.eval.flops import FEW_STEP_MAX_STEPS, default_cfg, plan_flops
from pyramidal_wan.eval.latency import cast_like_from_pretrained, forward_latency_ms, synchronize
from pyramidal_wan.eval.timing import DECODE, StageTimer, parts_table
from pyramidal_wan.models.checkpoint import pyramid_config_or_plain
from pyramidal_wan.models.denoiser import TIMESTEP_SCALE, batched_cfg_pays
from pyramidal_wan.models.loading import quiet_loading
from pyramidal_wan.models.ppf import PPFTransformer
from pyramidal_wan.models.presets import count_parameters, get_transformer_config
from pyramidal_wan.models.tiny_decoder import load_folder_decoder, load_tiny_decoder
from pyramidal_wan.pipelines import PyramidalWanPipeline, SamplingPlan
from pyramidal_wan.pyramid import PyramidConfig, get_ppf_segments, is_baseline_schedule, parse_schedule
from pyramidal_wan.pyramid.config import KINDS
from pyramidal_wan.pyramid.sampling import BASELINE_SHIFT
from pyramidal_wan.toy.text import TEXT_DIM, build_text_encoder, build_tokenizer, text_encoder_config
from pyramidal_wan.toy.vae import VAE_ARCHITECTURE, build_vae

# The toy architecture widened to 384 (6 heads of 64) with 2 blocks: see the module docstring.
BENCH_TRANSFORMER: dict[str, Any] = {
    **get_transformer_config("toy-wan"),
    "num_attention_heads": 6,
    "attention_head_dim": 64,
    "ffn_dim": 1536,
    "num_layers": 2,
}
BENCH_SIZE = (17, 128, 128)  # frames, height, width (toy VAE: latent 16x5x32x32)
DEFAULT_SCHEDULES = ("0-0-50", "20-20-10", "0-0-2", "2-2-1")
PROMPT = "a red circle moving left on a dark blue background"
# Efficiency target of the issue: a pyramidal multi-step schedule keeps >= 90% of its FLOPs speed-up.
TARGET_EFFICIENCY = 0.9


def register(subparsers) -> None:
    """Add the `bench` sub-command."""
    parser = subparsers.add_parser(
        "bench",
        help="time transformer forwards per stage and the pipeline per schedule",
        description=(
            "Median forward latency per pyramid stage, pipeline time per schedule with measured and "
            "FLOPs-predicted speed-ups over the first schedule, and our 0-0-N pipeline against diffusers' "
            "WanPipeline, all in one run. Without --model, random-weight components are built "
            "(a width-384, 2-block Wan transformer at 17x128x128 by default). Schedules with every stage "
            f"<= {FEW_STEP_MAX_STEPS} steps run the few-step sampler without CFG; others multi-step with CFG."
        ),
    )
    parser.add_argument("--model", help="a diffusers Wan pipeline folder (default: random-weight components)")
    parser.add_argument(
        "--transformer",
        help="for random components: a preset name or config.json (default: the width-384 bench config)",
    )
    parser.add_argument(
        "--kind",
        choices=KINDS,
        default=None,
        help="for random components: resolution pyramid or patch pyramid (PPF) (default resolution); a model "
        "folder is timed as the kind its pyramid_config.json says",
    )
    parser.add_argument("--num-frames", type=positive_int, help="pixel frames (default: 17, or the model's)")
    parser.add_argument("--height", type=positive_int, help="pixel height (default: 128, or the model's)")
    parser.add_argument("--width", type=positive_int, help="pixel width (default: 128, or the model's)")
    parser.add_argument(
        "--schedule",
        action="extend",
        nargs="+",
        default=None,
        help=f"schedules to time, the first is the reference (default {' '.join(DEFAULT_SCHEDULES)})",
    )
    parser.add_argument(
        "--guidance-scale", type=finite_float, default=5.0, help="CFG of multi-step rows (default 5)"
    )
    parser.add_argument(
        "--wan-steps",
        type=positive_int,
        default=3,
        help="steps of the 0-0-N vs WanPipeline comparison (default 3)",
    )
    parser.add_argument(
        "--wan-repeats", type=positive_int, default=3, help="interleaved timed runs of that pair (default 3)"
    )
    parser.add_argument(
        "--repeats", type=positive_int, default=1, help="timed runs of each pipeline (default 1)"
    )
    parser.add_argument(
        "--forward-repeats", type=positive_int, default=5, help="timed forwards per stage (default 5)"
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--dtype", default="float32", help="float32 or bfloat16 (default float32)")
    parser.add_argument(
        "--threads",
        type=positive_int,
        default=1,
        help="torch CPU threads (default 1: steady on a shared machine)",
    )
    parser.add_argument(
        "--compile",
        nargs="?",
        const="inductor",
        default=None,
        metavar="BACKEND",
        help="also time every schedule with the transformer's repeated blocks compiled by torch.compile "
        "(BACKEND, default inductor), after one untimed video per schedule compiles each stage's graph",
    )
    parser.add_argument(
        "--decoder",
        help="a tiny decoder folder (TinyWanDecoder) that decodes in place of the VAE's decoder: the decode "
        "and end-to-end columns then time it (default: the VAE's)",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(func=run)


def build_text_stack(text_dim: int, seed: int = 0):
    """The toy tokenizer and a random UMT5 encoder of width `text_dim` (the toy encoder for width 32)."""
    tokenizer = build_tokenizer()
    if text_dim == TEXT_DIM:
        return tokenizer, build_text_encoder(seed)
    from transformers import UMT5EncoderModel

    config = text_encoder_config(len(tokenizer))
    config.d_model, config.d_ff, config.num_layers = text_dim, 2 * text_dim, 1
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return tokenizer, UMT5EncoderModel(config).eval().requires_grad_(False)


def build_random_pipeline(
    transformer_config=None, seed: int = 0, kind: str = "resolution"
) -> PyramidalWanPipeline:
    """A pipeline of random-weight components: a Wan transformer, the toy VAE and a toy text stack.

    `kind` "patch" wraps the transformer in Kronecker-initialised PPF stage layers (3 stages, METHOD.md 9).
    """
    config = get_transformer_config(BENCH_TRANSFORMER if transformer_config is None else transformer_config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = WanTransformer3DModel.from_config(config).eval()
    pyramid_config = PyramidConfig()
    if kind == "patch":
        transformer = PPFTransformer(transformer, PyramidConfig(kind="patch"))
        pyramid_config = transformer.pyramid_config
    tokenizer, text_encoder = build_text_stack(config["text_dim"], seed)
    frames, height, width = BENCH_SIZE
    return PyramidalWanPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=build_vae(seed).eval(),
        transformer=transformer,
        pyramid_config=pyramid_config,
        default_num_frames=frames,
        default_height=height,
        default_width=width,
        default_negative_prompt="",
    )


def sampling_for(steps: tuple[int, ...], guidance_scale: float) -> dict[str, Any]:
    """How a bench row samples: few-step without CFG (all stages <= 4 steps), else multi-step with CFG."""
    if default_cfg(steps):
        return {"sampler": "multistep", "guidance_scale": guidance_scale}
    return {"sampler": "fewstep", "guidance_scale": 1.0}


def wan_pipeline_call(
    pipe: PyramidalWanPipeline, size: dict[str, int], steps: int, guidance_scale: float
) -> Callable[[], object]:
    """One call of diffusers' `WanPipeline` on `pipe`'s components (plain Wan sampling, `steps` steps, CFG
    with the model's negative prompt, seed 0, latents out): the anchor our 0-0-N is timed against."""
    wan = WanPipeline(
        tokenizer=pipe.tokenizer,
        text_encoder=pipe.text_encoder,
        vae=pipe.vae,
        transformer=pipe.transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=BASELINE_SHIFT),
    )
    wan.set_progress_bar_config(disable=True)
    return lambda: wan(
        PROMPT,
        negative_prompt=pipe.config.default_negative_prompt,
        **size,
        num_inference_steps=steps,
        guidance_scale=guidance_scale,
        generator=torch.Generator().manual_seed(0),
        output_type="latent",
        max_sequence_length=pipe.default_max_sequence_length(),
    )


def time_seconds(fn: Callable[[], object], device: torch.device) -> float:
    """Wall-clock seconds of one call of `fn`, with the device queue drained before and after."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else 0.5 * (ordered[middle - 1] + ordered[middle])


def compute_bench(pipe: PyramidalWanPipeline, args: argparse.Namespace, device: torch.device) -> dict:
    """Measure everything (see the module docstring) and return the report as a JSON-ready dict."""
    config = pipe.config
    size = {
        "num_frames": config.default_num_frames if args.num_frames is None else args.num_frames,
        "height": config.default_height if args.height is None else args.height,
        "width": config.default_width if args.width is None else args.width,
    }
    num_stages = pipe.pyramid_config.num_stages
    schedules = list(args.schedule or DEFAULT_SCHEDULES)
    rows = []  # validate every schedule before timing anything
    for text in schedules:
        steps = parse_schedule(text, num_stages)
        sampling = sampling_for(steps, args.guidance_scale)
        plan = pipe.check_inputs(PROMPT, None, **size, schedule=steps, **sampling)
        rows.append({"schedule": text, **sampling, "plan": plan})
    wan_schedule = "-".join(["0"] * (num_stages - 1) + [str(args.wan_steps)])
    wan_plan = pipe.check_inputs(
        PROMPT, None, **size, schedule=wan_schedule, guidance_scale=args.guidance_scale
    )
    full = pipe.check_inputs(PROMPT, None, **size, schedule="-".join(["1"] * num_stages), sampler="multistep")
    text_len = pipe.default_max_sequence_length()
    ppf_config = pipe.ppf.pyramid_config if pipe.ppf is not None else None
    stages = stage_latencies(pipe, full, text_len, args.forward_repeats)

    def ours(plan: SamplingPlan, output_type: str = "latent", callback=None) -> Callable[[], object]:
        return lambda: pipe(
            PROMPT,
            plan=plan,
            generator=torch.Generator().manual_seed(0),
            output_type=output_type,
            callback=callback,
        )

    theirs = wan_pipeline_call(pipe, size, args.wan_steps, args.guidance_scale)

    # Untimed warm-up of every code path and shape: CFG and no-CFG calls at every stage, the decode, and
    # WanPipeline.
    ones = "-".join(["1"] * num_stages)
    warm_ups = [
        pipe.check_inputs(PROMPT, None, **size, schedule=ones, sampler=sampler, guidance_scale=scale)
        for sampler, scale in (("multistep", args.guidance_scale), ("fewstep", 1.0))
    ]
    for warm_up in (*(ours(plan, "pt") for plan in warm_ups), theirs):
        warm_up()
    timed: dict[str, list[tuple[dict, float]]] = {row["schedule"]: [] for row in rows}
    with StageTimer(pipe) as timer:
        for _ in range(args.repeats):  # rounds, so that every schedule sees the same machine load
            for row in rows:
                call = ours(row["plan"], "pt", timer.callback)
                synchronize(device)
                timer.start()
                call()
                parts = timer.stop(device)
                timed[row["schedule"]].append((parts, sum(timer.transformer.values())))
    # The 0-0-N pair alternates, and its ratio is the median of per-pair ratios: a shared machine's load
    # drifts, and each pair sees nearly the same load.
    ours_wan = ours(wan_plan)
    pairs = [(time_seconds(ours_wan, device), time_seconds(theirs, device)) for _ in range(args.wan_repeats)]

    reference = None
    report_rows = []
    for row in rows:
        plan = row["plan"]
        flops = plan_flops(pipe.transformer.config, plan, text_len, ppf_config)
        runs = sorted(timed[row["schedule"]], key=lambda run: sum(run[0].values()))
        parts, transformer_s = runs[(len(runs) - 1) // 2]  # the run of the median end-to-end time
        total_s = sum(parts.values())
        time_s = total_s - parts[DECODE]
        reference = reference or {"tflops": flops["total_tflops"], "seconds": time_s, "total": total_s}
        measured = reference["seconds"] / time_s
        predicted = reference["tflops"] / flops["total_tflops"]
        report_rows.append(
            {
                "schedule": plan.schedule,
                "sampler": plan.sampler,
                "guidance_scale": plan.guidance_scale,
                "pyramidal": not is_baseline_schedule(plan.steps),
                "forwards": flops["forwards"],
                "tflops": flops["total_tflops"],
                "seconds": time_s,
                "speedup": measured,
                "predicted_speedup": predicted,
                "efficiency": measured / predicted,
                "parts": parts,
                "total_seconds": total_s,
                "transformer_seconds": transformer_s,
                "speedup_with_decode": reference["total"] / total_s,
            }
        )
    ours_s, theirs_s = _median([a for a, _ in pairs]), _median([b for _, b in pairs])
    compiled = None
    if args.compile:  # last: compiling changes the blocks WanPipeline's anchor shares
        compiled = time_compiled(pipe, [(row["schedule"], ours(row["plan"])) for row in rows], args, device)
        for row in report_rows:
            seconds = compiled["seconds"][row["schedule"]]
            row["compiled_seconds"] = seconds
            row["compile_speedup"] = row["seconds"] / seconds
    transformer_config = get_transformer_config(dict(pipe.transformer.config))
    return {
        "model": args.model or "random weights",
        "kind": pipe.pyramid_config.kind,
        "transformer": {
            "width": transformer_config["num_attention_heads"] * transformer_config["attention_head_dim"],
            "layers": transformer_config["num_layers"],
            "parameters": count_parameters(pipe.transformer),
        },
        "size": [size["num_frames"], size["height"], size["width"]],
        "text_len": text_len,
        "device": str(device),
        "dtype": str(pipe.transformer.dtype).removeprefix("torch."),
        "threads": torch.get_num_threads(),
        "repeats": args.repeats,
        "stages": stages,
        "schedules": report_rows,
        "decode_seconds": _median([r["parts"][DECODE] for r in report_rows]),
        "wan_pipeline": {
            "schedule": wan_plan.schedule,
            "guidance_scale": wan_plan.guidance_scale,
            "cfg_batched": batched_cfg_pays(device),
            "ours_seconds": ours_s,
            "wan_pipeline_seconds": theirs_s,
            "ratio": _median([a / b for a, b in pairs]),
            "ratios": [a / b for a, b in pairs],
        },
        "compiled": compiled,
    }


def time_compiled(
    pipe: PyramidalWanPipeline,
    calls: list[tuple[str, Callable[[], object]]],
    args: argparse.Namespace,
    device: torch.device,
) -> dict:
    """Sampling seconds of each (schedule, call) with the transformer's repeated blocks compiled.

    The first call of each schedule is untimed: it compiles one graph per stage shape it meets (its
    seconds are reported as the compile cost). The timed calls then count dynamo's recompiles, which
    must stay 0: a recompile in steady state would mean a graph per call rather than per stage shape.
    """
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    pipe.compile_blocks(backend=args.compile)
    warm_up_start = time.perf_counter()
    for _, call in calls:
        call()
    synchronize(device)
    compile_seconds = time.perf_counter() - warm_up_start
    graphs = counters["stats"]["unique_graphs"]
    recompiles_before = sum(counters["recompiles"].values())
    seconds = {
        schedule: _median([time_seconds(call, device) for _ in range(args.repeats)])
        for schedule, call in calls
    }
    return {
        "backend": args.compile,
        "seconds": seconds,
        "first_videos_seconds": compile_seconds,
        "graphs": graphs,
        "recompiles_after_first_videos": sum(counters["recompiles"].values()) - recompiles_before,
    }


def stage_latencies(pipe: PyramidalWanPipeline, plan, text_len: int, repeats: int) -> list[dict]:
    """Latency of one batch-1 forward per stage of `plan`, with the stage's latent and token count.

    A resolution pyramid forwards the stage's latent; a PPF model forwards the full-resolution latent with
    the stage's kernel, picked by a timestep in the middle of the stage's interval (METHOD.md 9).
    """
    channels = pipe.transformer.config.out_channels
    segments = get_ppf_segments(pipe.pyramid_config.clean_ends)
    rows = []
    for index, geometry in enumerate(plan.geometry):
        model, latent, timing = pipe.transformer, geometry.latent, {}
        if pipe.ppf is not None:  # match_base: the PPF layers follow the base after `pipe.to(...)`
            model, latent = pipe.ppf.match_base(), plan.geometry[0].latent
            timing["timestep"] = TIMESTEP_SCALE * segments[index].sigma(0.5)
        latency = forward_latency_ms(
            model, (channels, *latent), text_len, warmup=1, repeats=repeats, **timing
        )
        rows.append({"stage": index, "latent": list(latent), "tokens": geometry.num_tokens, **latency})
    return rows


def _table(headers: list[str], rows: list[list[str]]) -> str:
    """Plain right-aligned text table."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(headers, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)


def format_bench(report: dict) -> str:
    """The report as text: a header, the stage table, the schedule table, decode, WanPipeline, targets."""
    t = report["transformer"]
    frames, height, width = report["size"]
    kind = " (patch pyramid, PPF stage kernels)" if report["kind"] == "patch" else ""
    header = (
        f"{report['model']}{kind}: Wan transformer width {t['width']}, {t['layers']} blocks, "
        f"{t['parameters'] / 1e6:.2f} M parameters; {frames}x{height}x{width}, "
        f"{report['text_len']} text tokens; {report['device']} {report['dtype']}, "
        f"{report['threads']} thread(s), {report['repeats']} timed run(s)"
    )
    stage_rows = [
        [
            str(s["stage"]),
            "x".join(map(str, s["latent"])),
            str(s["tokens"]),
            f"{s['median']:.2f}",
            f"{s['p10']:.2f}-{s['p90']:.2f}",
        ]
        for s in report["stages"]
    ]
    schedule_rows = [
        [
            r["schedule"],
            r["sampler"],
            f"{r['guidance_scale']:g}" if r["guidance_scale"] > 1 else "-",
            str(r["forwards"]),
            f"{r['tflops']:.4g}",
            f"{r['seconds']:.2f}",
            f"{r['speedup']:.2f}x",
            f"{r['predicted_speedup']:.2f}x",
            f"{r['efficiency']:.0%}",
            f"{r['speedup_with_decode']:.2f}x",
        ]
        for r in report["schedules"]
    ]
    compiled = report.get("compiled")
    if compiled:
        for row, cells in zip(report["schedules"], schedule_rows):
            cells += [f"{row['compiled_seconds']:.2f}", f"{row['compile_speedup']:.2f}x"]
    parts_header, parts_rows = parts_table(
        [{**r, "name": [r["schedule"]], "stage_seconds": r["parts"]} for r in report["schedules"]], digits=2
    )
    wan = report["wan_pipeline"]
    lines = [
        header,
        "",
        _table(["stage", "latent", "tokens", "ms/forward", "p10-p90"], stage_rows),
        "",
        _table(
            [
                "schedule",
                "sampler",
                "CFG",
                "forwards",
                "TFLOPs",
                "sampling s",
                "speed-up",
                "FLOPs-predicted",
                "measured/predicted",
                "end-to-end",
                *(["compiled s", "compiled/eager"] if compiled else []),
            ],
            schedule_rows,
        ),
        "sampling s = the call up to the latents (text and stages); end-to-end: the speed-up of the whole "
        "call, decode included",
        "",
        _table(["schedule", *parts_header], parts_rows),
        "seconds of each part of the call (stage 0 = full resolution; decode: the last update and the VAE); "
        "transformer: inside its forwards, part of the stages' time",
        "",
        f"ours {wan['schedule']} (CFG {wan['guidance_scale']:g}, "
        f"{'cond+uncond in one batched call' if wan['cfg_batched'] else 'two batch-1 calls per step'}): "
        f"{wan['ours_seconds']:.2f} s; diffusers WanPipeline (two batch-1 calls per step): "
        f"{wan['wan_pipeline_seconds']:.2f} s (medians); ours / WanPipeline = {wan['ratio']:.3f} "
        f"(median of {len(wan['ratios'])} interleaved pairs: {', '.join(f'{r:.3f}' for r in wan['ratios'])})",
    ]
    if compiled:
        lines.append(
            f"torch.compile of the repeated blocks (backend {compiled['backend']}): {compiled['graphs']} "
            f"graphs compiled by the first video of each schedule ({compiled['first_videos_seconds']:.1f} s "
            f"for those videos); recompiles after them: {compiled['recompiles_after_first_videos']}; "
            "compiled s: sampling seconds compiled, compiled/eager: the speed-up over the eager column"
        )
    for row in report["schedules"]:
        if row["pyramidal"] and row["sampler"] == "multistep":
            met = "met" if row["efficiency"] >= TARGET_EFFICIENCY else "NOT met"
            lines.append(
                f"target: {row['schedule']} keeps {row['efficiency']:.0%} of its FLOPs-predicted speed-up "
                f"(>= {TARGET_EFFICIENCY:.0%}): {met}"
            )
    met = "met" if wan["ratio"] <= 1.0 else "NOT met"
    lines.append(f"target: ours at {wan['schedule']} at least as fast as WanPipeline: {met}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Entry point of `pyramidal-wan bench`."""
    for name in ("repeats", "forward_repeats", "wan_steps", "wan_repeats", "threads"):
        if getattr(args, name) < 1:
            raise InputError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.compile is not None:
        backends = torch._dynamo.list_backends(exclude_tags=())
        if args.compile not in backends:
            raise InputError(
                f"--compile {args.compile}: not a torch.compile backend; use one of {', '.join(backends)}"
            )
    if args.model is not None and args.transformer is not None:
        raise InputError("--transformer builds random components; it cannot be combined with --model")
    if args.model is not None and args.kind is not None and Path(args.model).is_dir():
        saved = pyramid_config_or_plain(args.model).kind
        if saved != args.kind:
            raise InputError(
                f"--kind {args.kind}: {args.model} is a {saved}-pyramid model (its pyramid_config.json); "
                "a model folder is timed as saved, --kind picks the kind of random components"
            )
    device, dtype = resolve_device(args.device), resolve_dtype(args.dtype)
    # A tiny decoder is checked against the VAE (the folder's, or the random components' toy VAE) first.
    if args.model is not None:
        decoder = load_folder_decoder(args.model, args.decoder)
    else:
        decoder = None if args.decoder is None else load_tiny_decoder(args.decoder, VAE_ARCHITECTURE)
    torch.set_num_threads(args.threads)
    quiet_loading()
    if args.model is not None:
        pipe = PyramidalWanPipeline.from_pretrained(
            Path(args.model), torch_dtype={"transformer": dtype, "text_encoder": dtype}
        )
    else:
        pipe = build_random_pipeline(args.transformer, kind=args.kind or "resolution")
        cast_like_from_pretrained(pipe.transformer if pipe.ppf is None else pipe.ppf, dtype)
    pipe.set_decoder(decoder)
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    report = compute_bench(pipe, args, device)
    print(json.dumps(report, indent=2) if args.json else format_bench(report))
    return 0
