"""The reproduction report: tables, figures and sample grids from `pyramidal-wan evaluate` records.

Every number comes from the records: ToyBench scores through `toybench.summarize`, TFLOPs, seconds per
video and per part (text encoding, each stage, decoding) from the fields `evaluate` stores in each record,
VBench dimension scores from the `vbench` records. `write_report` writes into one folder:

- `index.html`: a static page (no script, no network) with the tables, the figures, the sample grid and
  the pyramid made visible (the view `evaluate` made with `eval.pyramid_view`, copied in);
- `results.md`: the same tables as Markdown, a pure function of the records (no timestamps, no paths,
  fixed number formats, runs in the order the records list them), so a copy kept in docs/ can be
  regenerated with one command and diffed;
- `figures/`: quality against TFLOPs (log x, one point per model x schedule) and seconds per video by part,
  each as PNG and SVG (matplotlib, Agg);
- `samples/`: copies of the sample GIFs that `evaluate` saved, so the folder is self-contained.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from pyramidal_wan.errors import InputError
from pyramidal_wan.eval.figures import log_x_axis, save_figure
from pyramidal_wan.eval.pyramid_view import VIEW_FIGURES, VIEW_FILE
from pyramidal_wan.eval.timing import order_parts, parts_table
from pyramidal_wan.eval.toybench import (
    BOOTSTRAP_RESAMPLES,
    BOOTSTRAP_SEED,
    QUALITY_DIMS,
    SEMANTIC_DIMS,
    group_records,
    read_all_records,
    summarize,
)
from pyramidal_wan.utils.io import atomic_path

VAE_CEILING_PREFIX = "vae-ceiling:"
DIMENSION_HEADERS = {
    "colour": "colour",
    "shape": "shape",
    "pattern": "pattern",
    "direction": "direction",
    "count": "count",
    "temporal_consistency": "temporal",
    "motion_smoothness": "motion",
    "sharpness": "sharpness",
    "background_stability": "background",
    "frechet": "Frechet",
}
MAX_SAMPLE_PROMPTS = 4  # columns of the sample grid
SPEEDUP_REFERENCE = ("base", "0-0-50")  # (model, schedule) every speed-up is measured against
QUALITY_TOLERANCE = 2.0  # ToyBench points below the reference that still count as "as good"


# ---------------------------------------------------------------------------------------------------------
# Records to run summaries


def load_records(paths: Sequence[str | os.PathLike]) -> list[dict]:
    """Every record of the given JSON-lines files (with their part files), each tagged with its file's folder
    (`_base`, for the sample paths it names)."""
    records = []
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise InputError(f"--results {path} is not a file; pass the JSON-lines records of `evaluate`")
        for record in read_all_records(path):
            records.append({**record, "_base": str(path.parent)})
    if not records:
        raise InputError(f"no records in {', '.join(map(str, paths))}; run `pyramidal-wan evaluate` first")
    return records


def display_name(model: str) -> str:
    """'VAE ceiling (NAME)' for the records of `evaluate --vae-ceiling NAME`, else the model name."""
    if model.startswith(VAE_CEILING_PREFIX):
        return f"VAE ceiling ({model[len(VAE_CEILING_PREFIX) :]})"
    return model


def _mean(values: Iterable) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def _first(values: Iterable):
    return next((v for v in values if v is not None), None)


def toy_runs(records: Sequence[dict]) -> list[dict]:
    """One summary per (model, schedule) of the ToyBench records, in the order the records first name them.

    Keys: model, schedule, model_path, n, tflops, semantic, quality, total, heldout_total, total_se and
    heldout_total_se (their bootstrap standard errors over prompts), dims (overall dimension scores),
    seconds (mean per video) and stage_seconds (mean per video of each part; parts missing from older
    records are left out), transformer_seconds (mean per video inside transformer forwards; None in older
    records), devices and batch_sizes (sorted distinct values).
    """
    runs = []
    toy = [r for r in records if r.get("suite", "toy") == "toy"]
    for (model, schedule), group in group_records(toy).items():
        summary = summarize(group)
        overall, heldout = summary["overall"], summary.get("heldout") or {}
        parts: dict[str, list[float]] = {}
        for record in group:
            for part, seconds in (record.get("stage_seconds") or {}).items():
                parts.setdefault(part, []).append(seconds)
        runs.append(
            {
                "model": model,
                "schedule": schedule,
                "model_path": _first(r.get("model_path") for r in group),
                # the folder of the pyramid view evaluate made for this run (None: none was made)
                "pyramid_view": _first(
                    str(Path(r.get("_base", "")) / r["pyramid_view"]) for r in group if r.get("pyramid_view")
                ),
                "n": len(group),
                "tflops": _first(r.get("tflops") for r in group),
                "sampler": _first(r.get("sampler") for r in group),  # None in older records
                "semantic": overall["semantic"],
                "quality": overall["quality"],
                "total": overall["total"],
                "heldout_total": heldout.get("total"),
                "total_se": overall["total_se"],
                "heldout_total_se": heldout.get("total_se"),
                "dims": {d: overall[d] for d in (*SEMANTIC_DIMS, *QUALITY_DIMS)},
                "frechet_distance": overall.get("frechet_distance"),
                "seconds": _mean(r.get("seconds") for r in group),
                # a part is averaged over the records that have it; all of a run's records have the same parts
                "stage_seconds": {p: float(np.mean(v)) for p, v in order_parts(parts).items()},
                "transformer_seconds": _mean(r.get("transformer_seconds") for r in group),
                "devices": sorted({r["device"] for r in group if r.get("device")}),
                "batch_sizes": sorted({r["batch_size"] for r in group if r.get("batch_size")}),
            }
        )
    return runs


def vbench_runs(records: Sequence[dict]) -> list[dict]:
    """The `evaluate --suite vbench` records (one per model x schedule), the last one of each run kept."""
    runs: dict[tuple, dict] = {}
    for record in records:
        if record.get("suite") == "vbench":
            runs[(record["model"], record["schedule"])] = record
    return list(runs.values())


# ---------------------------------------------------------------------------------------------------------
# Tables


def _fmt(value, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _fmt_tflops(value) -> str:
    return "-" if value is None else f"{value:.4g}"


def _fmt_with_se(value, se) -> str:
    """'75.3 ± 2.6': a score and its standard error in one cell, so tables stay narrow."""
    return "-" if value is None else f"{value:.1f} ± {se:.1f}"


def main_table(runs: Sequence[dict]) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the main table: model, schedule, TFLOPs, semantic, quality, total and held-out
    total (each ± its bootstrap standard error), seconds per video."""
    header = [
        "model",
        "schedule",
        "TFLOPs",
        "semantic",
        "quality",
        "total ± se",
        "held-out total ± se",
        "s / video",
    ]
    rows = [
        [
            display_name(r["model"]),
            r["schedule"],
            _fmt_tflops(r["tflops"]),
            _fmt(r["semantic"]),
            _fmt(r["quality"]),
            _fmt_with_se(r["total"], r["total_se"]),
            _fmt_with_se(r["heldout_total"], r["heldout_total_se"]),
            _fmt(r["seconds"], 2),
        ]
        for r in runs
    ]
    return header, rows


