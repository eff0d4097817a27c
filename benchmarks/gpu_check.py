"""The one GPU check: latency, end-to-end generation, training memory and the 14B plan, in one run.

    python benchmarks/gpu_check.py                          # Wan2.1-1.3B, 81x448x832, bf16, one CUDA GPU
    python benchmarks/gpu_check.py --tiny --device cpu      # toy-wan at 17x64x64 on CPU (the test suite)

Random weights throughout (no download); under 8 minutes on one H100/H200. Writes OUT (JSON) and
OUT with .txt (the table, also printed):

1. Per-stage forward latency of the transformer, eager SDPA and `torch.compile` of the repeated blocks,
   next to the paper's 631.77 / 33.76 / 7.62 ms (benchmarks/gpu_latency.py's code, imported).
2. End-to-end `PyramidalWanPipeline` calls at 2-2-1 (few-step, no CFG), 20-20-10 and 0-0-50 (multi-step,
   CFG 5): transformer sampling timed apart from the VAE decode (decoded once: one latent size). The
   pipeline is built in memory: the transformer from its preset, a Wan VAE of the real AutoencoderKLWan
   config (the toy VAE with --tiny), and a tiny 2-layer UMT5 text encoder of the transformer's text
   width (not umT5-XXL: text encoding is not what is measured here).
3. Peak GPU memory of one pyramidal fine-tuning step and of DMD-OT iterations (generator and critic
   updates) with gradient checkpointing, at 1 and 2 full-resolution samples, next to the
   `pyramidal_wan.eval.memory` estimates (docs/memory.md). On CPU the steps run and memory is not measured.
4. Wan2.1-14B on the meta device: per-stage FLOPs and the same memory estimates on 1 GPU and on 8 GPUs with
   FSDP2, with and without CPU offload of the optimizer states (nothing is allocated).
--tiny skips torch.compile (inductor's CPU compile of even a toy model takes minutes on a small machine).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import gpu_latency  # noqa: I001 (benchmarks/ is this script's directory, first on sys.path)
import torch

from pyramidal_wan.eval.flops import transformer_forward_flops
from pyramidal_wan.eval.latency import synchronize
from pyramidal_wan.eval.memory import estimate, parameter_count
from pyramidal_wan.models.presets import get_transformer_config
from pyramidal_wan.pyramid import PyramidConfig
from pyramidal_wan.pyramid.geometry import stage_geometry
from pyramidal_wan.utils.io import atomic_path, write_json

FULL = {
    "preset": "wan2.1-1.3b",
    "num_frames": 81,
    "height": 448,
    "width": 832,
    "dtype": "bf16",
    "vae_scale": 8,
}
TINY = {"preset": "toy-wan", "num_frames": 17, "height": 64, "width": 64, "dtype": "fp32", "vae_scale": 4}
BIG = "wan2.1-14b"
SCHEDULES = (("2-2-1", "fewstep", 1.0), ("20-20-10", "multistep", 5.0), ("0-0-50", "multistep", 5.0))
GB = 1e9


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="toy-wan at 17x64x64, fp32, no torch.compile")
    parser.add_argument("--out", default="gpu_check.json")
    parser.add_argument("--repeats", type=int, default=10, help="timed forwards per stage")
    args = parser.parse_args(argv)
    for key, value in (TINY if args.tiny else FULL).items():
        setattr(args, key, value)
    args.stages, args.text_len, args.warmup = 3, 512, 3
    args.no_compile = args.tiny
    return args


# 1. Per-stage latency ----------------------------------------------------------------------------------
def stage_latency(args, device, dtype, geometry) -> dict:
    config = get_transformer_config(args.preset)
    shapes = [(config["in_channels"], *g.latent) for g in geometry]
    model = gpu_latency.build_model(args.preset, device, dtype)
    runs = {"eager": gpu_latency.time_stages(model, shapes, args, device, dtype)}
    if not args.no_compile:
        model.compile_repeated_blocks(dynamic=False)
        runs["compiled"] = gpu_latency.time_stages(model, shapes, args, device, dtype)
    paper = (args.preset, args.num_frames, args.height, args.width, args.stages) == gpu_latency.PAPER_SETTING
    return {
        "stages": [
            {
                "stage": i,
                "tokens": g.num_tokens,
                **{f"{mode}_ms": runs[mode][i]["median"] for mode in runs},
                "paper_ms": gpu_latency.PAPER_MS["stage"][i] if paper else None,
            }
            for i, g in enumerate(geometry)
        ]
    }


# 2. End-to-end generation ------------------------------------------------------------------------------
def build_pipeline(args, device, dtype):
    """A random-weight pipeline in memory: preset transformer, real-config (or toy) VAE, tiny text encoder."""
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler
    from transformers import UMT5EncoderModel

    from pyramidal_wan.pipelines import PyramidalWanPipeline
    from pyramidal_wan.toy.text import build_tokenizer, text_encoder_config
    from pyramidal_wan.toy.vae import build_vae

    tokenizer = build_tokenizer()
    text_config = text_encoder_config(len(tokenizer))
    text_config.d_model = get_transformer_config(args.preset)["text_dim"]
    torch.manual_seed(0)
    vae = build_vae(0) if args.tiny else AutoencoderKLWan()
    pipe = PyramidalWanPipeline(
        tokenizer=tokenizer,
        text_encoder=UMT5EncoderModel(text_config).to(dtype).eval(),  # in the transformer's dtype, as the CLI
        vae=vae,
        transformer=gpu_latency.build_model(args.preset, device, dtype),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        pyramid_config=PyramidConfig(),
        default_num_frames=args.num_frames,
        default_height=args.height,
        default_width=args.width,
        default_negative_prompt="",
    )
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generation(args, device, dtype) -> list[dict]:
    pipe = build_pipeline(args, device, dtype)
    rows = []
    for schedule, sampler, guidance in SCHEDULES:
        stamps = []

        def record(_info, stamps=stamps):
            synchronize(device)
            stamps.append(time.perf_counter())

        synchronize(device)
        start = time.perf_counter()
        pipe(
            "a red circle",
            schedule=schedule,
            sampler=sampler,
            guidance_scale=guidance,
            callback=record,
            generator=torch.Generator().manual_seed(0),
            output_type="latent" if rows else "pt",  # decoding takes as long at every schedule: once
        )
        synchronize(device)
        end = time.perf_counter()
        rows.append(
            {
                "schedule": schedule,
                "sampler": sampler,
                "guidance_scale": guidance,
                "evaluations": len(stamps),
                "transformer_s": stamps[-1] - start,  # text encoding (tiny) and sampling to the last step
                "decode_s": None if rows else end - stamps[-1],
            }
        )
        print(
            f"  generate {schedule}: {rows[-1]['transformer_s']:.2f} s, decode {rows[-1]['decode_s']} s",
            file=sys.stderr,
        )
    return rows


# 3. Training memory ------------------------------------------------------------------------------------
def training_batch(geometry, samples_per_stage: int, stages, text_dim: int, device) -> dict:
    """Random stage latents (samples x stages rows) and prompt embeddings, as the trainer's sample_batch."""
    rows = samples_per_stage * len(stages)
    g = torch.Generator().manual_seed(0)
    return {
        "latents": [torch.randn(rows, 16, *s.latent, generator=g).to(device) for s in geometry],
        "prompt_embeds": torch.randn(rows, 512, text_dim, generator=g).to(device),
        "empty_prompt": torch.zeros(512, text_dim).to(device),
        "negative_prompt": torch.zeros(512, text_dim).to(device),
    }


