"""Time one forward of the full-size Wan2.1 transformer (random weights) at every pyramid stage.

    python benchmarks/gpu_latency.py                       # Wan2.1-1.3B, 81x448x832, bf16, CUDA
    python benchmarks/gpu_latency.py --no-compile          # eager SDPA only
    python benchmarks/gpu_latency.py --device cpu --preset toy-wan --num-frames 17 --height 128 --width 128

The model is built from its preset directly on the device (no weights needed). Each stage is timed with
eager PyTorch (SDPA attention), then again after `torch.compile` of the repeated transformer blocks
(diffusers' `compile_repeated_blocks`). One table: ms per forward (median, p10-p90), achieved TFLOP/s,
the stage-0/stage-i latency ratios, and schedule latencies predicted from the per-stage medians
(e.g. 2-2-1 = t0 + 2 t1 + 2 t2), next to the paper's figures where the setting is the paper's.
Runs in well under 5 minutes on one H100.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from diffusers import WanTransformer3DModel

from pyramidal_wan.errors import InputError
from pyramidal_wan.eval.flops import transformer_forward_flops
from pyramidal_wan.eval.latency import cast_like_from_pretrained, forward_latency_ms
from pyramidal_wan.models.presets import PRESETS, get_transformer_config
from pyramidal_wan.pyramid.geometry import parse_schedule, stage_geometry

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
# Reported by the paper (METHOD.md §10.2) for Wan2.1-1.3B at 81x448x832 on an unnamed GPU: reference
# values to compare ratios against, never used in any computation.
PAPER_MS = {"stage": (631.77, 33.76, 7.62), "2-2-1": 714.5, "0-0-2": 1263.5, "0-0-1": 631.8}
PAPER_SETTING = ("wan2.1-1.3b", 81, 448, 832, 3)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--preset", default="wan2.1-1.3b", choices=sorted(PRESETS))
    parser.add_argument(
        "--dtype", choices=sorted(DTYPES), default=None, help="default bf16 on GPU, fp32 on CPU"
    )
    parser.add_argument("--num-frames", type=int, default=81)
    parser.add_argument("--height", type=int, default=448)
    parser.add_argument("--width", type=int, default=832)
    parser.add_argument("--stages", type=int, default=3)
    parser.add_argument("--text-len", type=int, default=512)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--no-compile", action="store_true", help="time eager SDPA only")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (CPU runs)")
    return parser.parse_args(argv)


def build_model(preset: str, device: torch.device, dtype: torch.dtype) -> WanTransformer3DModel:
    """The preset's transformer with random weights, initialised on `device`, in the dtypes a checkpoint
    loaded with `torch_dtype=dtype` would have."""
    torch.manual_seed(0)
    with device:
        model = WanTransformer3DModel.from_config(get_transformer_config(preset))
    return cast_like_from_pretrained(model, dtype).eval()


def time_stages(model, shapes, args, device, dtype) -> list[dict]:
    """Forward latency per stage shape (index 0 = full resolution)."""
    results = []
    for i, shape in enumerate(shapes):
        start = time.perf_counter()
        result = forward_latency_ms(
            model,
            shape,
            args.text_len,
            device,
            dtype,
            args.warmup,
            args.repeats,
            generator=torch.Generator().manual_seed(i),
        )
        result["seconds"] = time.perf_counter() - start
        print(f"  stage {i} {shape}: {result['median']:.2f} ms ({result['seconds']:.1f} s)", file=sys.stderr)
        results.append(result)
    return results


def schedule_ms(steps_low_first: tuple[int, ...], stage_ms: list[float]) -> float:
    """Predicted transformer time of a schedule: sum_i n_i t_i (steps listed lowest resolution first)."""
    return sum(n * t for n, t in zip(steps_low_first[::-1], stage_ms))


def compare(ms: float, reference_ms: float) -> str:
    """'43% faster than' or '13% slower than', in the paper's wording (relative to the reference time)."""
    change = ms / reference_ms - 1
    return f"{100 * abs(change):.0f}% {'slower' if change > 0 else 'faster'} than"