def dimension_table(runs: Sequence[dict]) -> tuple[list[str], list[list[str]]]:
    """(header, rows): every ToyBench dimension, overall, per run, and the Frechet distance itself: its
    score saturates at 0 far from the data, where the distance still tells runs apart."""
    header = ["model", "schedule", *DIMENSION_HEADERS.values(), "FD"]
    rows = [
        [
            display_name(r["model"]),
            r["schedule"],
            *(_fmt(r["dims"][d]) for d in DIMENSION_HEADERS),
            _fmt(r.get("frechet_distance")),
        ]
        for r in runs
    ]
    return header, rows


def _timed(runs: Sequence[dict]) -> list[dict]:
    """The pipeline runs with per-part seconds (a VAE ceiling is no pipeline call)."""
    return [r for r in runs if r["stage_seconds"] and not r["model"].startswith(VAE_CEILING_PREFIX)]


def latency_table(runs: Sequence[dict]) -> tuple[list[str], list[list[str]]]:
    """(header, rows): seconds per video of each part of the pipeline call, their total and the seconds
    inside transformer forwards (`eval.timing.parts_table`), per run that recorded them."""
    timed = [{**r, "name": [display_name(r["model"]), r["schedule"]]} for r in _timed(runs)]
    header, rows = parts_table(timed)
    return ["model", "schedule", *header], rows


