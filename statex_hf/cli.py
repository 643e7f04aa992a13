"""The ``statex-hf`` command line: one parser class, and one way every command reports a user's mistake.

Each command group lives in its own ``<area>/cli.py``, whose ``add_parser(subparsers, name, help, argv)``
adds the command's parser and sets what it runs. Only the module of the command being run is
imported, and each imports torch and transformers inside the function that runs the command, so
``--help`` and a bad argument answer at once. A :class:`~statex_hf.errors.StateXUserError` from a
command becomes one line, ``PROG: error: MESSAGE``, on stderr and the exit code
:data:`~statex_hf.errors.EXIT_USER_ERROR`.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from statex_hf.errors import EXIT_USER_ERROR, StateXUserError

# Command -> (the module whose ``add_parser`` builds it, its one-line help).
COMMANDS = {
    "convert": ("statex_hf.conversion.cli", "expand a GLA or Mamba2 checkpoint into a StateX checkpoint"),
    "posttrain": (
        "statex_hf.training.cli",
        "post-train a StateX model on long documents (the paper's recipe, via transformers.Trainer)",
    ),
    "accelerate-config": (
        "statex_hf.training.accelerate_config",
        "print the path of the shipped accelerate config for N GPUs (FSDP, bf16, activation checkpointing)",
    ),
    "eval": ("statex_hf.eval.cli", "recall evals: needle in a haystack / passkey, MQAR"),
    "demo": (
        "statex_hf.training.demo",
        "offline demo: build, expand, post-train and sample small GLA and Mamba2 models (CPU, about a minute)",
    ),
}


class StateXArgumentParser(argparse.ArgumentParser):
    """The parser of every ``statex-hf`` command (subcommands inherit it).

    A bad argument is one line on stderr and exit code 2, not a usage block; option names must be
    given in full (``--lr`` would otherwise silently mean ``--lr-scheduler-type``).
    """

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def at_least(minimum: float, kind: type = int) -> Callable[[str], float]:
    """An argparse ``type``: a ``kind`` number no smaller than ``minimum`` (``--steps -5`` is refused as it is read)."""
    noun = "an integer" if kind is int else "a number"

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {noun}") from None
        if not value >= minimum:  # also refuses nan
            raise argparse.ArgumentTypeError(f"{text} must be at least {minimum:g}")
        return value

    return parse


def run_command(args: argparse.Namespace) -> int:
    """Run a parsed command (``args.func``); a user error becomes one line on stderr and ``EXIT_USER_ERROR``."""
    try:
        return int(args.func(args) or 0)
    except StateXUserError as err:
        message = " ".join(line.strip() for line in str(err).splitlines())
        print(f"{args.prog}: error: {message}", file=sys.stderr)
        return EXIT_USER_ERROR


def set_command(parser: argparse.ArgumentParser, func: Callable[[argparse.Namespace], int | None]) -> None:
    """Make ``parser`` run ``func(args)``; its errors carry the parser's name (``statex-hf eval niah``)."""
    parser.set_defaults(func=func, prog=parser.prog)


def build_parser(command: str | None = None, argv: Sequence[str] = ()) -> StateXArgumentParser:
    """The ``statex-hf`` parser with the arguments of ``command`` (the others are listed by name and help only).

    ``argv`` lets a command add costly arguments only where they are used (posttrain's TrainingArguments flags).
    """
    parser = StateXArgumentParser(prog="statex-hf", description="StateX for Hugging Face transformers.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        if name == command:
            importlib.import_module(module).add_parser(subparsers, name, help_text, argv)
        else:
            subparsers.add_parser(name, help=help_text)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # The top level has no option that takes a value, so the first plain word is the command.
    command = next((arg for arg in argv if not arg.startswith("-")), None)
    args = build_parser(command, argv).parse_args(argv)
    return run_command(args)


if __name__ == "__main__":
    # ``python -m statex_hf.cli`` runs this file as __main__; the command modules import statex_hf.cli, so
    # run that one module (one StateXArgumentParser class, not two).
    sys.exit(importlib.import_module("statex_hf.cli").main())
