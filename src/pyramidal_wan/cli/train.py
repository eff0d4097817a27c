"""`pyramidal-wan synthesize-data`, `pyramidal-wan prepare-data` and `pyramidal-wan finetune`."""

from __future__ import annotations

from pathlib import Path

from pyramidal_wan.cli.card import DEFAULT_LICENSE
from pyramidal_wan.cli.options import (
    finite_float,
    non_negative_int,
    output_path,
    positive_float,
    positive_int,
)
from pyramidal_wan.errors import InputError


def register(subparsers) -> None:
    prep = subparsers.add_parser(
        "prepare-data",
        help="cache every stage's clean latent and the prompt embeddings of a video dataset",
        description="Decode a folder of videos + captions.jsonl, build each pyramid stage in pixel space "
        "(or latent space), VAE-encode and cache to safetensors shards. Resumable. With --from-cache "
        "and --construction latent, derive the latent-space ablation's cache from a pixel cache instead "
        "(no video decoding, no VAE).",
    )
    prep.add_argument("--data", help="dataset folder: videos + captions.jsonl")
    prep.add_argument("--model", help="a Wan folder whose vae/, tokenizer/, text_encoder/ to use")
    prep.add_argument("--out", type=output_path, required=True, help="cache folder")
    prep.add_argument("--num-frames", type=positive_int)
    prep.add_argument("--height", type=positive_int)
    prep.add_argument("--width", type=positive_int)
    prep.add_argument(
        "--from-cache", help="a pixel cache to downsample in latent space (needs --construction latent)"
    )
    prep.add_argument("--stages", type=positive_int, default=3)
    prep.add_argument("--construction", choices=("pixel", "latent"), default="pixel")
    prep.add_argument("--temporal-filter", choices=("average", "subsample"), default="average")
    prep.add_argument("--dtype", choices=("float16", "bfloat16", "float32"), default="float16")
    prep.add_argument("--batch-size", type=positive_int, default=8)
    prep.add_argument("--shard-size", type=positive_int, default=256)
    prep.add_argument("--limit", type=positive_int, default=None, help="use only the first N videos")
    prep.set_defaults(func=run_prepare)
    add_synthesize_arguments(
        subparsers.add_parser(
            "synthesize-data",
            help="sample a synthetic training set (MP4s + captions.jsonl) with a teacher model",
            description="Sample videos of each prompt with a teacher model folder into the dataset format "
            "prepare-data reads. Resumable (videos on disk are skipped); run under `accelerate launch` or "
            "`torchrun` to split the prompts over processes / GPUs. Each video's seed comes from "
            "(--seed, prompt index, video index), so the result does not depend on the sharding.",
        )
    )

    tune = subparsers.add_parser(
        "finetune",
        help="train with a YAML config: plain, multi-resolution or pyramidal flow matching",
        description="Run the training loop on a prepared cache. Overrides look like train.lr=1e-4; "
        "a run resumes from its newest complete checkpoint unless --no-resume; one run at a time holds OUT.",
    )
    tune.add_argument(
        "--config", default=None, help="YAML config (see configs/); defaults + overrides without"
    )
    tune.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. train.steps=100")
    tune.add_argument("--no-resume", action="store_true", help="start over, discarding the run's checkpoints")
    tune.set_defaults(func=run_finetune)

    export = subparsers.add_parser(
        "export",
        help="write a training run's model folder, or a model's difference to its base as a LoRA",
        description="Export RUN/checkpoint as a diffusers Wan folder, e.g. to evaluate a run that is still "
        "training or was stopped early (finetune and distill export RUN/model themselves at the end). "
        "With --lora RANK, write instead the difference between a model (--model, or the run's export) and "
        "its base (--base, or the run's model.init) as a LoRA folder that diffusers' load_lora_weights "
        "reads: a truncated SVD of each Linear weight delta, with the fraction of the delta's energy kept; "
        "a model trained as a LoRA of that base (model.lora_rank) is written as it is. Every folder gets a "
        "README.md model card.",
    )
    export.add_argument("--run", help="a finetune or distill output folder (train.out)")
    export.add_argument("--model", help="--lora: the tuned model folder (instead of --run)")
    export.add_argument("--base", help="--lora: the base model folder (default: the run's model.init)")
    export.add_argument("--lora", metavar="RANK", help="write a LoRA of this rank (or 'full')")
    export.add_argument(
        "--out",
        type=output_path,
        default=None,
        help="output folder (default RUN/model-step{STEP}, or MODEL-lora-r{RANK})",
    )
    export.add_argument(
        "--license", default=DEFAULT_LICENSE, help=f"model card license (default {DEFAULT_LICENSE})"
    )
    export.add_argument(
        "--overwrite",
        action="store_true",
        help="replace --out even if it holds files and is not a model folder",
    )
    export.set_defaults(func=run_export)


