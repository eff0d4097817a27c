"""`pyramidal-wan calibrate-magcache`: measure a model's MagCache magnitude ratios per stage."""

from __future__ import annotations

import argparse
from pathlib import Path

from pyramidal_wan.cli.options import output_path, positive_int

DEFAULT_PROMPT = "a red circle moving left on a dark blue background"


def register(subparsers) -> None:
    """Add the `calibrate-magcache` sub-command."""
    parser = subparsers.add_parser(
        "calibrate-magcache",
        help="measure a model's MagCache magnitude ratios per stage (for --cache magcache)",
        description=(
            "Sample the prompts once at a multi-step schedule without a cache and write, for every stage, "
            "the ratio of each step's residual magnitude to the previous step's (diffusers' MagCache "
            "calibration, on the conditional branch) to MODEL/magcache.json, where `generate`, `evaluate` "
            "and the pipeline read it. Runs at other step counts interpolate a stage's ratios."
        ),
    )
    parser.add_argument("--model", required=True, help="a pipeline folder (plain or pyramidal)")
    parser.add_argument(
        "--schedule",
        help="a multi-step schedule that samples every stage later runs use (default: the model's default "
        "schedule if it is multi-step, else 10 steps per stage)",
    )
    parser.add_argument(
        "--prompt", action="append", help=f"a calibration prompt, repeatable (default: {DEFAULT_PROMPT!r})"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the calibration run (default 0)")
    parser.add_argument("--out", type=output_path, help="the ratios file (default: MODEL/magcache.json)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--dtype", default="float32", help="float32 or bfloat16 (default float32)")
    parser.add_argument("--threads", type=positive_int, help="torch CPU threads (default: torch's)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Entry point of `pyramidal-wan calibrate-magcache`."""
    import torch

    from pyramidal_wan.cli.generate import resolve_device, resolve_dtype
    from pyramidal_wan.models.caching import MAG_RATIOS_FILE, check_cache, save_mag_ratios
    from pyramidal_wan.models.checkpoint import pyramid_config_or_plain
    from pyramidal_wan.models.loading import quiet_loading
    from pyramidal_wan.pipelines import PyramidalWanPipeline, plan_from_folder
    from pyramidal_wan.utils.io import check_output_file

    folder = Path(args.model)
    schedule = args.schedule
    if schedule is None:
        config = pyramid_config_or_plain(folder)
        multistep = config.sampler == "multistep"
        schedule = config.default_schedule if multistep else "-".join(["10"] * config.num_stages)
    plan = plan_from_folder(folder, schedule=schedule, sampler="multistep")
    check_cache("magcache", plan.sampler, plan.kind)
    out = Path(args.out) if args.out else folder / MAG_RATIOS_FILE
    check_output_file(out)
    device, dtype = resolve_device(args.device), resolve_dtype(args.dtype)
    if args.threads:
        torch.set_num_threads(args.threads)
    quiet_loading()
    dtypes = {"transformer": dtype, "text_encoder": dtype}
    pipe = PyramidalWanPipeline.from_pretrained(folder, torch_dtype=dtypes)
    pipe.to(device)
    ratios = pipe.calibrate_mag_ratios(
        args.prompt or [DEFAULT_PROMPT], plan=plan, generator=torch.Generator().manual_seed(args.seed)
    )
    save_mag_ratios(out, ratios, plan.schedule)
    for stage in sorted(ratios, reverse=True):
        values = ", ".join(f"{r:.3f}" for r in ratios[stage])
        print(f"stage {stage}: {len(ratios[stage])} steps, ratios {values}")
    print(f"wrote {out}")
    return 0
