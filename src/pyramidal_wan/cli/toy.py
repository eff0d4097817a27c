"""`pyramidal-wan toy ...`: the procedural toy world's dataset writer and the toy model family's recipes."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from pyramidal_wan.cli.options import (
    channel_list,
    finite_float,
    non_negative_float,
    non_negative_int,
    output_path,
    positive_float,
    positive_int,
)
from pyramidal_wan.errors import InputError
from pyramidal_wan.toy.world import SPLITS


def register(subparsers) -> None:
    """Add the `toy` command group and its sub-commands."""
    parser = subparsers.add_parser(
        "toy",
        help="toy video world: make datasets, train the toy model family",
        description="The procedural toy text-to-video world and the recipes of the bundled toy models.",
    )
    commands = parser.add_subparsers(dest="toy_command", required=True, metavar="TOY_COMMAND")
    _register_make_dataset(commands)
    _register_train_vae(commands)
    _register_sample_latents(commands)
    _register_assemble(commands)
    _register_bundle(commands)


def _register_bundle(commands) -> None:
    parser = commands.add_parser(
        "bundle",
        help="add a trained model folder to the bundled family (models/toy/NAME, shared components)",
        description=(
            "Copy a trained model folder into the bundled toy family as INTO/NAME: its own transformer and "
            "configs, with tokenizer, text encoder, VAE and scheduler stored once in INTO/shared and "
            "linked. --vae installs a newer decoder of the same VAE encoder for the whole family."
        ),
    )
    parser.add_argument("--model", required=True, help="a trained model folder (e.g. runs/toy/base/model)")
    parser.add_argument("--name", required=True, help="member name (e.g. base, pyramidal, few-step)")
    parser.add_argument("--into", default="models/toy", help="the family folder (default models/toy)")
    parser.add_argument("--vae", default=None, help="a VAE folder with the same encoder (newer decoder)")
    parser.add_argument(
        "--base", help="the model card's base model (default: the training run's model.init folder)"
    )
    parser.add_argument(
        "--results", action="append", default=[], help="evaluate records (.jsonl) for the model card"
    )
    parser.set_defaults(func=run_bundle)


def run_bundle(args: argparse.Namespace) -> int:
    from pyramidal_wan.cli.card import write_card
    from pyramidal_wan.toy.family import bundle_member

    folder = bundle_member(args.model, args.name, args.into, vae=args.vae)
    # A training run's export (RUN/model) names its run; records of the run's folder count as the member's.
    model = Path(args.model)
    write_card(folder, args.invocation, args.base, results=args.results, tuned=model, run=model.parent)
    size = sum(p.stat().st_size for p in folder.parent.rglob("*") if p.is_file() and not p.is_symlink())
    print(f"bundled {args.model} as {folder}; the family in {folder.parent} now takes {size / 2**20:.1f} MiB")
    return 0


def _register_assemble(commands) -> None:
    parser = commands.add_parser(
        "assemble",
        help="make the toy pipeline folder (text stack + trained VAE + random transformer)",
        description=(
            "Write a diffusers Wan pipeline folder from the toy tokenizer, the frozen toy text encoder, a "
            "trained toy VAE folder and a randomly initialised toy-wan transformer: the skeleton that "
            "prepare-data encodes with and that training runs export their transformers into."
        ),
    )
    parser.add_argument("--vae", required=True, help="a toy VAE folder (e.g. runs/toy-vae/vae)")
    parser.add_argument("--out", type=output_path, required=True, help="the pipeline folder to write")
    parser.add_argument("--seed", type=int, default=0, help="seed of the text encoder and transformer")
    parser.set_defaults(func=run_assemble)


def run_assemble(args: argparse.Namespace) -> int:
    from pyramidal_wan.toy.family import assemble_toy_pipeline

    folder = assemble_toy_pipeline(args.out, vae=args.vae, seed=args.seed)
    print(f"wrote {folder}")
    return 0


def _register_make_dataset(commands) -> None:
    parser = commands.add_parser(
        "make-dataset",
        help="write toy clips (MP4) and captions.jsonl",
        description=(
            "Write N toy clips as MP4 files plus captions.jsonl (one JSON record per clip: video, caption, "
            "seed, index, split, scene). Rerunning with the same settings skips clips already written."
        ),
    )
    parser.add_argument("--out", type=output_path, required=True, help="output folder")
    parser.add_argument("--n", type=positive_int, required=True, help="number of clips")
    parser.add_argument("--seed", type=int, default=0, help="clip stream seed (default 0)")
    parser.add_argument("--split", choices=SPLITS, default="train", help="caption combinations to draw from")
    parser.add_argument(
        "--fps", type=positive_float, default=8.0, help="frames per second of the MP4s (default 8)"
    )
    parser.set_defaults(func=run_make_dataset)


def _register_train_vae(commands) -> None:
    parser = commands.add_parser(
        "train-vae",
        help="train the toy AutoencoderKLWan on clips rendered on the fly",
        description=(
            "Train the toy VAE (17x64x64 -> 16x5x16x16) with L1 + MSE + a small KL on random crops of "
            "clips rendered on the fly. Checkpoints to "
            "OUT/checkpoint and exports a diffusers folder OUT/vae with measured latents_mean/latents_std "
            "every --checkpoint-every steps and at the end. Unset flags take the defaults, or with --resume "
            "the saved run's values."
        ),
    )
    parser.add_argument("--out", type=output_path, required=True, help="run folder")
    parser.add_argument("--steps", type=positive_int, help="total optimiser steps (default 1000)")
    parser.add_argument("--batch-size", type=positive_int, help="training crops per step (default 8)")
    parser.add_argument("--lr", type=positive_float, help="AdamW learning rate (default 1e-4)")
    parser.add_argument("--seed", type=int, help="seed of weights, clips and noise (default 0)")
    parser.add_argument("--kl-weight", type=finite_float, help="KL weight (default 1e-4)")
    parser.add_argument(
        "--warmup-steps", type=non_negative_int, help="learning-rate warm-up steps (default 50)"
    )
    parser.add_argument(
        "--checkpoint-every", type=positive_int, help="steps between checkpoints (default 100)"
    )
    parser.add_argument(
        "--freeze-encoder-from",
        type=non_negative_int,
        help="train only the decoder from this step on, so latents cached from that encoder stay valid",
    )
    parser.add_argument(
        "--init",
        help="a trained toy-VAE folder to start from (default: random weights), e.g. models/toy/shared/vae",
    )
    parser.add_argument("--num-frames", type=positive_int, help="frames per clip, 4k+1 (default 17)")
    parser.add_argument(
        "--resolution", type=positive_int, help="clip height and width, divisible by 4 (default 64)"
    )
    parser.add_argument(
        "--crop-frames", type=positive_int, help="frames per training crop, 4k+1 (default 17)"
    )
    parser.add_argument("--crop-size", type=positive_int, help="training crop height and width (default 32)")
    parser.add_argument(
        "--crop-centre", choices=("random", "object"), help="where crops sit: anywhere or on the first object"
    )
    parser.add_argument(
        "--decoder-latent",
        choices=("sample", "mean"),
        help="what the decoder learns from while the encoder is frozen: a posterior sample (default) or the "
        "posterior mean, the latent the cache stores",
    )
    parser.add_argument(
        "--decoder",
        choices=("wan", "tiny"),
        help="what trains: the VAE itself (wan, default) or a tiny decoder (models.tiny_decoder) for the "
        "frozen VAE given as --init, exported to OUT/decoder",
    )
    parser.add_argument(
        "--decoder-target",
        choices=("clip", "vae"),
        help="what a tiny decoder learns to reproduce: the clip (default) or the frozen VAE decoder's video "
        "of the same latent (vae)",
    )
    parser.add_argument(
        "--latent-noise",
        type=non_negative_float,
        help="tiny decoder, --decoder-target vae: per clip, noise of std up to this times the latents' std "
        "on the decoded latent (default 0)",
    )
    parser.add_argument(
        "--init-decoder", help="a tiny decoder folder to start from (default: random weights)"
    )
    parser.add_argument(
        "--latents",
        help="tiny decoder, --decoder-target vae: learn from crops of a generator's latents (a toy "
        "sample-latents file) instead of the encoder's latents of rendered clips",
    )
    parser.add_argument(
        "--tiny-channels",
        type=channel_list,
        help="a new tiny decoder's channels per level, comma-separated (default 64,32,16)",
    )
    parser.add_argument("--stats-clips", type=positive_int, help="clips for latent statistics (default 256)")
    parser.add_argument("--eval-clips", type=positive_int, help="held-out clips for the PSNR (default 32)")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint")
    parser.add_argument("--threads", type=positive_int, help="torch CPU threads (default: torch's choice)")
    parser.set_defaults(func=run_train_vae)


def _register_sample_latents(commands) -> None:
    parser = commands.add_parser(
        "sample-latents",
        help="generate toy videos and save their raw latents (what a tiny decoder learns from)",
        description=(
            "Generate N videos of training-split toy captions with a model folder and write their raw "
            "latents (un-normalised with the VAE's latents_mean / latents_std) to a safetensors file, for "
            "toy train-vae --decoder tiny --decoder-target vae --latents FILE."
        ),
    )
    parser.add_argument("--model", required=True, help="a pipeline folder, e.g. models/toy/few-step")
    parser.add_argument("--out", type=output_path, required=True, help="the .safetensors file to write")
    parser.add_argument("--n", type=positive_int, required=True, help="number of videos")
    parser.add_argument("--schedule", help="steps per stage (default: the model's)")
    parser.add_argument("--seed", type=int, default=1, help="caption and noise seed (default 1)")
    parser.add_argument("--batch-size", type=positive_int, default=16, help="videos per call (default 16)")
    parser.add_argument("--threads", type=positive_int, help="torch CPU threads (default: torch's choice)")
    parser.set_defaults(func=run_sample_latents)


def run_sample_latents(args: argparse.Namespace) -> int:
    """Run `toy sample-latents`."""
    from pyramidal_wan.toy.vae import sample_latents

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    latents = sample_latents(args.model, args.out, args.n, args.schedule, args.seed, args.batch_size)
    print(f"wrote {args.out}: latents {tuple(latents.shape)}")
    return 0


def run_make_dataset(args: argparse.Namespace) -> int:
    """Run `toy make-dataset`."""
    from pyramidal_wan.toy.dataset import make_dataset

    captions = make_dataset(args.out, args.n, seed=args.seed, split=args.split, fps=args.fps)
    print(f"wrote {args.n} {args.split} clips and {captions}")
    return 0


_TRAIN_VAE_FIELDS = (
    "steps",
    "batch_size",
    "lr",
    "seed",
    "kl_weight",
    "warmup_steps",
    "checkpoint_every",
    "freeze_encoder_from",
    "decoder_latent",
    "decoder",
    "decoder_target",
    "latent_noise",
    "init_decoder",
    "tiny_channels",
    "latents",
    "init",
    "num_frames",
    "resolution",
    "crop_frames",
    "crop_size",
    "crop_centre",
    "stats_clips",
    "eval_clips",
)


def run_train_vae(args: argparse.Namespace) -> int:
    """Run `toy train-vae`."""
    from pyramidal_wan.toy.vae import VAETrainConfig, resume_config, train_vae

    if args.threads is not None:
        if args.threads < 1:
            raise InputError(f"--threads must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    given = {name: getattr(args, name) for name in _TRAIN_VAE_FIELDS}
    if args.resume:
        config = resume_config(args.out, **given)
    else:
        config = VAETrainConfig(**{k: v for k, v in given.items() if v is not None})
    metrics = train_vae(args.out, config, resume=args.resume)
    if config.decoder == "tiny":
        print(
            f"tiny decoder at step {metrics['step']}: held-out reconstruction PSNR "
            f"{metrics['psnr_heldout']:.2f} dB (the VAE's decoder: {metrics['psnr_heldout_vae_decoder']:.2f} "
            f"dB); diffusers folder {args.out}/decoder"
        )
        return 0
    print(
        f"toy VAE at step {metrics['step']}: held-out reconstruction PSNR {metrics['psnr_heldout']:.2f} dB; "
        f"diffusers folder {args.out}/vae"
    )
    return 0