def vbench_table(runs: Sequence[dict]) -> tuple[list[str], list[list[str]]]:
    """(header, rows): VBench dimension scores x 100 per run, with TFLOPs and seconds per video."""
    dims = list(dict.fromkeys(d for r in runs for d in r["dimensions"]))
    header = ["model", "schedule", "TFLOPs", "s / video", "videos", *dims]
    rows = [
        [
            r["model"],
            r["schedule"],
            _fmt_tflops(r.get("tflops")),
            _fmt(r.get("seconds"), 2),
            str(r.get("videos", "-")),
            *(_fmt(None if r["dimensions"].get(d) is None else 100 * r["dimensions"][d], 2) for d in dims),
        ]
        for r in runs
    ]
    return header, rows


def speedup_runs(runs: Sequence[dict], reference: tuple[str, str] = SPEEDUP_REFERENCE) -> list[dict]:
    """The runs with their cost and quality against the reference run (base 0-0-50): flops_x and time_x
    (the reference's TFLOPs and seconds per video over the run's, seconds end to end: text, stages, decode)
    and delta (ToyBench total points against it)."""
    base = next((r for r in runs if (r["model"], r["schedule"]) == reference), None)
    if base is None:
        found = ", ".join(f"{r['model']}:{r['schedule']}" for r in runs) or "none"
        raise InputError(
            f"the speed-up records have no {reference[0]}:{reference[1]} run to measure against (found: "
            f"{found}); run benchmarks/speedup_pareto.py"
        )

    def ratio(key: str, run: dict) -> float | None:  # None where a record lacks the field
        return base[key] / run[key] if base[key] and run[key] else None

    return [
        {
            **r,
            "flops_x": ratio("tflops", r),
            "time_x": ratio("seconds", r),
            "delta": r["total"] - base["total"],
        }
        for r in runs
    ]


def speedup_table(runs: Sequence[dict]) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the speed-up table: quality against cost per model x schedule (`speedup_runs`)."""
    header = ["model", "run", "total ± se", "Δ base", "TFLOPs", "FLOPs x", "s / video", "time x", "videos"]
    rows = [
        [
            r["model"],
            r["schedule"],
            _fmt_with_se(r["total"], r["total_se"]),
            f"{r['delta']:+.1f}",
            _fmt_tflops(r["tflops"]),
            _fmt(r["flops_x"], 2),
            _fmt(r["seconds"], 2),
            _fmt(r["time_x"], 2),
            str(r["n"]),
        ]
        for r in runs
    ]
    return header, rows


def speedup_findings(runs: Sequence[dict], reference: tuple[str, str] = SPEEDUP_REFERENCE) -> list[str]:
    """The speed-up targets in words: the cheapest multi-step run within QUALITY_TOLERANCE points of the
    reference, and the end-to-end speed-up of every few-step run, smallest first."""
    others = [r for r in runs if (r["model"], r["schedule"]) != reference]
    multistep = [r for r in others if r["sampler"] != "fewstep" and r["flops_x"] is not None]
    good = [r for r in multistep if r["delta"] >= -QUALITY_TOLERANCE]
    ref = f"{reference[0]} {reference[1]}"
    if good:
        best = max(good, key=lambda r: r["flops_x"])
        lines = [
            f"Cheapest multi-step run within {QUALITY_TOLERANCE:g} points of {ref}: {best['model']} "
            f"{best['schedule']}, {best['flops_x']:.2f}x fewer FLOPs, {best['time_x']:.2f}x less CPU time "
            f"({best['delta']:+.1f} points)."
        ]
    else:
        lines = [f"No multi-step run is within {QUALITY_TOLERANCE:g} points of {ref}."]
    few = sorted(
        (r for r in others if r["sampler"] == "fewstep" and r["time_x"] is not None),
        key=lambda r: r["time_x"],
    )
    if few:  # every one: the end-to-end speed-up comes with a decoder's quality cost, so show the trade
        runs_text = "; ".join(
            f"{r['model']} {r['schedule']} {r['time_x']:.2f}x ({r['delta']:+.1f} points)" for r in few
        )
        lines.append(f"Few-step end-to-end speed-ups (text + stages + decode): {runs_text}.")
    return lines


SPEEDUP_NOTE = (
    "Runs: schedule, then a non-default within-stage solver (:dpm2m), a step cache (+NAME) and a tiny "
    "decoder in place of the VAE's (+ its folder name: +tiny-decoder, +tiny-decoder-small). FLOPs x and "
    "time x: base 0-0-50's TFLOPs and seconds per video (end to end: text, stages, decode; every row timed "
    "in one run of benchmarks/speedup_pareto.py, in interleaved rounds) over the run's. Δ base: ToyBench "
    "total points against base 0-0-50 on the same prompts and seeds."
)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub Markdown table; text columns left-aligned, number columns right-aligned."""
    number = r"-?[\d.e+]+"
    numeric = [
        i >= 2 and all(re.fullmatch(rf"{number}( ± {number})?|-", row[i]) for row in rows)
        for i in range(len(header))
    ]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---:" if n else "---" for n in numeric) + "|",
        *("| " + " | ".join(row) + " |" for row in rows),
    ]
    return "\n".join(lines)


