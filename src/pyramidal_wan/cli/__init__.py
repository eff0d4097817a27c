"""The `pyramidal-wan` command line. Each area registers its sub-commands from its own module."""

from __future__ import annotations

import argparse
import importlib
import shlex
import sys

from pyramidal_wan.errors import PyramidalWanError

# Modules under pyramidal_wan.cli that define `register(subparsers)`; each sub-command sets `func`.
COMMAND_MODULES: list[str] = [
    "demo",
    "generate",
    "evaluate",
    "report",
    "flops",
    "bench",
    "toy",
    "train",
    "stages",
    "distill",
    "card",
    "serve",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pyramidal-wan",
        description="Pyramidal and few-step inference for Wan2.1 text-to-video models.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"pyramidal_wan.cli.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    args.invocation = shlex.join(["pyramidal-wan", *argv])  # the command, for the model cards it writes
    try:
        return args.func(args) or 0
    except PyramidalWanError as err:
        print(f"pyramidal-wan {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"pyramidal-wan {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
