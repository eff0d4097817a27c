"""`pyramidal-wan suggest-stages`: stage boundaries from the data's spectrum (METHOD.md 3.4)."""

from __future__ import annotations

import json

from pyramidal_wan.cli.options import output_path, positive_float, positive_int
from pyramidal_wan.errors import InputError

# The toy boundary experiment (docs/toy.md, 1000-step pyramidizations sampled at 20-20-10, equal FLOPs):
# SNR 0.1 / 0.35 (the paper's 1/3, 2/3) / 1 gave ToyBench totals 68.6 / 66.2 / 64.3, better the later the
# detail band is handed to the next stage (each step within one standard error, the trend monotone).
DEFAULT_SNR = 0.1


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "suggest-stages",
        help="choose stage boundaries where each detail band's SNR falls below a threshold",
        description="Measure, on a prepared cache, the energy of the detail band each stage's downsampling "
        "removes, and put each boundary where that band's signal-to-noise ratio equals --snr at the "
        "finer stage's noisy end; a coarser boundary whose band is already drowned there falls back to "
        "the even split of the remaining noise range. Prints the table and writes a pyramid config JSON.",
    )
    parser.add_argument("--data", required=True, help="a cache folder written by prepare-data")
    parser.add_argument(
        "--snr", type=positive_float, default=DEFAULT_SNR, help=f"threshold (default {DEFAULT_SNR:g})"
    )
    parser.add_argument(
        "--max-items", type=positive_int, default=512, help="cached videos to measure (default 512)"
    )
    parser.add_argument(
        "--out", type=output_path, help="write the suggested pyramid config here (a .json file)"
    )
    parser.set_defaults(func=run)


def run(args) -> int:
    from pyramidal_wan.data.cache import CachedLatents
    from pyramidal_wan.data.spectrum import detail_energies
    from pyramidal_wan.pyramid import Pyramid, PyramidConfig
    from pyramidal_wan.pyramid.noise import clean_ends_from_spectrum, detail_snr
    from pyramidal_wan.utils.io import write_json

    if args.out is not None and not args.out.endswith(".json"):
        raise InputError(f"--out {args.out} must be a .json file")
    data = CachedLatents(args.data)
    settings = data.manifest["settings"]
    base = Pyramid.build(settings["num_stages"], settings["factors"])
    energies = detail_energies(data, base, args.max_items)
    blocks = [t.block_size for t in base.transfers]
    clean, rules = clean_ends_from_spectrum(energies, blocks, args.snr)
    config = PyramidConfig(num_stages=base.num_stages, factors=settings["factors"], clean_ends=clean)
    suggested = config.pyramid()
    print(f"{min(len(data), args.max_items)} cached videos of {args.data}; SNR threshold {args.snr:g}")
    print(
        f"{'transition':>10} {'detail energy':>14} {'default sigma_c':>16} {'SNR there':>10} "
        f"{'suggested sigma_c':>18} {'sigma_n':>8} {'SNR there':>10}  set by"
    )
    for i, energy in enumerate(energies):
        default_seg, seg = base.segments[i], suggested.segments[i]
        print(
            f"{i:>10} {energy:>14.5f} {base.segments[i + 1].sigma_c:>16.4f} "
            f"{detail_snr(default_seg.sigma_n, energy):>10.4f} {suggested.segments[i + 1].sigma_c:>18.4f} "
            f"{seg.sigma_n:>8.4f} {detail_snr(seg.sigma_n, energy):>10.4f}  {rules[i]}"
        )
    if args.out:
        write_json(args.out, config.to_dict())
        print(f"wrote {args.out}")
    else:
        print(json.dumps(config.to_dict()))
    return 0
