"""`pyramidal-wan report`: the HTML page and Markdown tables of the results, from `evaluate` records."""

from __future__ import annotations

import argparse
from pathlib import Path

from pyramidal_wan.cli.options import non_negative_int, output_path, positive_int
from pyramidal_wan.errors import InputError
from pyramidal_wan.eval.report import MAX_SAMPLE_PROMPTS


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "report",
        help="write the results page (HTML) and tables (Markdown) from evaluate records",
        description="Summarise `pyramidal-wan evaluate` records into OUT/index.html (tables, quality vs "
        "TFLOPs, seconds per stage, sample GIFs, the pyramid view of one prompt that evaluate made) and "
        "OUT/results.md (the same tables, deterministic given the records); no model runs here. "
        "--markdown also writes the Markdown there (e.g. docs/results.md); --screenshot PNG captures the "
        "page with headless Chromium.",
    )
    parser.add_argument(
        "--results", nargs="+", required=True, metavar="RECORDS", help="JSON-lines records of evaluate"
    )
    parser.add_argument(
        "--speedups",
        nargs="+",
        default=[],
        metavar="RECORDS",
        help="also table these records as quality against cost, next to base 0-0-50 "
        "(benchmarks/speedup_pareto.py)",
    )
    parser.add_argument("--out", type=output_path, default="report", help="output folder (default report/)")
    parser.add_argument(
        "--markdown", type=output_path, help="also write the Markdown tables here (e.g. docs/results.md)"
    )
    parser.add_argument(
        "--samples",
        type=non_negative_int,
        default=MAX_SAMPLE_PROMPTS,
        help=f"prompts in the sample grid (default {MAX_SAMPLE_PROMPTS})",
    )
    parser.add_argument(
        "--pyramid-run",
        metavar="MODEL[:SCHEDULE]",
        help="the run whose pyramid view (made by evaluate) the page shows (default: the first with one)",
    )
    parser.add_argument("--no-pyramid", action="store_true", help="leave out the pyramid section")
    parser.add_argument("--screenshot", metavar="PNG", help="also save a full-page screenshot (Chromium)")
    parser.add_argument(
        "--width", type=positive_int, default=1280, help="screenshot width in CSS pixels (default 1280)"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pyramidal_wan.eval.page_check import INSTALL_HINT, find_chromium, screenshot
    from pyramidal_wan.eval.report import write_report

    if args.samples < 0:
        raise InputError(f"--samples must be >= 0, got {args.samples}")
    if args.screenshot is not None:
        if not args.screenshot.endswith(".png"):
            raise InputError(f"--screenshot {args.screenshot} must be a .png file")
        if find_chromium() is None:
            raise InputError(f"--screenshot needs Chromium: {INSTALL_HINT}")
    paths = write_report(
        args.results,
        args.out,
        markdown=args.markdown,
        pyramid=not args.no_pyramid,
        pyramid_run=args.pyramid_run,
        max_prompts=args.samples,
        speedups=args.speedups,
    )
    print(
        f"wrote {paths['html']} and {paths['markdown']}" + (f" and {args.markdown}" if args.markdown else "")
    )
    if args.screenshot is not None:
        print(f"wrote {screenshot(paths['html'], Path(args.screenshot), width=args.width)}")
    return 0