def training_memory(args, device, geometry) -> list[dict]:
    """Peak memory of one pyramidal step and of DMD-OT iterations at 1 and 2 full-resolution samples."""
    from pyramidal_wan.training.config import load_config
    from pyramidal_wan.training.methods import build_objective
    from pyramidal_wan.training.sharding import frozen_networks

    precision = "no" if args.tiny else "bf16"
    text_dim = get_transformer_config(args.preset)["text_dim"]
    rows = []
    for method, stages, iterations in (("pyramidal", (0, 1, 2), 1), ("dmd-ot", (0,), 1 if args.tiny else 3)):
        for samples in (1, 2):
            config = load_config(
                None,
                [
                    f"model.init={args.preset}",
                    "model.gradient_checkpointing=true",
                    f"train.precision={precision}",
                    f"objective.name={method}",
                    *(
                        [f"objective.teacher={args.preset}", "objective.critic_ratio=1"]
                        if method == "dmd-ot"
                        else []
                    ),
                ],
            )
            objective = build_objective(config)
            for net in [*objective.nets.values(), *frozen_networks(objective)]:
                net.to(device)
            optimizers = {
                g: torch.optim.AdamW([p for p in n.parameters() if p.requires_grad])
                for g, n in objective.nets.items()
            }
            batch = training_batch(geometry, samples, stages, text_dim, device)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            stages_seen = []
            for _ in range(iterations):  # a DMD-OT iteration: a generator update, then a critic update
                for group in objective.nets:
                    loss_fn = objective.generator_loss if group == "generator" else objective.critic_loss
                    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                        loss, logs = loss_fn(batch, torch.Generator().manual_seed(len(stages_seen)))
                    loss.backward()
                    optimizers[group].step()
                    optimizers[group].zero_grad(set_to_none=True)
                    if "stage" in logs:  # DMD's grid stage; pyramidal steps train every stage
                        stages_seen.append(int(logs["stage"]))
            peak = torch.cuda.max_memory_allocated(device) / GB if device.type == "cuda" else None
            guess = estimate(args.preset, method, geometry[0].num_tokens, samples)
            rows.append(
                {
                    "method": method,
                    "samples": samples,
                    "stages_seen": stages_seen,
                    "measured_peak_gb": peak,
                    "estimate_gb": guess["total_gb"],
                }
            )
            print(
                f"  {method} x{samples}: peak {peak} GB, estimate {guess['total_gb']:.1f} GB", file=sys.stderr
            )
            del objective, optimizers, batch
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return rows