def add_synthesize_arguments(parser) -> None:
    """The arguments of `synthesize-data`."""
    parser.add_argument(
        "--teacher", required=True, help="diffusers Wan pipeline folder that samples the data"
    )
    parser.add_argument(
        "--prompts", required=True, help="text file, one prompt a line, or .jsonl with a caption/prompt"
    )
    parser.add_argument(
        "--out", type=output_path, required=True, help="dataset folder: videos + captions.jsonl"
    )
    parser.add_argument(
        "--schedule", help="steps per stage, lowest resolution first, e.g. 0-0-50 (default: the teacher's)"
    )
    parser.add_argument("--sampler", help="multistep or fewstep (default: the teacher's)")
    parser.add_argument(
        "--guidance-scale", type=finite_float, help="CFG scale, 1 = off (default: the teacher's)"
    )
    parser.add_argument("--negative-prompt", help="unconditional text for CFG (default: the teacher's)")
    parser.add_argument("--num-frames", type=positive_int, help="pixel frames, 4k+1 (default: the teacher's)")
    parser.add_argument("--height", type=positive_int, help="pixel height (default: the teacher's)")
    parser.add_argument("--width", type=positive_int, help="pixel width (default: the teacher's)")
    parser.add_argument(
        "--seed", type=int, default=0, help="run seed; each video's derives from it (default 0)"
    )
    parser.add_argument(
        "--videos-per-prompt", type=positive_int, default=1, help="videos per prompt (default 1)"
    )
    parser.add_argument(
        "--fps", type=positive_float, default=16.0, help="frame rate written to the MP4s (default 16)"
    )
    parser.add_argument(
        "--crf", type=non_negative_int, default=0, help="H.264 quality, 0 = lossless (default 0)"
    )
    parser.add_argument("--dtype", default="float32", help="float32 or bfloat16 (transformer, text encoder)")
    parser.add_argument("--threads", type=positive_int, help="torch CPU threads (default: torch's choice)")
    parser.set_defaults(func=run_synthesize)


def run_synthesize(args) -> int:
    from pyramidal_wan.data.synthesize import SynthesisSettings, process_state, synthesize
    from pyramidal_wan.models.loading import quiet_loading

    if args.threads is not None and args.threads < 1:
        raise InputError(f"--threads must be at least 1, got {args.threads}")
    settings = SynthesisSettings(
        num_frames=args.num_frames,
        height=args.height,
        width=args.width,
        schedule=args.schedule,
        sampler=args.sampler,
        guidance_scale=args.guidance_scale,
        negative_prompt=args.negative_prompt,
        seed=args.seed,
        videos_per_prompt=args.videos_per_prompt,
        fps=args.fps,
        crf=args.crf,
        dtype=args.dtype,
    )
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    quiet_loading()
    summary = synthesize(args.teacher, args.prompts, args.out, settings)
    if process_state().is_main_process:
        print(
            f"{summary['videos']} videos in {args.out}: {summary['written']} written, "
            f"{summary['skipped']} already on disk (skipped); captions in {Path(args.out) / 'captions.jsonl'}"
        )
    return 0


def run_prepare(args) -> int:
    from pyramidal_wan.data.cache import CONDITIONED_MODES, CacheSettings, derive_latent_cache, prepare_data
    from pyramidal_wan.data.dataset import read_records
    from pyramidal_wan.models.loading import load_pipeline_components, read_model_index
    from pyramidal_wan.models.presets import get_transformer_config
    from pyramidal_wan.models.wan_family import IMAGE_ENCODER_COMPONENTS, image_mode
    from pyramidal_wan.pipelines import WAN21_NEGATIVE_PROMPT
    from pyramidal_wan.pipelines.planning import check_folder

    if args.from_cache is not None:
        if args.construction != "latent":
            raise InputError("--from-cache derives a latent-construction cache: add --construction latent")
        manifest = derive_latent_cache(args.from_cache, args.out)
        cached = sum(s["count"] for s in manifest["shards"])
        print(f"derived {cached} videos' latent-space stages from {args.from_cache} into {args.out}")
        return 0
    required = ("data", "model", "num_frames", "height", "width")
    missing = ", ".join(f"--{n.replace('_', '-')}" for n in required if getattr(args, n) is None)
    if missing:
        raise InputError(f"prepare-data needs {missing} (or --from-cache with --construction latent)")
    if not (Path(args.data) / "captions.jsonl").is_file():
        raise InputError(f"{args.data} has no captions.jsonl (one JSON record per video: video, caption)")
    read_records(args.data)  # the whole listing, before any model is loaded or anything written
    index = read_model_index(args.model)
    check_folder(args.model)  # an image-to-video folder must fit its VAE and have its CLIP encoder
    mode = image_mode(get_transformer_config(args.model), bool(index.get("expand_timesteps", False)))
    # TI2V-5B ("first_frame") caches no conditions: its pixel-space stage latents begin with the image latents
    conditioning = mode if mode in CONDITIONED_MODES else None
    settings = CacheSettings(
        args.num_frames,
        args.height,
        args.width,
        args.stages,
        construction=args.construction,
        temporal_filter=args.temporal_filter,
        dtype=args.dtype,
        image_conditioning=conditioning,
    )
    names = ("vae", "tokenizer", "text_encoder") + (IMAGE_ENCODER_COMPONENTS if mode == "clip" else ())
    parts = load_pipeline_components(args.model, components=names)
    # The model's negative prompt: the distillation teachers' unconditional text, as the model samples.
    negative = index.get("default_negative_prompt", WAN21_NEGATIVE_PROMPT)
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
        negative_prompt=negative,
        image_encoder=parts.get("image_encoder"),
        image_processor=parts.get("image_processor"),
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
    if conditioning is not None:
        print(f"  with each video's first frame as image conditioning per stage ({conditioning!r})")
    if mode == "first_frame" and args.construction == "pixel":
        print("  each stage latent's first frame is the clean image latent of image-to-video training")
    elif mode == "first_frame":
        print(
            "  note: latent-construction stages do not begin with the stage image latents; image-to-video "
            "training (data.image_to_video) needs --construction pixel"
        )
    return 0


