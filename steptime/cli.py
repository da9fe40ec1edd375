"""Entry point of the ``steptime`` console command.

Each package owns its subcommands in its own ``cli`` module exposing ``register(subparsers)``;
handlers import heavy libraries (PyMC) lazily so ``steptime --help`` stays instant.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMAND_MODULES = (
    "data_prep.cli",
    "data_prep.synth.cli",
    "inference.cli",
    "diagnostics.cli",
    "steptime.demo",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="steptime",
        description="Predict LLM-serving step time with calibrated uncertainty.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    return int(args.handler(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
