"""Our plain 0-0-N pipeline against diffusers' WanPipeline on the same components: where the time goes.

Times, in interleaved rounds, one call of each (CFG, latents out) and prints the median CPU seconds per
call (process time: what this process computed, steadier than wall time on a shared machine), the median
of the per-round ratios ours / WanPipeline, and each pipeline's CPU milliseconds outside the transformer
forwards (text encoding, sampler, CFG arithmetic, per-call lookups): the part the pipeline code decides.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/cfg_overhead.py --model models/toy/base --rounds 31

`pyramidal-wan bench` reports the same ratio in wall time, within its full table.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from pyramidal_wan.cli.bench import PROMPT, wan_pipeline_call
from pyramidal_wan.models.loading import quiet_loading
from pyramidal_wan.pipelines import PyramidalWanPipeline


class TransformerClock:
    """CPU seconds spent inside the transformer's forwards (hooks), reset by `start()`."""

    def __init__(self, transformer):
        self.seconds, self._start = 0.0, 0.0
        transformer.register_forward_pre_hook(lambda *args: setattr(self, "_start", time.process_time()))
        transformer.register_forward_hook(lambda *args: self._add())

    def _add(self):
        self.seconds += time.process_time() - self._start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models/toy/base")
    parser.add_argument("--steps", type=int, default=3, help="N of 0-0-N (default 3, as bench)")
    parser.add_argument("--rounds", type=int, default=31)
    parser.add_argument("--guidance-scale", type=float, default=5.0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    quiet_loading()
    pipe = PyramidalWanPipeline.from_pretrained(args.model)
    pipe.set_progress_bar_config(disable=True)
    config = pipe.config
    size = {"num_frames": config.default_num_frames, "height": config.default_height}
    size["width"] = config.default_width
    clock = TransformerClock(pipe.transformer)
    schedule = "-".join(["0"] * (pipe.pyramid_config.num_stages - 1) + [str(args.steps)])
    calls = {
        "ours": lambda: pipe(
            PROMPT,
            **size,
            schedule=schedule,
            guidance_scale=args.guidance_scale,
            generator=torch.Generator().manual_seed(0),
            output_type="latent",
        ),
        "WanPipeline": wan_pipeline_call(pipe, size, args.steps, args.guidance_scale),
    }
    for call in calls.values():
        call()  # warm-up
    seconds = {name: [] for name in calls}
    outside = {name: [] for name in calls}
    for _ in range(args.rounds):
        for name, call in calls.items():
            clock.seconds = 0.0
            start = time.process_time()
            call()
            seconds[name].append(time.process_time() - start)
            outside[name].append(seconds[name][-1] - clock.seconds)
    ratio = statistics.median(a / b for a, b in zip(seconds["ours"], seconds["WanPipeline"]))
    frames, height, width = size["num_frames"], size["height"], size["width"]
    setting = f"CFG {args.guidance_scale:g}, {frames}x{height}x{width}, {args.rounds} rounds"
    print(f"{args.model} {schedule} {setting}")
    for name in calls:
        print(
            f"{name:12} {statistics.median(seconds[name]):.4f} CPU s per call, "
            f"{1e3 * statistics.median(outside[name]):.2f} ms outside the transformer forwards"
        )
    print(f"ours / WanPipeline = {ratio:.3f} (median of per-round ratios)")


if __name__ == "__main__":
    main()
