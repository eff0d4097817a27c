"""`pyramidal-wan report`: the HTML page and Markdown tables of the results, from `evaluate` records."""

from __future__ import annotations

import argparse
from pathlib import Path

from pyramidal_wan.errors import InputError
from pyramidal_wan.eval.report import MAX_SAMPLE_PROMPTS


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "report",
        help="write the results page (HTML) and tables (Markdown) from evaluate records",
        description="Summarise `pyramidal-wan evaluate` records into OUT/index.html (tables, quality vs "
        "TFLOPs, seconds per stage, sample GIFs, the pyramid of one prompt) and OUT/results.md (the same "
        "tables, deterministic given the records). --markdown also writes the Markdown there (e.g. "
        "docs/results.md); --screenshot PNG captures the page with headless Chromium.",
    )
    parser.add_argument(
        "--results", nargs="+", required=True, metavar="RECORDS", help="JSON-lines records of evaluate"
    )
    parser.add_argument("--out", default="report", help="output folder (default report/)")
    parser.add_argument("--markdown", help="also write the Markdown tables here (e.g. docs/results.md)")
    parser.add_argument(
        "--samples",
        type=int,
        default=MAX_SAMPLE_PROMPTS,
        help=f"prompts in the sample grid (default {MAX_SAMPLE_PROMPTS})",
    )
    parser.add_argument(
        "--pyramid-run",
        metavar="MODEL[:SCHEDULE]",
        help="the run whose model shows the pyramid (default: the first pyramidal run with its folder)",
    )
    parser.add_argument("--no-pyramid", action="store_true", help="skip the pyramid section (no sampling)")
    parser.add_argument("--device", default="cpu", help="device for the pyramid section's sample")
    parser.add_argument("--screenshot", metavar="PNG", help="also save a full-page screenshot (Chromium)")
    parser.add_argument(
        "--width", type=int, default=1280, help="screenshot width in CSS pixels (default 1280)"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pyramidal_wan.cli.generate import resolve_device
    from pyramidal_wan.eval.page_check import INSTALL_HINT, find_chromium, screenshot
    from pyramidal_wan.eval.report import write_report

    if args.samples < 0:
        raise InputError(f"--samples must be >= 0, got {args.samples}")
    if args.screenshot is not None:
        if not args.screenshot.endswith(".png"):
            raise InputError(f"--screenshot {args.screenshot} must be a .png file")
        if find_chromium() is None:
            raise InputError(f"--screenshot needs Chromium: {INSTALL_HINT}")
    device = resolve_device(args.device)
    paths = write_report(
        args.results,
        args.out,
        markdown=args.markdown,
        pyramid=not args.no_pyramid,
        pyramid_run=args.pyramid_run,
        max_prompts=args.samples,
        device=str(device),
    )
    print(
        f"wrote {paths['html']} and {paths['markdown']}" + (f" and {args.markdown}" if args.markdown else "")
    )
    if args.screenshot is not None:
        print(f"wrote {screenshot(paths['html'], Path(args.screenshot), width=args.width)}")
    return 0