def _settings_note(runs: Sequence[dict]) -> str:
    devices = sorted({d for r in runs for d in r["devices"]})
    batches = sorted({b for r in runs for b in r["batch_sizes"]})
    if not devices:
        return "Seconds per video were not recorded."
    batch = ", ".join(map(str, batches)) or "-"
    return (
        f"Seconds per video: wall-clock time of the generating call divided by its batch size (batch "
        f"{batch}) on {', '.join(devices)}, as `evaluate` recorded it; compare them only within one run of "
        "`evaluate`."
    )


def toybench_note(runs: Sequence[dict]) -> str:
    """What the main table's numbers are, and where its seconds were measured."""
    counts = ", ".join(str(n) for n in sorted({r["n"] for r in runs}))
    return (
        f"Videos per row: {counts}. Scores are ToyBench (0-100; total = mean of semantic and quality; "
        "held-out total: the captions with held-out colour-shape-direction triples). ± se: the bootstrap "
        f"standard error of a total over prompts ({BOOTSTRAP_RESAMPLES} resamples, seed {BOOTSTRAP_SEED}), "
        "the noise of drawing this many prompts. TFLOPs: transformer FLOPs of one video (CFG counted). "
        + _settings_note(runs)
    )


def markdown_report(runs: Sequence[dict], vbench: Sequence[dict] = (), speedups: Sequence[dict] = ()) -> str:
    """The Markdown tables of the report: a pure function of the run summaries (`speedups`: the runs of the
    speed-up benchmark, `speedup_runs`)."""
    sections = [
        "<!-- Generated by `pyramidal-wan report` from `pyramidal-wan evaluate` records; regenerate, do not "
        "edit. -->",
        "# Results",
    ]
    if runs:
        sections += [
            "## ToyBench: models x schedules",
            markdown_table(*main_table(runs)),
            toybench_note(runs),
            "## ToyBench dimensions",
            markdown_table(*dimension_table(runs)),
        ]
        header, rows = latency_table(runs)
        if rows:
            sections += [
                "## Seconds per video by part",
                markdown_table(header, rows),
                "Stage 0 is full resolution; text is prompt encoding, decode the last update and the VAE; "
                "transformer: the seconds inside transformer forwards, part of the stages' time.",
            ]
    if speedups:
        sections += [
            "## Speed-ups: quality against cost",
            markdown_table(*speedup_table(speedups)),
            " ".join(speedup_findings(speedups)),
            SPEEDUP_NOTE,
        ]
    if vbench:
        sections += [
            "## VBench",
            markdown_table(*vbench_table(vbench)),
            "Dimension scores x 100 as the vbench package returns them (no VBench total: its normalisation "
            "is not applied here).",
        ]
    return "\n\n".join(sections) + "\n"


# ---------------------------------------------------------------------------------------------------------
# Figures (matplotlib, Agg; no pyplot state)


