"""ToyBench quality against cost for solvers x caches x schedules: the speed-up Pareto table of issue 17.

Runs `pyramidal-wan evaluate` (resumable JSON-lines records) for every configuration below on the toy
family (base, pyramidal, few-step), then prints the table that `pyramidal-wan report --speedups` puts in
docs/results.md (`eval.report.speedup_table`): per run, ToyBench total ± se, its difference to base
0-0-50, TFLOPs and FLOPs speed-up, CPU seconds per video end to end (text, stages, decode) and that
speed-up; then the issue's targets: the cheapest multi-step configuration within 2 points of base 0-0-50,
and every few-step end-to-end speed-up over it. The few-step rows run three times: decoded by the VAE
and by the two bundled tiny decoders (`models.tiny_decoder`: `models/toy/tiny-decoder`, channels 64-32-16,
and `models/toy/tiny-decoder-small`, 32-16-8). The runs go in interleaved rounds (`--rounds`). A MagCache
row first calibrates the model's ratios (`pyramidal-wan calibrate-magcache`, written to the model
folder's magcache.json) unless they are there.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/speedup_pareto.py --prompts 4
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
from pathlib import Path

from pyramidal_wan.cli import main
from pyramidal_wan.eval.report import markdown_table, speedup_findings, speedup_runs, speedup_table, toy_runs
from pyramidal_wan.eval.toybench import read_records
from pyramidal_wan.models.caching import MAG_RATIOS_FILE

# (model folder name, solver, cache, schedules, decoder folder name); the first run is the reference: base
# 0-0-50.
CONFIGS = (
    ("base", None, None, ("0-0-50",), None),
    ("base", "dpm2m", None, ("0-0-20", "0-0-10"), None),
    ("pyramidal", None, None, ("20-20-10", "10-10-5"), None),
    ("pyramidal", "dpm2m", None, ("10-10-5", "6-6-4", "4-4-3"), None),
    ("pyramidal", "dpm2m", "taylorseer", ("10-10-5",), None),
    ("pyramidal", None, "first-block", ("20-20-10",), None),
    ("pyramidal", None, "magcache", ("20-20-10",), None),
    ("pyramidal", "dpm2m", "magcache", ("10-10-5",), None),
    ("pyramidal", None, "fastercache", ("20-20-10",), None),
    ("few-step", None, None, ("2-2-1", "1-1-1"), None),
    ("few-step", None, None, ("2-2-1", "1-1-1"), "tiny-decoder"),
    ("few-step", None, None, ("2-2-1", "1-1-1"), "tiny-decoder-small"),
)


def run_config(models: Path, model, solver, cache, schedules, decoder, args, prompts, heldout, batch) -> None:
    if cache == "magcache" and not (models / model / MAG_RATIOS_FILE).is_file():
        # MagCache needs the model's magnitude ratios: calibrated once, at the model's default schedule.
        with contextlib.redirect_stdout(io.StringIO()):
            if main(["calibrate-magcache", "--model", str(models / model), "--threads", str(args.threads)]):
                raise SystemExit(f"calibrate-magcache failed for {models / model}")
    command = ["evaluate", "--model", str(models / model), "--out", args.out, "--samples", "0"]
    command += [
        "--prompts",
        str(prompts),
        "--heldout",
        str(heldout),
        "--batch-size",
        str(batch),
        "--threads",
        str(args.threads),
    ]
    command += [flag for schedule in schedules for flag in ("--schedule", schedule)]
    command += ["--solver", solver] if solver else []
    command += ["--cache", cache] if cache else []
    command += ["--decoder", str(models / decoder)] if decoder else []
    with contextlib.redirect_stdout(io.StringIO()):  # evaluate's own table; ours follows
        if main(command) != 0:
            raise SystemExit(f"evaluate failed: {' '.join(command)}")


def main_cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models", default="models/toy", help="folder of the toy family (default models/toy)"
    )
    parser.add_argument("--prompts", type=int, default=36, help="train-split prompts per run (default 36)")
    parser.add_argument("--heldout", type=int, default=0, help="held-out prompts per run (default 0)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="runs/eval/pareto.jsonl", help="records (resumable)")
    parser.add_argument(
        "--rounds", type=int, default=4, help="interleaved rounds, each a batch of every run (default 4)"
    )
    args = parser.parse_args()
    # Round k evaluates the next share of the prompts for every run, so each row's seconds are measured
    # across the whole benchmark: a machine that slows for a minute (a shared 2-core VM does, 1.5x) touches
    # every row alike instead of the rows that happened to run then.
    batch = max(math.ceil(args.prompts / args.rounds), math.ceil(args.heldout / args.rounds), 1)
    for k in range(1, args.rounds + 1):
        prompts, heldout = (
            math.ceil(k * args.prompts / args.rounds),
            math.ceil(k * args.heldout / args.rounds),
        )
        for model, solver, cache, schedules, decoder in CONFIGS:
            run_config(
                Path(args.models), model, solver, cache, schedules, decoder, args, prompts, heldout, batch
            )
    runs = speedup_runs(toy_runs(read_records(args.out)))
    print(markdown_table(*speedup_table(runs)))
    print("\n".join(speedup_findings(runs)))


if __name__ == "__main__":
    main_cli()
