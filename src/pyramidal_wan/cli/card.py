"""`pyramidal-wan card`: (re)write a model folder's README.md model card; `export` and `toy bundle` call
`write_card` for every folder they write."""

from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path

from pyramidal_wan.errors import InputError

DEFAULT_LICENSE = "apache-2.0"  # the project's license, and Wan2.1's
CARD_NAME = "README.md"


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "card",
        help="write a model folder's README.md model card",
        description="Write MODEL/README.md from the folder's configs: base model, pyramid config, default "
        "schedule, TFLOPs per schedule, its ToyBench / VBench rows from evaluation records (--results), the "
        "command that made it and its license. `export` and `toy bundle` write one themselves.",
    )
    parser.add_argument("model", help="a diffusers Wan model folder")
    parser.add_argument("--base", help="the model it was made from (a folder or a hub name)")
    parser.add_argument(
        "--made-by", help="the command that made the folder (default: this `card` command)", default=None
    )
    parser.add_argument(
        "--results", action="append", default=[], help="evaluate records (.jsonl), repeatable"
    )
    parser.add_argument(
        "--eval-name",
        help="the model's name in the records (default: records whose model_path is this folder)",
    )
    parser.add_argument(
        "--license", default=DEFAULT_LICENSE, help=f"license field (default {DEFAULT_LICENSE})"
    )
    parser.add_argument("--note", action="append", default=[], help="a paragraph to add (repeatable)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pyramidal_wan.models.bundled import is_model_folder

    if not is_model_folder(Path(args.model)):
        raise InputError(f"{args.model} is not a diffusers model folder (no model_index.json)")
    path = write_card(
        args.model,
        command=args.made_by or args.invocation,
        base=args.base,
        license=args.license,
        results=args.results,
        eval_name=args.eval_name,
        notes=args.note,
    )
    print(f"wrote {path}")
    return 0


def schedule_flops_rows(folder: Path, schedules) -> list[dict]:
    """TFLOPs of one default-size video per schedule (None: the folder's default), from configs only."""
    from pyramidal_wan.cli.generate import describe_guidance
    from pyramidal_wan.eval.flops import plan_flops
    from pyramidal_wan.models.ppf import find_ppf_folder, load_ppf_config
    from pyramidal_wan.models.presets import read_config_json
    from pyramidal_wan.models.text import folder_max_sequence_length
    from pyramidal_wan.pipelines import PyramidalWanPipeline

    config = read_config_json(folder / "transformer" / "config.json", "the transformer's config.json")
    ppf_folder = find_ppf_folder(folder)  # a PPF model's own stage kernels
    ppf_config = load_ppf_config(ppf_folder) if ppf_folder is not None else None
    rows = []
    for schedule in dict.fromkeys(schedules):
        plan = PyramidalWanPipeline.plan_from_folder(folder, schedule=schedule)
        flops = plan_flops(config, plan, folder_max_sequence_length(folder), ppf_config)
        rows.append(
            {
                "schedule": plan.schedule,
                "sampler": plan.sampler,
                "cfg": describe_guidance(plan),
                "tflops": flops["total_tflops"],
                "forwards": flops["forwards"],
            }
        )
    return rows


def training_recipe(run: Path) -> tuple[str, str | None] | None:
    """(a sentence naming a training run and its config, the run's model.init folder or None); None when
    `run` is no training run (no config.yaml)."""
    from pyramidal_wan.training.config import load_config

    config_path = run / "config.yaml"
    if not config_path.is_file():
        return None
    config = load_config(str(config_path), [])
    init = config.model.init if Path(config.model.init).is_dir() else None
    start = f"from {init}" if init else f"from the random preset {config.model.init}"
    sentence = (
        f"Trained by the run {run} ({config.objective.name}, {config.train.steps} steps, {start}); "
        f"its resolved config is {config_path}."
    )
    return sentence, init


def write_card(
    folder,
    command: str,
    base: str | None = None,
    license: str = DEFAULT_LICENSE,
    results=(),
    eval_name: str | None = None,
    lora=None,
    tuned=None,
    notes=(),
    run=None,
) -> Path:
    """Write FOLDER/README.md. A LoRA folder (`lora`: models.lora.LoraExport) takes its sampling facts from
    `tuned`, the model folder it was extracted from; evaluation records are matched by model path (the
    folder or `tuned`) or by `eval_name`. `run`: the training run that made the model, whose config.yaml
    is named as the recipe and whose model.init is the default base."""
    from pyramidal_wan.eval.model_card import CardFacts, render_model_card
    from pyramidal_wan.eval.report import load_records, toy_runs, vbench_runs
    from pyramidal_wan.models.bundled import is_model_folder
    from pyramidal_wan.models.checkpoint import load_pyramid_config
    from pyramidal_wan.pipelines.planning import video_settings
    from pyramidal_wan.utils.io import atomic_path

    folder = Path(folder)
    source = Path(tuned) if tuned is not None else folder
    records = load_records(results) if results else []
    paths = {str(folder.resolve()), str(source.resolve())}
    recipe = training_recipe(Path(run)) if run is not None else None
    if recipe is not None:
        notes = (*notes, recipe[0])
        base = base or recipe[1]
    mine = [r for r in records if r.get("model_path") in paths or (eval_name and r.get("model") == eval_name)]
    toy, vbench = toy_runs(mine), vbench_runs(mine)
    pyramid = load_pyramid_config(source)
    pipeline = is_model_folder(source)  # a run from a preset exports a transformer alone: no size, no FLOPs
    video = video_settings(source) if pipeline else None
    if not pipeline:
        notes = (*notes, "A transformer without a pipeline (no model_index.json): no default video size.")
    facts = CardFacts(
        name=folder.resolve().name,
        license=license,
        command=command,
        base_model=base,
        pyramid_config=asdict(pyramid) if pyramid is not None else {},
        video_size=(video["num_frames"], video["height"], video["width"]) if pipeline else None,
        flops=schedule_flops_rows(source, [None, *(r["schedule"] for r in toy)]) if pipeline else (),
        toy_runs=toy,
        vbench_runs=vbench,
        notes=tuple(notes),
    )
    if lora is not None:
        extraction = lora.extraction
        total = extraction.linear_energy + extraction.left_out_energy if extraction else 0.0
        facts.lora = {
            "rank": lora.rank,
            "trained": lora.trained,
            "weights": lora.path.name,
            "kept_fraction": extraction.kept_fraction if extraction else 1.0,
            "left_out": extraction.left_out if extraction else [],
            "left_out_fraction": extraction.left_out_energy / total if extraction and total else 0.0,
        }
    with atomic_path(folder / CARD_NAME) as tmp:
        tmp.write_text(render_model_card(facts))
    return folder / CARD_NAME
