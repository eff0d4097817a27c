"""`pyramidal-wan prepare-data` and `pyramidal-wan finetune`."""

from __future__ import annotations

from pathlib import Path

from pyramidal_wan.errors import InputError


def register(subparsers) -> None:
    prep = subparsers.add_parser(
        "prepare-data",
        help="cache every stage's clean latent and the prompt embeddings of a video dataset",
        description="Decode a folder of videos + captions.jsonl, build each pyramid stage in pixel space "
        "(or latent space), VAE-encode and cache to safetensors shards. Resumable.",
    )
    prep.add_argument("--data", required=True, help="dataset folder: videos + captions.jsonl")
    prep.add_argument(
        "--model", required=True, help="a Wan folder whose vae/, tokenizer/, text_encoder/ to use"
    )
    prep.add_argument("--out", required=True, help="cache folder")
    prep.add_argument("--num-frames", type=int, required=True)
    prep.add_argument("--height", type=int, required=True)
    prep.add_argument("--width", type=int, required=True)
    prep.add_argument("--stages", type=int, default=3)
    prep.add_argument("--construction", choices=("pixel", "latent"), default="pixel")
    prep.add_argument("--temporal-filter", choices=("average", "subsample"), default="average")
    prep.add_argument("--dtype", choices=("float16", "bfloat16", "float32"), default="float16")
    prep.add_argument("--batch-size", type=int, default=8)
    prep.add_argument("--shard-size", type=int, default=256)
    prep.add_argument("--limit", type=int, default=None, help="use only the first N videos")
    prep.set_defaults(func=run_prepare)

    tune = subparsers.add_parser(
        "finetune",
        help="train with a YAML config: plain, multi-resolution or pyramidal flow matching",
        description="Run the training loop on a prepared cache. Overrides look like train.lr=1e-4; "
        "a run resumes from OUT/checkpoint unless --no-resume.",
    )
    tune.add_argument(
        "--config", default=None, help="YAML config (see configs/); defaults + overrides without"
    )
    tune.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. train.steps=100")
    tune.add_argument("--no-resume", action="store_true", help="start over even if a checkpoint exists")
    tune.set_defaults(func=run_finetune)


def run_prepare(args) -> int:
    from pyramidal_wan.data.cache import CacheSettings, prepare_data
    from pyramidal_wan.models.loading import load_pipeline_components

    if not (Path(args.data) / "captions.jsonl").is_file():
        raise InputError(f"{args.data} has no captions.jsonl (one JSON record per video: video, caption)")
    settings = CacheSettings(
        args.num_frames,
        args.height,
        args.width,
        args.stages,
        construction=args.construction,
        temporal_filter=args.temporal_filter,
        dtype=args.dtype,
    )
    parts = load_pipeline_components(args.model, components=("vae", "tokenizer", "text_encoder"))
    manifest = prepare_data(
        args.data,
        args.out,
        parts["vae"],
        parts["tokenizer"],
        parts["text_encoder"],
        settings,
        shard_size=args.shard_size,
        batch_size=args.batch_size,
        limit=args.limit,
    )
    cached = sum(s["count"] for s in manifest["shards"])
    print(
        f"cached {cached} videos in {args.out} ({len(manifest['skipped'])} skipped"
        + (
            f"; first: {manifest['skipped'][0]['video']}: {manifest['skipped'][0]['reason']})"
            if manifest["skipped"]
            else ")"
        )
    )
    return 0


def run_finetune(args) -> int:
    from pyramidal_wan.training.config import load_config
    from pyramidal_wan.training.trainer import train

    config = load_config(args.config, args.overrides)
    out = train(config, resume=not args.no_resume)
    print(f"done: checkpoint {out / 'checkpoint'}, model {out / 'model'}")
    return 0
