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
    "calibrate",
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


class UsageError(PyramidalWanError):
    """A command line argparse rejects (unknown option, bad value of an option's type)."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are one line ("PROG: error: MESSAGE", exit status 2 from `main`), without the
    usage block, like every other error of the CLI; sub-command parsers inherit it."""

    def error(self, message: str):
        raise UsageError(f"{self.prog}: error: {message} (see {self.prog} --help)")


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
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
    try:
        args = parser.parse_args(argv)
    except UsageError as err:
        print(err, file=sys.stderr)
        return 2
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
