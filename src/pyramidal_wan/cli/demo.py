"""`pyramidal-wan demo` (what `make demo` runs): one toy video with the best bundled model.

Until a trained member is bundled, the demo runs the same pipeline on a randomly initialised toy model and
says so: the video is then noise, but the sampler, the jumps, the VAE decode and the export are real.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from pyramidal_wan.cli.options import output_path, positive_int
from pyramidal_wan.errors import CheckpointError

DEMO_PROMPT = "a green striped circle moving right on a dark gray background"


def register(subparsers) -> None:
    parser = subparsers.add_parser("demo", help="generate a toy video with the bundled default model")
    parser.add_argument("--prompt", default=DEMO_PROMPT)
    parser.add_argument(
        "--out", type=output_path, default="outputs/demo.mp4", help="MP4 path; a GIF is written beside it"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=positive_int, default=1, help="torch CPU threads (default 1)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pyramidal_wan.cli import generate
    from pyramidal_wan.models.bundled import bundled_model_path

    def generate_with(model: Path) -> int:
        # One thread: a toy-sized model gains nothing from two, and loses a lot when the other core is busy.
        namespace = generate.build_parser_namespace(
            args.prompt, model=str(model), out=args.out, seed=args.seed, gif=True, threads=args.threads
        )
        return generate.run(namespace)

    try:
        model = bundled_model_path()
    except CheckpointError as err:
        from pyramidal_wan.pyramid import PyramidConfig
        from pyramidal_wan.toy.family import assemble_toy_pipeline

        print(f"note: {err}")
        print("running the demo on a RANDOMLY INITIALISED toy model instead: the video will be noise")
        with tempfile.TemporaryDirectory() as tmp:
            return generate_with(
                assemble_toy_pipeline(Path(tmp) / "random-toy", pyramid_config=PyramidConfig())
            )
    print(f"model: {model}")
    return generate_with(model)
