"""`pyramidal-wan serve`: the browser app (Gradio) on the bundled default model or any --model folders."""

from __future__ import annotations

import argparse
import os

from pyramidal_wan.cli.options import positive_int
from pyramidal_wan.errors import InputError


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="a browser app: prompt in, video out, with each pyramid stage's preview as it runs",
        description="Start a Gradio app: prompt, schedule, seed and model; the video with its TFLOPs and "
        "seconds per stage, each stage's decoded clean estimate as the stage ends (switchable; its cost is "
        "shown), and a side-by-side of two schedules. Requests queue; bad input is shown in the page.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    parser.add_argument(
        "--model",
        action="append",
        default=[],
        help="a diffusers Wan model folder (repeatable; default: the best bundled model)",
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--threads", type=positive_int, help="torch CPU threads (default: torch's choice)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pyramidal_wan.cli.generate import resolve_device
    from pyramidal_wan.models.bundled import bundled_model_path

    if not 0 < args.port < 65536:
        raise InputError(f"--port {args.port} must be between 1 and 65535")
    if args.threads is not None:
        if args.threads < 1:
            raise InputError(f"--threads must be at least 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    models = args.model or [str(bundled_model_path())]
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from pyramidal_wan.app.studio import Studio
    from pyramidal_wan.app.ui import build_app

    studio = Studio(models, device=str(device))
    app = build_app(studio)
    print(f"serving {', '.join(studio.names)} on http://{args.host}:{args.port}", flush=True)
    app.launch(server_name=args.host, server_port=args.port, allowed_paths=[str(studio.out_dir)])
    return 0
