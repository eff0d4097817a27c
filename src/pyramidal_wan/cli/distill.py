"""`pyramidal-wan distill`: few-step distillation with the one training loop (METHOD.md 6-8)."""

from __future__ import annotations

from pyramidal_wan.errors import InputError

METHODS = ("dmd", "dmd-ot", "dmd-pt", "dmd-pt-star", "ppf-dmd", "adv-o", "adv-p")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "distill",
        help="distil a model into a few-step generator: Wan-DMD, DMD-OT, DMD-PT(*), PPF-DMD, Adv-O, Adv-P",
        description="Run the training loop with a step-distillation objective. --method sets "
        "objective.name; the config (see configs/*/distill-*.yaml) holds the teacher, schedule and weights. "
        "Overrides look like train.steps=100; a run resumes from OUT/checkpoint unless --no-resume. The "
        "exported OUT/model samples with the few-step sampler at the student's schedule by default.",
    )
    parser.add_argument("--method", required=True, choices=METHODS)
    parser.add_argument("--config", default=None, help="YAML config; defaults + overrides without")
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. train.steps=100")
    parser.add_argument("--no-resume", action="store_true", help="start over even if a checkpoint exists")
    parser.set_defaults(func=run_distill)


def run_distill(args) -> int:
    from pyramidal_wan.training.config import load_config
    from pyramidal_wan.training.trainer import train

    config = load_config(args.config, args.overrides)
    named = config.objective.name
    # A distillation config names its method; running it as another one would mix the methods' settings.
    if named in METHODS and named != args.method:
        raise InputError(
            f"{args.config} is a {named} config but --method is {args.method}; pass a {args.method} config"
        )
    config.objective.name = args.method
    out = train(config, resume=not args.no_resume)
    print(f"done: checkpoint {out / 'checkpoint'}, few-step model {out / 'model'}")
    return 0
