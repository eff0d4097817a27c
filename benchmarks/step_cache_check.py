"""One video per step cache on a pyramidal model: how much each skips and how far its video moves.

Calibrates the model's MagCache ratios in memory (`pipe.calibrate_mag_ratios`, on a calibration prompt;
nothing is written), then generates one video of another prompt without a cache and with each cache, and
prints the rows the last block's feed-forward computed (out of steps x CFG branches), the CPU
seconds of the call and the PSNR of the video against the uncached one. A quick check of the mechanics;
quality is what ToyBench measures (`benchmarks/speedup_pareto.py`).

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/step_cache_check.py --model models/toy/pyramidal
"""

from __future__ import annotations

import argparse
import time

import torch

from pyramidal_wan.cli.calibrate import DEFAULT_PROMPT
from pyramidal_wan.models.caching import CACHES
from pyramidal_wan.models.loading import quiet_loading
from pyramidal_wan.pipelines import PyramidalWanPipeline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models/toy/pyramidal")
    parser.add_argument("--schedule", help="a multi-step schedule (default: the model's)")
    parser.add_argument("--prompt", default="a blue square moving up on a green background")
    args = parser.parse_args()
    torch.set_num_threads(1)
    quiet_loading()
    pipe = PyramidalWanPipeline.from_pretrained(args.model)
    pipe.set_progress_bar_config(disable=True)
    common = {"schedule": args.schedule, "sampler": "multistep"}
    calibration = torch.Generator().manual_seed(0)
    pipe.mag_ratios = pipe.calibrate_mag_ratios(DEFAULT_PROMPT, generator=calibration, **common)
    # A layer inside the last block's feed-forward runs only when nothing skipped it (a torch hook on a
    # module a diffusers hook skips would still fire); its batch counts the CFG branches computed.
    tail = [m for m in pipe.transformer.blocks[-1].ffn.modules() if isinstance(m, torch.nn.Linear)][-1]
    tail_runs = []
    tail.register_forward_pre_hook(lambda module, args: tail_runs.append(args[0].shape[0]))
    videos = {}
    print(f"{'cache':12} {'tail FFN rows':>13} {'CPU s':>6} {'PSNR dB':>8}")
    for cache in (None, *CACHES):
        tail_runs.clear()
        start = time.process_time()
        videos[cache] = pipe(
            args.prompt, generator=torch.Generator().manual_seed(1), output_type="pt", cache=cache, **common
        ).frames
        seconds = time.process_time() - start
        mse = (videos[cache] - videos[None]).square().mean().item()  # videos in [0, 1]
        psnr = float("inf") if mse == 0 else -10 * torch.log10(torch.tensor(mse)).item()
        print(f"{cache or 'none':12} {sum(tail_runs):13d} {seconds:6.2f} {psnr:8.1f}")


if __name__ == "__main__":
    main()
