"""Time the pyramid operators at the paper's full latent size against one avg_pool3d pass.

    python benchmarks/bench_operators.py [--threads 2] [--repeats 20]

Prints median milliseconds per call and the ratio to `F.avg_pool3d` over the same (1, 16, 21, 56, 104)
latent, measured in the same run (absolute times on a shared CPU are noisy; ratios are what to compare).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from pyramidal_wan.pyramid import Pyramid


def median_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    x = torch.randn(1, 16, 21, 56, 104, generator=torch.Generator().manual_seed(0))
    rows = []
    reference = median_ms(lambda: F.avg_pool3d(x[:, :, 1:], 2), args.repeats)
    rows.append(("avg_pool3d (reference)", reference))
    g0 = torch.Generator().manual_seed(2)
    rows.append(
        (
            "randn, same size (part of a jump)",
            median_ms(lambda: torch.randn(x.shape, generator=g0), args.repeats),
        )
    )
    for wavelet in ("haar", "db2"):
        p = Pyramid.build(3, wavelet=wavelet)
        coarse = p.down(x, 0)
        g = torch.Generator().manual_seed(1)
        rows.append((f"{wavelet}: R_down", median_ms(lambda p=p: p.down(x, 0), args.repeats)))
        rows.append((f"{wavelet}: R_up", median_ms(lambda p=p, c=coarse: p.up(c, 0), args.repeats)))
        rows.append(
            (
                f"{wavelet}: jump (R_up_N + top-up)",
                median_ms(lambda p=p, c=coarse, g=g: p.jump(c, 0, g), args.repeats),
            )
        )

    print(f"latent {tuple(x.shape)}, {args.threads} threads, median of {args.repeats}")
    print(f"{'operation':<34} {'ms':>9} {'x avg_pool3d':>13}")
    for name, ms in rows:
        print(f"{name:<34} {ms:>9.2f} {ms / reference:>13.2f}")


if __name__ == "__main__":
    main()