def format_table(args, geometry, tflops, runs: dict[str, list[dict]]) -> str:
    """One text table: per-stage latency, ratios, and predicted few-step schedule latencies."""
    paper = (args.preset, args.num_frames, args.height, args.width, args.stages) == PAPER_SETTING
    modes = list(runs)
    lines = [
        f"{args.preset}, {args.num_frames}x{args.height}x{args.width}, {args.stages} stages, "
        f"{args.text_len} text tokens, {args.dtype}, {torch_device_name(args.device)}",
        "",
        f"{'stage':>5}  {'latent':>10}  {'tokens':>7}  {'TFLOPs':>9}"
        + "".join(f"  {m + ' ms (p10-p90)':>26}  {m + ' TFLOP/s':>14}" for m in modes)
        + (f"  {'paper ms':>9}" if paper else ""),
    ]
    for i, g in enumerate(geometry):
        row = f"{i:>5}  {'x'.join(map(str, g.latent)):>10}  {g.num_tokens:>7,}  {tflops[i]:>9.4g}"
        for mode in modes:
            r = runs[mode][i]
            spread = f"{r['median']:.2f} ({r['p10']:.2f}-{r['p90']:.2f})"
            row += f"  {spread:>26}  {tflops[i] / (r['median'] / 1e3):>14.3g}"
        lines.append(row + (f"  {PAPER_MS['stage'][i]:>9.2f}" if paper else ""))
    lines += ["", "latency ratio stage 0 / stage i:"]
    for i in range(1, len(geometry)):
        parts = [f"{m} {runs[m][0]['median'] / runs[m][i]['median']:.2f}" for m in modes]
        if paper:
            parts.append(f"paper {PAPER_MS['stage'][0] / PAPER_MS['stage'][i]:.2f}")
        parts.append(f"FLOPs {tflops[0] / tflops[i]:.2f}")
        lines.append(f"  stage 0 / stage {i}: " + ", ".join(parts))
    s = args.stages
    schedules = ["-".join(["2"] * (s - 1) + ["1"]), "-".join(["0"] * (s - 1) + ["2"])]
    schedules.append("-".join(["0"] * (s - 1) + ["1"]))
    lines += ["", "predicted transformer time per video (sum of steps x stage median), ms:"]
    for mode in modes:
        stage_ms = [r["median"] for r in runs[mode]]
        predicted = {text: schedule_ms(parse_schedule(text, s), stage_ms) for text in schedules}
        pyramidal, two_step, one_step = (predicted[t] for t in schedules)
        lines.append(
            f"  {mode}: "
            + ", ".join(f"{t} {ms:.1f}" for t, ms in predicted.items())
            + f"; {schedules[0]} is {compare(pyramidal, two_step)} {schedules[1]}"
            f" and {compare(pyramidal, one_step)} {schedules[2]}"
        )
    if paper:
        lines.append(
            f"  paper: 2-2-1 {PAPER_MS['2-2-1']}, 0-0-2 {PAPER_MS['0-0-2']}, 0-0-1 {PAPER_MS['0-0-1']}; "
            "2-2-1 is 43% faster than 0-0-2 and 13% slower than 0-0-1"
        )
    return "\n".join(lines)


def torch_device_name(device: str) -> str:
    """A readable name of the device the run used."""
    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_name(torch.device(device))
    return f"CPU ({torch.get_num_threads()} threads)"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(
            "gpu_latency: no CUDA device on this machine; run it on a GPU, or exercise the script with "
            "--device cpu --preset toy-wan --num-frames 17 --height 128 --width 128",
            file=sys.stderr,
        )
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    args.dtype = args.dtype or ("fp32" if device.type == "cpu" else "bf16")
    dtype = DTYPES[args.dtype]
    config = get_transformer_config(args.preset)
    try:
        geometry = stage_geometry(
            args.num_frames, args.height, args.width, num_stages=args.stages, patch_size=config["patch_size"]
        )
    except InputError as err:
        print(f"gpu_latency: error: {err}", file=sys.stderr)
        return 2
    shapes = [(config["in_channels"], *g.latent) for g in geometry]
    tflops = [transformer_forward_flops(config, shape, args.text_len) / 1e12 for shape in shapes]

    start = time.perf_counter()
    model = build_model(args.preset, device, dtype)
    print(
        f"built {args.preset} on {device} in {time.perf_counter() - start:.1f} s; timing eager",
        file=sys.stderr,
    )
    runs = {"eager": time_stages(model, shapes, args, device, dtype)}
    if not args.no_compile:
        print(
            "timing torch.compile (repeated blocks; the warm-up calls include compilation)", file=sys.stderr
        )
        # Static shapes: each stage gets its own specialised graph, as a fixed-size deployment would.
        model.compile_repeated_blocks(dynamic=False)
        runs["compiled"] = time_stages(model, shapes, args, device, dtype)
    print(format_table(args, geometry, tflops, runs))
    print(f"\ntotal wall time {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
