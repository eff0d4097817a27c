"""`pyramidal-wan distill`: few-step distillation with the one training loop (METHOD.md 6-8)."""

from __future__ import annotations

from pyramidal_wan.training.methods import FEW_STEP_METHODS, METHODS


def register(subparsers) -> None:
    names = ", ".join(f"{name} ({METHODS[name].summary})" for name in FEW_STEP_METHODS)
    parser = subparsers.add_parser(
        "distill",
        help=f"distil a model into a few-step generator: {', '.join(FEW_STEP_METHODS)}",
        description=f"Run the training loop with a step-distillation objective: {names}. --method sets "
        "objective.name; the config (see configs/*/distill-*.yaml) holds the teacher, schedule and weights. "
        "Overrides look like train.steps=100; a run resumes from OUT/checkpoint unless --no-resume. The "
        "exported OUT/model samples with the few-step sampler at the student's schedule by default.",
    )
    parser.add_argument("--method", required=True, choices=FEW_STEP_METHODS)
    parser.add_argument("--config", default=None, help="YAML config; defaults + overrides without")
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. train.steps=100")
    parser.add_argument(
        "--no-resume", action="store_true", help="start over, discarding the run's checkpoints"
    )
    parser.set_defaults(func=run_distill)


def run_distill(args) -> int:
    from pyramidal_wan.training.config import load_config
    from pyramidal_wan.training.trainer import train

    # A distillation config names its method; load_config refuses to run it as another one.
    config = load_config(args.config, args.overrides, method=args.method)
    out = train(config, resume=not args.no_resume)
    print(f"done: checkpoint {out / 'checkpoint'}, few-step model {out / 'model'}")
    return 0
