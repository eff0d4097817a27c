"""What the VAE decode costs on a CPU, and what makes it cheaper without changing the video.

Decodes the latents of one few-step video (the bundled toy few-step model, 2-2-1, at each size given) with
the pipeline's `decode_latents` under each variant below, in interleaved rounds, and prints the median CPU
seconds (process time: steadier than wall time on a shared machine), the speed-up over PyTorch's default
and the PSNR / largest difference of the video against the float32 default decode:

- fp32 default: PyTorch's own convolution choice (`slow_conv3d` for the toy VAE's small 3D convolutions);
- fp32 oneDNN convolutions: the 3D convolutions through oneDNN only (`models.vae_speed.onednn_conv3d`);
- fp32 pipeline: the pipeline's decode, oneDNN convolutions and RMS norms as plain sums
  (`models.vae_speed.fast_cpu_inference`);
- + inference_mode: the same under `torch.inference_mode` instead of `no_grad`;
- bf16 autocast: the pipeline's decode under bfloat16 autocast (not exact);
- + tiling: diffusers' spatial tiling with tiles of half the frame (a memory saving, not a time one);
- tiny decoder: `--decoder DIR`'s `TinyWanDecoder` in place of the VAE's decoder (not exact: its PSNR
  against the VAE's video is what it loses; ToyBench scores that loss in `docs/results.md`).

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/decode_cost.py --size 64 --size 128 \
        --decoder models/toy/tiny-decoder

17x128x128 is the size of `pyramidal-wan bench`'s width-384 model, which decodes with the same VAE
architecture. Wan's decoder is already chunked: it runs one latent frame at a time against a feature cache.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import statistics
import time
from pathlib import Path

import torch
from diffusers import AutoencoderKLWan

from pyramidal_wan.models.loading import quiet_loading
from pyramidal_wan.models.tiny_decoder import load_folder_decoder
from pyramidal_wan.models.vae_speed import fast_cpu_inference, onednn_conv3d
from pyramidal_wan.pipelines import PyramidalWanPipeline


def psnr(video: torch.Tensor, reference: torch.Tensor) -> float:
    """PSNR (dB) of videos in [-1, 1] (peak-to-peak 2), clamped as the pipeline's postprocessing does."""
    mse = (video.float().clamp(-1, 1) - reference.float().clamp(-1, 1)).square().mean().item()
    return float("inf") if mse == 0 else 10 * torch.log10(torch.tensor(4.0 / mse)).item()


def variants(fast, plain_vae, height: int, width: int, decoder=None):
    """(name, vae, context, tiny decoder or None) of every decode variant; the first is the reference."""
    tiled = copy.deepcopy(plain_vae)
    tiled.enable_tiling(
        tile_sample_min_height=height // 2,
        tile_sample_min_width=width // 2,
        tile_sample_stride_height=height // 4,
        tile_sample_stride_width=width // 4,
    )
    fast_cpu_inference(tiled)
    convolutions_only = copy.deepcopy(plain_vae)
    onednn_conv3d(convolutions_only)
    bf16 = torch.autocast("cpu", dtype=torch.bfloat16)
    rows = [
        ("fp32 default", plain_vae, torch.no_grad, None),
        ("fp32 oneDNN convolutions", convolutions_only, torch.no_grad, None),
        ("fp32 pipeline (+ norms as sums)", fast, torch.no_grad, None),
        ("fp32 pipeline + inference_mode", fast, torch.inference_mode, None),
        ("bf16 autocast (pipeline)", fast, lambda: _both(torch.no_grad(), bf16), None),
        ("fp32 pipeline + tiling", tiled, torch.no_grad, None),
    ]
    return rows + ([("tiny decoder", fast, torch.no_grad, decoder)] if decoder is not None else [])


@contextlib.contextmanager
def _both(*contexts):
    with contextlib.ExitStack() as stack:
        for context in contexts:
            stack.enter_context(context)
        yield


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models/toy/few-step")
    parser.add_argument("--size", type=int, action="append", help="square pixel size (default 64 and 128)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timed rounds (default 3)")
    parser.add_argument("--decoder", help="also time this tiny decoder folder (e.g. models/toy/tiny-decoder)")
    args = parser.parse_args()
    decoder = load_folder_decoder(args.model, args.decoder)
    torch.set_num_threads(1)
    quiet_loading()
    plain_vae = AutoencoderKLWan.from_pretrained(Path(args.model) / "vae").eval()
    pipe = PyramidalWanPipeline.from_pretrained(args.model)  # routes its own VAE (fast_cpu_inference)
    pipe.set_progress_bar_config(disable=True)
    fast_vae = pipe.vae
    print(f"{'size':>10}  {'variant':32} {'s/decode':>9} {'speed-up':>9} {'PSNR dB':>8} {'max |diff|':>11}")
    for size in args.size or (64, 128):
        latents = pipe(
            "a red circle moving left on a dark blue background",
            height=size,
            width=size,
            generator=torch.Generator().manual_seed(0),
            output_type="latent",
        ).frames
        rows = variants(fast_vae, plain_vae, size, size, decoder)
        seconds = {name: [] for name, *_ in rows}
        videos = {}
        for _ in range(args.rounds + 1):  # the first round warms up
            for name, vae, context, tiny in rows:
                pipe.vae = vae
                pipe.set_decoder(tiny)
                with context():
                    start = time.process_time()
                    videos[name] = pipe.decode_latents(latents)
                    seconds[name].append(time.process_time() - start)
        pipe.vae = fast_vae
        reference_name = rows[0][0]
        reference_s = statistics.median(seconds[reference_name][1:])
        reference = videos[reference_name]
        frames = "x".join(map(str, reference.shape[2:]))
        for name, *_ in rows:
            median = statistics.median(seconds[name][1:])
            diff = (videos[name].float() - reference.float()).abs().max().item()
            print(
                f"{frames:>10}  {name:32} {median:9.3f} {reference_s / median:8.2f}x "
                f"{psnr(videos[name], reference):8.1f} {diff:11.2e}"
            )


if __name__ == "__main__":
    main()
