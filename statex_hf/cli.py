"""The ``statex-hf`` command line. Each command lives in its own module and registers itself here."""

from __future__ import annotations

import argparse
import sys

# Modules that provide ``register(subparsers)``; a command module adds itself to this list.
COMMAND_MODULES: list[str] = [
    "statex_hf.eval.cli",
    "statex_hf.conversion.cli",
    "statex_hf.training.command",
    "statex_hf.training.accelerate_config",
    "statex_hf.training.demo",
]


class OneLineErrorParser(argparse.ArgumentParser):
    """Bad arguments end in one line on stderr and exit code 2, not a usage block."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = OneLineErrorParser(prog="statex-hf", description="StateX for Hugging Face transformers.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