def plot_quality_vs_tflops(runs: Sequence[dict], out_dir: Path) -> list[Path]:
    """Semantic, quality and total against TFLOPs per video (log x), one labelled point per model x schedule;
    a VAE ceiling is drawn as a horizontal line."""
    from matplotlib.figure import Figure

    keys = (("total", "ToyBench total"), ("semantic", "semantic"), ("quality", "quality"))
    fig = Figure(figsize=(13, 4.2))
    axes = fig.subplots(1, 3, sharex=True)
    points = [r for r in runs if r["tflops"] and r["tflops"] > 0]
    models = list(dict.fromkeys(r["model"] for r in points))
    colours = {m: f"C{i % 10}" for i, m in enumerate(models)}
    for ax, (key, label) in zip(axes, keys):
        for run in points:
            ax.scatter(run["tflops"], run[key], color=colours[run["model"]], s=40, zorder=3)
            ax.annotate(run["schedule"], (run["tflops"], run[key]), textcoords="offset points", xytext=(4, 4))
        for run in runs:
            if run["model"].startswith(VAE_CEILING_PREFIX):
                ax.axhline(run[key], color="0.4", linestyle="--", linewidth=1)
        log_x_axis(ax, [r["tflops"] for r in points])
        ax.set_xlabel("TFLOPs per video")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    handles = [axes[0].scatter([], [], color=colours[m], label=m) for m in models]
    if any(r["model"].startswith(VAE_CEILING_PREFIX) for r in runs):
        handles.append(axes[0].axhline(np.nan, color="0.4", linestyle="--", label="VAE ceiling"))
    if handles:
        fig.legend(handles=handles, loc="upper center", ncol=min(len(handles), 6), frameon=False)
    fig.subplots_adjust(top=0.85, wspace=0.3)
    return save_figure(fig, out_dir, "quality_vs_tflops")


def plot_stage_latency(runs: Sequence[dict], out_dir: Path) -> list[Path]:
    """Seconds per video of each part (text, stages from the lowest resolution, decode) as stacked horizontal
    bars, one per model x schedule."""
    from matplotlib.figure import Figure

    timed = _timed(runs)
    parts = list(order_parts({p: None for r in timed for p in r["stage_seconds"]}))
    fig = Figure(figsize=(9, 1.2 + 0.45 * max(len(timed), 1)))
    ax = fig.subplots()
    labels = [f"{display_name(r['model'])}  {r['schedule']}" for r in timed]
    left = np.zeros(len(timed))
    for i, part in enumerate(parts):
        widths = np.array([r["stage_seconds"].get(part, 0.0) for r in timed])
        ax.barh(labels, widths, left=left, label=part, color=f"C{i % 10}")
        left += widths
    ax.invert_yaxis()  # first run on top, as in the tables
    ax.set_xlabel("seconds per video")
    if parts:
        ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), fontsize="small", ncol=min(len(parts), 6))
    ax.grid(True, axis="x", alpha=0.3)
    return save_figure(fig, out_dir, "stage_latency")


# ---------------------------------------------------------------------------------------------------------
# Sample grid


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "x"


def sample_grid(records: Sequence[dict], out_dir: Path, max_prompts: int = MAX_SAMPLE_PROMPTS) -> dict:
    """Copy the sample GIFs `evaluate` saved into `out_dir/samples/` and lay them out per model x schedule.

    Columns are the first `max_prompts` (prompt index, seed) pairs with a sample in any run, so every row
    shows the same prompts and seeds. Returns {"columns": [(index, seed, caption)], "rows": [(model,
    schedule, [relative path or None per column])]}.
    """
    found: dict[tuple, dict[tuple, Path]] = {}
    captions: dict[tuple, str] = {}
    for record in records:
        if record.get("suite", "toy") != "toy" or not record.get("sample"):
            continue
        source = Path(record["_base"]) / record["sample"]
        if not source.is_file():
            continue
        column = (record["prompt_index"], record["seed"])
        captions.setdefault(column, record["caption"])
        found.setdefault((record["model"], record["schedule"]), {})[column] = source
    columns = sorted(captions)[:max_prompts]
    rows = []
    for (model, schedule), sources in found.items():
        cells = []
        for column in columns:
            source = sources.get(column)
            if source is None:
                cells.append(None)
                continue
            relative = Path("samples") / _slug(model) / _slug(schedule) / f"p{column[0]:03d}-s{column[1]}.gif"
            with atomic_path(out_dir / relative) as tmp:
                shutil.copyfile(source, tmp)
            cells.append(relative.as_posix())
        rows.append((model, schedule, cells))
    return {"columns": [(i, s, captions[(i, s)]) for i, s in columns], "rows": rows}


