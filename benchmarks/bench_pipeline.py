"""Print the pipeline benchmark table: per-stage forward latency, pipeline time per schedule with measured
and FLOPs-predicted speed-ups, and our 0-0-N pipeline against diffusers' WanPipeline, all in one run.

    python benchmarks/bench_pipeline.py                        # random width-384 model, 17x128x128, CPU
    python benchmarks/bench_pipeline.py --repeats 3            # steadier medians on a shared machine
    python benchmarks/bench_pipeline.py --model models/toy/base          # a saved model folder
    python benchmarks/bench_pipeline.py --device cuda --dtype bfloat16   # on a GPU

Takes the options of `pyramidal-wan bench` (see `pyramidal-wan bench --help`, and the module docstring of
`pyramidal_wan/cli/bench.py` for why the default model is sized as it is). About a minute on one CPU core.
"""

from __future__ import annotations

import sys

from pyramidal_wan.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
