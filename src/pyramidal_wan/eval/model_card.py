"""Model cards: the README.md of an exported or bundled model folder (or LoRA folder), from its facts.

`render_model_card` is pure text from a `CardFacts`: a Hugging Face style YAML header (license,
library_name, base_model, tags), then what the model is, how to sample it (its pyramid config), what a video
costs (TFLOPs per schedule), its ToyBench / VBench rows when evaluation records are given, and the command
that made it. `pyramidal-wan card` (cli/card.py) gathers the facts from a folder's configs.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field

from pyramidal_wan.eval.report import main_table, markdown_table, vbench_table


@dataclass
class CardFacts:
    name: str
    license: str
    command: str  # the command that made the folder
    base_model: str | None = None
    pyramid_config: dict = field(default_factory=dict)  # pyramid_config.json, or {} for a plain Wan model
    video_size: tuple[int, int, int] | None = None  # default (frames, height, width)
    flops: Sequence[dict] = ()  # {schedule, sampler, cfg, tflops, forwards} per schedule
    toy_runs: Sequence[dict] = ()  # eval.report.toy_runs of this model's ToyBench records
    vbench_runs: Sequence[dict] = ()  # eval.report.vbench_runs of this model's VBench records
    lora: dict | None = None  # a LoRA folder: rank, trained, kept_fraction, left_out, weights file
    notes: Sequence[str] = ()


def _yaml_header(facts: CardFacts) -> list[str]:
    tags = ["pyramidal-wan", "wan2.1", "text-to-video"] + (["lora"] if facts.lora else [])
    lines = ["---", f"license: {facts.license}", "library_name: diffusers", "pipeline_tag: text-to-video"]
    if facts.base_model:
        lines.append(f"base_model: {json.dumps(facts.base_model)}")
    return [*lines, "tags:", *(f"- {t}" for t in tags), "---", ""]


def _what(facts: CardFacts) -> str:
    config = facts.pyramid_config
    if facts.lora is not None:
        how = (
            "the model's own trained LoRA, written as it is"
            if facts.lora["trained"]
            else f"a truncated SVD of each Linear weight delta at rank {facts.lora['rank']}, keeping "
            f"{100 * facts.lora['kept_fraction']:.2f}% of the delta's energy"
        )
        return (
            f"A LoRA of the difference between a PyramidalWan model and its base ({facts.base_model}): "
            f"{how}. "
            f"Weights: `{facts.lora['weights']}` (diffusers `load_lora_weights` keys)."
        )
    if not config:
        return "A plain Wan2.1-architecture text-to-video model (no pyramid): sampled at full resolution."
    kind = "patch-pyramid (PPF)" if config.get("kind") == "patch" else "resolution-pyramid"
    return (
        f"A {config['num_stages']}-stage {kind} Wan2.1-architecture text-to-video model (PyramidalWan), "
        f"sampled {config['sampler']} at {config['default_schedule']} by default."
    )


def render_model_card(facts: CardFacts) -> str:
    """The README.md text of a model folder."""
    lines = [*_yaml_header(facts), f"# {facts.name}", "", _what(facts), ""]
    if facts.lora is not None:
        lines += [
            "## Use",
            "",
            "```python",
            "pipe.load_lora_weights(FOLDER)  # diffusers WanPipeline or PyramidalWanPipeline on the base",
            "```",
            "or `pyramidal-wan generate PROMPT --model BASE --lora FOLDER[:WEIGHT]` (repeatable: LoRAs",
            "stack);",
            "sample with the pyramid config below (`--schedule`, `--sampler`).",
            "",
        ]
        if facts.lora.get("left_out"):
            lines += [
                f"Not carried (a LoRA changes Linear layers only): {len(facts.lora['left_out'])} other "
                f"parameters that differ from the base, {100 * facts.lora['left_out_fraction']:.2f}% of the "
                f"delta's energy (e.g. `{facts.lora['left_out'][0]}`).",
                "",
            ]
    lines += ["## Sampling", ""]
    if facts.pyramid_config:
        rows = [[key, json.dumps(value)] for key, value in facts.pyramid_config.items()]
        lines += [markdown_table(["pyramid_config.json", "value"], rows), ""]
    else:
        lines += ["No pyramid_config.json: plain Wan sampling, schedules 0-...-0-N.", ""]
    if facts.video_size is not None:
        frames, height, width = facts.video_size
        lines += [f"Default video: {frames} frames of {height}x{width}.", ""]
    if facts.flops:
        rows = [
            [f["schedule"], f["sampler"], f["cfg"], f"{f['tflops']:.4g}", str(f["forwards"])]
            for f in facts.flops
        ]
        lines += [
            "## Cost",
            "",
            markdown_table(["schedule", "sampler", "CFG", "TFLOPs / video", "transformer forwards"], rows),
            "",
            "Transformer FLOPs at the default video size, counted on the meta device",
            "(`pyramidal-wan flops`).",
            "",
        ]
    if facts.toy_runs:
        lines += ["## ToyBench", "", markdown_table(*main_table(facts.toy_runs)), ""]
    if facts.vbench_runs:
        lines += ["## VBench", "", markdown_table(*vbench_table(facts.vbench_runs)), ""]
    if not (facts.toy_runs or facts.vbench_runs):
        lines += ["## Evaluation", "", "No evaluation records were given for this card.", ""]
    lines += ["## How it was made", "", "```bash", facts.command, "```", ""]
    lines += [*facts.notes, *([""] if facts.notes else [])]
    lines += [f"License: {facts.license}.", ""]
    return "\n".join(lines)