def run_finetune(args) -> int:
    from pyramidal_wan.training.config import load_config
    from pyramidal_wan.training.trainer import train

    config = load_config(args.config, args.overrides)
    out = train(config, resume=not args.no_resume)
    print(f"done: checkpoint {out / 'checkpoint'}, model {out / 'model'}")
    return 0


def run_export(args) -> int:
    from pyramidal_wan.cli.card import write_card

    if (args.run is None) == (args.model is None) or (args.model is not None and args.lora is None):
        raise InputError("export needs --run RUN, or --model MODEL --base BASE --lora RANK")
    if args.lora is not None:
        return run_export_lora(args)
    config = _run_config(args.run)
    from pyramidal_wan.training.trainer import export_checkpoint

    folder, step = export_checkpoint(config, args.out, overwrite=args.overwrite)
    write_card(folder, command=args.invocation, license=args.license, run=args.run)
    print(f"exported step {step} of {args.run} to {folder}")
    return 0


def _run_config(run: str):
    from pyramidal_wan.training.config import load_config

    config_path = Path(run) / "config.yaml"
    if not config_path.is_file():
        raise InputError(f"{run} is not a training run (no config.yaml); pass the run's train.out folder")
    config = load_config(str(config_path), [])
    # The run is the folder given, wherever it was created or copied from: never the stored train.out.
    config.train.out = str(run)
    return config


def _run_base(config) -> str | None:
    """The model folder a run started from (model.init), or None for a preset (random initialisation)."""
    return config.model.init if Path(config.model.init).is_dir() else None


def run_export_lora(args) -> int:
    import tempfile

    from pyramidal_wan.cli.card import write_card
    from pyramidal_wan.models.lora import export_lora, parse_rank

    rank = parse_rank(args.lora)
    with tempfile.TemporaryDirectory() as tmp:
        if args.run is not None:
            config = _run_config(args.run)
            base = args.base or _run_base(config)
            if base is None:
                raise InputError(f"{args.run} started from a preset, not a model folder: pass --base BASE")
            from pyramidal_wan.training.trainer import export_checkpoint

            model, _ = export_checkpoint(config, Path(tmp) / "model")
            default_out = Path(args.run) / f"lora-r{args.lora}"
        else:
            model, base = Path(args.model), args.base
            default_out = Path(f"{model.resolve()}-lora-r{args.lora}")
        if base is None or not Path(base).exists():
            raise InputError(f"--base {base} must be the base model's folder (pipeline or transformer)")
        out = Path(args.out) if args.out is not None else default_out
        exported = export_lora(model, base, rank, out)
        write_card(
            out, command=args.invocation, base=str(base), license=args.license, lora=exported, tuned=model
        )
    print(f"wrote {exported.path} and {out / 'README.md'}")
    if exported.trained:
        print(f"  the model's own trained LoRA (rank {exported.rank}), written as it is")
    else:
        extraction = exported.extraction
        print(
            f"  rank {'full' if rank is None else rank} (largest module rank {exported.rank}): "
            f"{100 * extraction.kept_fraction:.2f}% of the weight delta's energy kept"
        )
        if extraction.left_out:
            share = extraction.left_out_energy / (extraction.linear_energy + extraction.left_out_energy)
            print(
                f"  note: {len(extraction.left_out)} non-Linear parameters also differ (e.g. "
                f"{extraction.left_out[0]}; {100 * share:.2f}% of the delta's energy): a LoRA cannot "
                "carry them"
            )
    return 0
