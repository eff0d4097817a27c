"""`pyramidal-wan flops`: FLOPs per stage and per schedule, counted on the meta device.

CFG: by default each schedule row is counted the way the paper counts it, with CFG (two forwards per step)
for multi-step schedules and without for few-step ones (every stage <= 4 steps, e.g. 2-2-1, 0-0-2).
`--cfg` or `--no-cfg` forces one choice on every row.

`--kind patch` counts a patch-pyramid (PPF) model (METHOD.md 9): the full-resolution latent at every stage,
patchified with the stage's kernel; a model folder whose pyramid_config.json says kind "patch" is counted so
by default.

A two-expert model (Wan2.2 A14B presets, or a folder with `transformer_2`) also gets, per schedule, which
expert runs each stage's evaluations: the high-noise one where 1000 sigma >= 1000 boundary_ratio. Multi-step
rows walk the multi-step grid of the model's pyramid, few-step rows the few-step grid. Presets of the Wan
family count at their own VAE compression and default size (models.wan_family.VARIANTS).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pyramidal_wan.cli.options import positive_int
from pyramidal_wan.errors import InputError
from pyramidal_wan.eval.flops import FEW_STEP_MAX_STEPS, default_cfg, ppf_schedule_flops, schedule_flops
from pyramidal_wan.models.checkpoint import load_pyramid_config
from pyramidal_wan.models.loading import read_model_index
from pyramidal_wan.models.presets import get_transformer_config
from pyramidal_wan.models.text import folder_max_sequence_length
from pyramidal_wan.models.wan_family import (
    VARIANTS,
    describe_experts,
    expert_evaluations,
    expert_split,
    variant_video_settings,
)
from pyramidal_wan.pipelines.planning import video_settings
from pyramidal_wan.pyramid import get_fewstep_grid, get_multistep_grid
from pyramidal_wan.pyramid.config import KINDS, PyramidConfig
from pyramidal_wan.pyramid.geometry import parse_schedule, stage_geometry

# Without --schedule: plain Wan with the paper's 50 steps, at every stage count.
DEFAULT_STEPS = 50


def register(subparsers) -> None:
    """Add the `flops` sub-command."""
    parser = subparsers.add_parser(
        "flops",
        help="count transformer FLOPs per stage and per sampling schedule",
        description=(
            "Count Wan transformer FLOPs per pyramid stage and per schedule on the meta device (no weights, "
            "no memory). Schedules list steps from the lowest resolution to the highest: 20-20-10 is 20 low, "
            "20 mid, 10 full; 0-0-50 is plain Wan. Multi-step rows double for CFG; few-step rows (every "
            f"stage <= {FEW_STEP_MAX_STEPS} steps) do not, unless --cfg/--no-cfg says otherwise."
        ),
    )
    parser.add_argument("--model", default="wan2.1-1.3b", help="preset name, config.json or model folder")
    size_default = "default: a model folder's own (model_index.json), else Wan2.1's"
    parser.add_argument("--num-frames", type=positive_int, help=f"pixel frames, 4k+1 ({size_default} 81)")
    parser.add_argument("--height", type=positive_int, help=f"pixel height ({size_default} 448)")
    parser.add_argument("--width", type=positive_int, help=f"pixel width ({size_default} 832)")
    parser.add_argument(
        "--stages", type=positive_int, help="number of pyramid stages (default: the model folder's, else 3)"
    )
    parser.add_argument(
        "--schedule",
        action="extend",
        nargs="+",
        default=None,
        help="one or more schedules (repeat the flag or list them), lowest resolution first; the first is "
        f"the speed-up reference (default 0-...-0-{DEFAULT_STEPS}, plain Wan)",
    )
    parser.add_argument(
        "--cfg",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="count every row with (--cfg) or without (--no-cfg) classifier-free guidance; "
        "default: CFG for multi-step rows only",
    )
    parser.add_argument(
        "--kind",
        choices=KINDS,
        default=None,
        help="resolution pyramid or patch pyramid (PPF); default: the model folder's pyramid_config.json "
        "kind, else resolution",
    )
    parser.add_argument(
        "--text-len",
        type=positive_int,
        default=None,
        help="text tokens (default: the model folder's tokenizer limit, at most Wan's 512)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser.set_defaults(func=run)


def stage_layout(model: str, stages: int | None, kind: str | None) -> PyramidConfig:
    """The stage layout counted: a model folder's `pyramid_config.json` (stages, factors, kind), else the
    default 3-stage resolution pyramid; --stages / --kind, when given and different, replace it."""
    saved = load_pyramid_config(model) if Path(model).is_dir() else None
    saved = PyramidConfig() if saved is None else saved
    num_stages = saved.num_stages if stages is None else stages
    kind = saved.kind if kind is None else kind
    if (num_stages, kind) == (saved.num_stages, saved.kind):
        return saved
    return PyramidConfig(num_stages=num_stages, kind=kind)


def compute_report(args: argparse.Namespace) -> dict:
    """Per-stage sizes and FLOPs and one row per schedule, as a JSON-ready dict."""
    config = get_transformer_config(args.model)
    layout = stage_layout(args.model, args.stages, args.kind)
    kind, num_stages = layout.kind, layout.num_stages
    # The text tokens every forward cross-attends to: at toy widths their K/V projections weigh as much as
    # the video tokens, so counting Wan's 512 for the toy's 32 would hide most of the pyramid's saving.
    text_len = folder_max_sequence_length(args.model) if args.text_len is None else args.text_len
    # PPF stages have the resolution pyramid's token grids, so the same geometry checks the size.
    # A pipeline folder's own size and VAE (the toy VAE compresses 4x, not Wan's 8x); given sizes win.
    folder = args.model if (Path(args.model) / "model_index.json").is_file() else None
    if folder is None and args.model in VARIANTS:
        video = variant_video_settings(args.model, args.num_frames, args.height, args.width)
    else:
        video = video_settings(folder, args.num_frames, args.height, args.width)
    boundary_ratio = model_boundary_ratio(args.model, folder)
    if boundary_ratio is not None and kind == "patch":
        raise InputError(f"{args.model} has two experts; a patch pyramid (PPF) has one transformer")
    geometry = stage_geometry(
        num_stages=num_stages, factors=layout.factors, patch_size=config["patch_size"], **video
    )
    schedules = args.schedule or ["-".join(["0"] * (num_stages - 1) + [str(DEFAULT_STEPS)])]
    parsed = [parse_schedule(text, num_stages) for text in schedules]  # validate all before counting
    shapes = [(config["in_channels"], *g.latent) for g in geometry]
    rows = []
    for steps in parsed:
        by_stage = steps[::-1]  # schedule strings run lowest first; stage index 0 is full resolution
        cfg = default_cfg(steps) if args.cfg is None else args.cfg
        if kind == "patch":
            result = ppf_schedule_flops(config, shapes[0], by_stage, cfg, layout, text_len)
        else:
            result = schedule_flops(config, shapes, by_stage, cfg, text_len)
        rows.append(
            {
                "schedule": "-".join(str(n) for n in steps),
                "cfg": cfg,
                "forwards": result["forwards"],
                "total_tflops": result["total_tflops"],
                "stage_tflops": [s["tflops"] for s in result["stages"]],  # index 0 = full resolution
            }
        )
        if boundary_ratio is not None:
            sampler = "multistep" if default_cfg(steps) else "fewstep"  # the paper's rows, as for CFG
            pyramid = layout.pyramid()  # the model's stage boundaries decide each stage's noise levels
            grid = (get_multistep_grid if sampler == "multistep" else get_fewstep_grid)(pyramid, steps)
            rows[-1]["experts"] = list(expert_evaluations(grid, sampler, boundary_ratio))
    reference = rows[0]["total_tflops"]
    for row in rows:
        row["speedup"] = reference / row["total_tflops"]
    stages = [
        {
            "stage": s["stage"],
            "pixel": list(geometry[0].pixel if kind == "patch" else g.pixel),
            "latent": list(s["latent"][1:]),
            "tokens": s["tokens"],
            "tflops_per_forward": s["tflops_per_forward"],
        }
        for s, g in zip(result["stages"], geometry)
    ]
    return {
        "model": str(args.model),
        "kind": kind,
        "boundary_ratio": boundary_ratio,
        "size": [video["num_frames"], video["height"], video["width"]],
        "text_len": text_len,
        "stages": stages,
        "schedules": rows,
        "total_tflops": rows[0]["total_tflops"],
    }


def model_boundary_ratio(model: str, folder: str | None) -> float | None:
    """Where a two-expert model switches experts (None: one transformer): a preset's, or a folder's."""
    if folder is not None:
        return expert_split(read_model_index(folder), folder)
    return VARIANTS[model].boundary_ratio if model in VARIANTS else None


def _fmt_tflops(value: float) -> str:
    """One decimal at Wan2.1 scale (thousands of TFLOPs), four significant digits at toy scale."""
    return f"{value:,.1f}" if value >= 10 else f"{value:.4g}"


def _table(headers: list[str], rows: list[list[str]]) -> str:
    """Plain right-aligned text table."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(headers, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)