# 4. 14B on the meta device -----------------------------------------------------------------------------
def big_model_plan(geometry) -> dict:
    config = get_transformer_config(BIG)
    shapes = [(config["in_channels"], *g.latent) for g in geometry]
    plans = []
    for method in ("pyramidal", "dmd-ot"):
        for samples in (1, 2):
            for gpus, offload in ((1, False), (8, False), (8, True)):
                guess = estimate(BIG, method, geometry[0].num_tokens, samples, gpus, offload)
                plans.append(
                    {
                        "method": method,
                        "samples": samples,
                        "gpus": gpus,
                        "offload_optimizer": offload,
                        **{k: guess[k] for k in ("resident_gb", "activations_gb", "total_gb")},
                    }
                )
    return {
        "preset": BIG,
        "parameters": parameter_count(BIG),
        "tflops_per_forward": [transformer_forward_flops(config, s, 512) / 1e12 for s in shapes],
        "memory": plans,
    }


def format_table(result: dict) -> str:
    s = result["setting"]
    lines = [
        f"{s['preset']} {s['num_frames']}x{s['height']}x{s['width']} {s['dtype']} on {s['device_name']}",
        "",
    ]
    lines.append(f"{'stage':>5} {'tokens':>7} {'eager ms':>10} {'compiled ms':>12} {'paper ms':>9}")
    for r in result["latency"]["stages"]:
        compiled, paper = r.get("compiled_ms"), r["paper_ms"]
        lines.append(
            f"{r['stage']:>5} {r['tokens']:>7,} {r['eager_ms']:>10.2f} "
            f"{'-' if compiled is None else f'{compiled:.2f}':>12} {'-' if paper is None else paper:>9}"
        )
    lines += ["", f"{'schedule':>9} {'evals':>6} {'transformer s':>14} {'decode s':>9}"]
    for r in result["generate"]:
        lines.append(
            f"{r['schedule']:>9} {r['evaluations']:>6} {r['transformer_s']:>14.2f} "
            f"{'-' if r['decode_s'] is None else format(r['decode_s'], '.2f'):>9}"
        )
    lines += ["", f"{'training update':>16} {'samples':>8} {'measured GB':>12} {'estimate GB':>12}  stages"]
    for r in result["memory"]:
        peak = "-" if r["measured_peak_gb"] is None else f"{r['measured_peak_gb']:.1f}"
        lines.append(
            f"{r['method']:>16} {r['samples']:>8} {peak:>12} {r['estimate_gb']:>12.2f}  "
            f"{r['stages_seen'] or 'all'}"
        )
    big = result["big"]
    lines += [
        "",
        f"{big['preset']} (meta device): {big['parameters']:,} parameters; TFLOPs per forward "
        + " / ".join(f"{t:.1f}" for t in big["tflops_per_forward"]),
    ]
    lines.append(
        f"{'method':>10} {'samples':>8} {'GPUs':>5} {'offload':>8} {'resident':>9} {'activ.':>7} "
        f"{'total GB':>9}"
    )
    for r in big["memory"]:
        lines.append(
            f"{r['method']:>10} {r['samples']:>8} {r['gpus']:>5} {str(r['offload_optimizer']):>8} "
            f"{r['resident_gb']:>9.1f} {r['activations_gb']:>7.1f} {r['total_gb']:>9.1f}"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; exercise the script with --tiny --device cpu", file=sys.stderr)
        return 2
    dtype = gpu_latency.DTYPES[args.dtype]
    config = get_transformer_config(args.preset)
    geometry = stage_geometry(
        args.num_frames,
        args.height,
        args.width,
        num_stages=args.stages,
        vae_scale_spatial=args.vae_scale,
        patch_size=config["patch_size"],
    )
    started = time.perf_counter()
    result = {
        "setting": {k: getattr(args, k) for k in ("preset", "num_frames", "height", "width", "dtype", "tiny")}
        | {"device_name": gpu_latency.torch_device_name(args.device), "text_encoder": "tiny random UMT5"},
        "latency": stage_latency(args, device, dtype, geometry),
        "generate": generation(args, device, dtype),
        "memory": training_memory(args, device, geometry),
        "big": big_model_plan(stage_geometry(81, 448, 832, num_stages=3)),
    }
    result["wall_s"] = time.perf_counter() - started
    table = format_table(result)
    out = Path(args.out)
    write_json(out, result)
    with atomic_path(out.with_suffix(".txt")) as tmp:
        tmp.write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