# ---------------------------------------------------------------------------------------------------------
# HTML

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 14px; }
table { display: block; overflow-x: auto; max-width: 100%; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: right; }
th { background: #f3f3f3; }
td:first-child, td:nth-child(2), th:first-child, th:nth-child(2) { text-align: left; }
figure { margin: 1em 0; }
figcaption, .note { color: #555; font-size: 13px; max-width: 60em; }
img.figure { max-width: 100%; }
table.samples td { text-align: center; vertical-align: top; }
table.samples img { width: 128px; image-rendering: pixelated; }
table.samples th { font-weight: normal; font-size: 12px; max-width: 160px; }
"""


def _html_table(header: Sequence[str], rows: Sequence[Sequence[str]], css_class: str = "") -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    cls = f' class="{css_class}"' if css_class else ""
    return f"<table{cls}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def html_figure(stem: str, caption: str, folder: str = "figures") -> str:
    return (
        f'<figure><img class="figure" src="{folder}/{stem}.png" alt="{html.escape(stem)}">'
        f'<figcaption>{html.escape(caption)} (<a href="{folder}/{stem}.svg">SVG</a>)</figcaption></figure>'
    )


def _html_samples(grid: dict) -> str:
    if not grid["rows"]:
        return '<p class="note">No samples: run `evaluate` with --samples N (N > 0) to save some.</p>'
    head = "<th>model</th><th>schedule</th>" + "".join(
        f"<th>#{i} seed {s}<br>{html.escape(c)}</th>" for i, s, c in grid["columns"]
    )
    body = ""
    for model, schedule, cells in grid["rows"]:
        tds = "".join(
            f'<td><img src="{html.escape(c)}" alt="sample"></td>' if c else "<td>-</td>" for c in cells
        )
        body += f"<tr><td>{html.escape(display_name(model))}</td><td>{html.escape(schedule)}</td>{tds}</tr>"
    return f'<table class="samples"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def html_report(runs, vbench, grid: dict, pyramid_html: str, speedups: Sequence[dict] = ()) -> str:
    """The report page: tables, figures, the sample grid and the pyramid section."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<link rel="icon" href="data:,">',  # no favicon request
        "<title>pyramidal-wan results</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>pyramidal-wan results</h1>",
    ]
    if runs:
        parts += [
            "<h2>ToyBench: models x schedules</h2>",
            _html_table(*main_table(runs)),
            f'<p class="note">{html.escape(toybench_note(runs))}</p>',
            html_figure(
                "quality_vs_tflops",
                "ToyBench scores against transformer TFLOPs per video (log scale), one point per model x "
                "schedule, labelled with the schedule; dashed: the VAE ceiling.",
            ),
            "<h2>ToyBench dimensions</h2>",
            _html_table(*dimension_table(runs)),
            "<h2>Seconds per video by part</h2>",
            _html_table(*latency_table(runs)),
            html_figure(
                "stage_latency",
                "Seconds per video split at the sampler's callbacks: text encoding, each stage (lowest "
                "resolution first), then decoding.",
            ),
            "<h2>Samples</h2>",
            '<p class="note">The same prompts and seeds for every model x schedule (GIFs saved by '
            "evaluate).</p>",
            _html_samples(grid),
        ]
    if speedups:
        parts += [
            "<h2>Speed-ups: quality against cost</h2>",
            _html_table(*speedup_table(speedups)),
            f'<p class="note">{html.escape(" ".join([*speedup_findings(speedups), SPEEDUP_NOTE]))}</p>',
        ]
    if vbench:
        parts += ["<h2>VBench</h2>", _html_table(*vbench_table(vbench))]
    parts += [pyramid_html, "</body></html>"]
    return "\n".join(parts) + "\n"


# ---------------------------------------------------------------------------------------------------------
# The whole report


def pick_pyramid_run(runs: Sequence[dict], wanted: str | None = None) -> dict | None:
    """The run whose pyramid view the report shows: `wanted` ("MODEL:SCHEDULE" or "MODEL"), else the first
    run with a view (`evaluate` makes one for every pyramidal schedule)."""
    candidates = [r for r in runs if r["pyramid_view"] and (Path(r["pyramid_view"]) / VIEW_FILE).is_file()]
    if wanted is not None:
        model, _, schedule = wanted.partition(":")
        chosen = [
            r for r in candidates if r["model"] == model and (not schedule or r["schedule"] == schedule)
        ]
        if not chosen:
            names = ", ".join(f"{r['model']}:{r['schedule']}" for r in runs)
            raise InputError(
                f"--pyramid-run {wanted}: no run of the records has that model (and schedule) with a pyramid "
                f"view (evaluate makes one per pyramidal schedule); runs: {names}"
            )
        return chosen[0]
    return candidates[0] if candidates else None


def pyramid_section(run: dict, out_dir: Path) -> str:
    """Copy a run's pyramid view (stage GIFs, figures) into the report folder; return its HTML section."""
    folder = Path(run["pyramid_view"])
    view = json.loads((folder / VIEW_FILE).read_text())
    rows = []
    for stage in view["stages"]:
        gif = Path("pyramid") / stage["gif"]
        with atomic_path(out_dir / gif) as tmp:
            shutil.copyfile(folder / stage["gif"], tmp)
        rows.append((stage["stage"], stage["latent"], stage["sigmas"], stage["steps"], gif.as_posix()))
    for stem in VIEW_FIGURES:
        for suffix in (".png", ".svg"):
            with atomic_path(out_dir / "figures" / f"{stem}{suffix}") as tmp:
                shutil.copyfile(folder / f"{stem}{suffix}", tmp)
    cells = "".join(
        f"<tr><td>stage {s}</td><td>{html.escape(size)}</td><td>{sig}</td><td>{n}</td>"
        f'<td><img src="{gif}" alt="stage {s}" style="width:128px;image-rendering:pixelated"></td></tr>'
        for s, size, sig, n, gif in rows
    )
    return "\n".join(
        [
            "<h2>The pyramid</h2>",
            f'<p class="note">{html.escape(run["model"])}, schedule {html.escape(run["schedule"])}, prompt '
            f"&ldquo;{html.escape(view['prompt'])}&rdquo;, seed {view['seed']}: the clean estimate x0 at the "
            "last model evaluation of each stage, carried to full resolution by R_up and decoded.</p>",
            "<table><thead><tr><th>stage</th><th>latent (T x H x W)</th><th>sigma range [sigma_c, sigma_n]"
            f"</th><th>steps</th><th>video</th></tr></thead><tbody>{cells}</tbody></table>",
            html_figure("pyramid_stages", "First, middle and last frame of each stage's clean estimate."),
            html_figure(
                "pyramid_spectrum",
                "Radially averaged spatial power spectrum of the sample's final clean latent (normalised "
                "space, where the noise is white with variance sigma^2) against each stage's noise floor "
                "sigma^2 / (1 - sigma)^2 at its clean end (solid) and noisy end (dashed), and its Nyquist "
                "limit (dotted). A frequency under the floor is drowned by the noise at that sigma, so a "
                "stage can drop the band above its Nyquist limit where the spectrum there lies under the "
                "floor of its clean end (METHOD.md 3.4).",
            ),
        ]
    )


def write_report(
    results: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    markdown: str | os.PathLike | None = None,
    pyramid: bool = True,
    pyramid_run: str | None = None,
    max_prompts: int = MAX_SAMPLE_PROMPTS,
    speedups: Sequence[str | os.PathLike] = (),
) -> dict[str, Path]:
    """Write the report folder (and a copy of the Markdown at `markdown`); return the main paths. A pure
    function of the records and the files they name (samples, pyramid views): no model runs here.
    `speedups`: the records of the speed-up benchmark, tabled apart (their prompts and seeds differ)."""
    records = load_records(results)
    runs, vbench = toy_runs(records), vbench_runs(records)
    speedup = speedup_runs(toy_runs(load_records(speedups))) if speedups else []
    chosen = pick_pyramid_run(runs, pyramid_run) if pyramid else None  # checked before any work
    out_dir = Path(out_dir)
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)
    text = markdown_report(runs, vbench, speedup)
    grid = {"columns": [], "rows": []}
    if runs:
        plot_quality_vs_tflops(runs, out_dir / "figures")
        plot_stage_latency(runs, out_dir / "figures")
        grid = sample_grid(records, out_dir, max_prompts)
    pyramid_html = ""
    if chosen is not None:
        pyramid_html = pyramid_section(chosen, out_dir)
    elif pyramid:
        pyramid_html = (
            '<h2>The pyramid</h2><p class="note">No pyramid view in these records (evaluate makes one for '
            "each pyramidal schedule).</p>"
        )
    paths = {"html": out_dir / "index.html", "markdown": out_dir / "results.md"}
    with atomic_path(paths["html"]) as tmp:
        tmp.write_text(html_report(runs, vbench, grid, pyramid_html, speedup))
    for path in [paths["markdown"], *([Path(markdown)] if markdown else [])]:
        with atomic_path(path) as tmp:
            tmp.write_text(text)
    with atomic_path(out_dir / "runs.json") as tmp:
        summaries = {"toy": runs, "vbench": vbench, "speedups": speedup}
        tmp.write_text(json.dumps(summaries, indent=1, default=str) + "\n")
    return paths