def format_report(report: dict) -> str:
    """The report as two text tables: stages, then schedules."""
    frames, height, width = report["size"]
    stage_rows = [
        [
            str(s["stage"]),
            "x".join(map(str, s["pixel"])),
            "x".join(map(str, s["latent"])),
            f"{s['tokens']:,}",
            _fmt_tflops(s["tflops_per_forward"]),
        ]
        for s in report["stages"]
    ]
    schedule_rows = [
        [
            r["schedule"],
            "yes" if r["cfg"] else "no",
            str(r["forwards"]),
            " / ".join(_fmt_tflops(t) for t in r["stage_tflops"][::-1]),
            f"2 x {_fmt_tflops(r['total_tflops'] / 2)}" if r["cfg"] else _fmt_tflops(r["total_tflops"]),
            f"{r['speedup']:.2f}x",
        ]
        + ([describe_experts(r["experts"])] if "experts" in r else [])
        for r in report["schedules"]
    ]
    schedule_headers = ["schedule", "CFG", "forwards", "TFLOPs per stage (low..full)", "total TFLOPs"]
    schedule_headers.append("speed-up")
    if report["boundary_ratio"] is not None:
        schedule_headers.append("experts per stage (low..full)")
    title = f"{report['model']} at {frames}x{height}x{width}, {report['text_len']} text tokens"
    if report["kind"] == "patch":
        title += ", patch pyramid (PPF: full-resolution latent, per-stage patch kernels)"
    if report["boundary_ratio"] is not None:
        title += (
            f", two experts (high-noise at sigma >= {report['boundary_ratio']:g}; each forward counts as one "
            "expert's)"
        )
    return "\n".join(
        [
            title,
            "",
            _table(["stage", "pixels", "latent", "tokens", "TFLOPs/forward"], stage_rows),
            "",
            _table(schedule_headers, schedule_rows),
        ]
    )


def run(args: argparse.Namespace) -> int:
    """Entry point of `pyramidal-wan flops`."""
    report = compute_report(args)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_report(report))
    return 0
