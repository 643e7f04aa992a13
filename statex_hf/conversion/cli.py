"""``statex-hf convert {gla,mamba2} SRC OUT ...``: the command line of :func:`statex_hf.conversion.convert`.

Bad input is one line on stderr and exit code 2, with nothing written; the conversion scripts in
``conversion_scripts/`` reuse these arguments and this runner. torch is imported only once the
arguments are read.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from statex_hf.cli import at_least, set_command
from statex_hf.errors import StateXUserError
from statex_hf.families import FAMILIES, get_family

EXIT_PUSH_FAILED = 1


def _layer_list(text: str) -> list[int]:
    """``0,6,12`` -> [0, 6, 12]; ``""`` or ``none`` -> [] (nothing expanded). Empty entries and repeats are refused."""
    if text.strip().lower() in ("", "none"):
        return []
    parts = [part.strip() for part in text.split(",")]
    if "" in parts:
        raise argparse.ArgumentTypeError(f"{text!r} has an empty entry; give indices like 0,6,12")
    try:
        layers = [int(part) for part in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated layer indices like 0,6,12, got {text!r}") from None
    repeated = sorted({i for i in layers if layers.count(i) > 1})
    if repeated:
        raise argparse.ArgumentTypeError(f"layer {repeated[0]} is listed twice in {text!r}; give each layer once")
    return layers


def _size(text: str) -> int:
    """``5GB`` / ``500MB`` / ``1GiB``, read by accelerate as ``save_pretrained`` reads ``max_shard_size``.

    Only a given value is read, so accelerate, and torch with it, load only when the flag is used.
    """
    from accelerate.utils import convert_file_size_to_int

    try:
        return convert_file_size_to_int(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def add_convert_arguments(parser: argparse.ArgumentParser, family: str) -> None:
    """The options of one family's conversion (shared by the CLI and the scripts)."""
    parser.add_argument("source", help="checkpoint folder or Hub repo id")
    parser.add_argument(
        "output", help="output folder (must not exist; --overwrite replaces a folder an earlier conversion wrote)"
    )
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--every", type=int, metavar="K", help="expand layers 0, K, 2K, ... (default: four layers)")
    which.add_argument("--layers", type=_layer_list, metavar="I,J,...", help="expand exactly these layers")
    entry = get_family(family)
    parser.add_argument(
        "--init",
        choices=entry.init_modes,
        default=entry.init_modes[0],
        help="initialization of the expanded parts (default reinit: the paper's released code's; "
        "reinit-init-weights: the model class's _init_weights)",
    )
    option = entry.state_option
    parser.add_argument(option.flag, type=at_least(1), default=option.default, metavar=option.metavar, help=option.help)
    parser.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default="auto")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fresh initialization (deterministic)")
    parser.add_argument(
        "--tokenizer",
        metavar="NAME_OR_PATH",
        help="tokenizer to ship (required for the state-spaces and mistral layouts, which have none)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an output folder that an earlier conversion wrote"
    )
    parser.add_argument(
        "--max-shard-size", type=_size, help="largest safetensors shard (default 5GB, as save_pretrained)"
    )
    parser.add_argument("--push-to-hub", metavar="REPO", help="then upload to this Hub repo in one commit")
    parser.add_argument("--private", action="store_true", help="create the Hub repo private")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    set_command(parser, run)
    parser.set_defaults(family=family)


class Terminated(BaseException):
    """SIGTERM arrived; raised like KeyboardInterrupt so the temporary folder is removed on the way out."""


@contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """While converting, SIGTERM (``kill``, a job scheduler) unwinds the stack as Ctrl-C does."""

    def terminate(signum: int, frame: object) -> None:
        raise Terminated

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run(args: argparse.Namespace) -> int:
    """Run one conversion from parsed arguments; returns the exit code (a user error raises StateXUserError)."""
    from statex_hf.conversion.convert import convert
    from statex_hf.hub import HubPushError

    if args.private and not args.push_to_hub:
        raise StateXUserError("--private needs --push-to-hub")
    state_option = get_family(args.family).state_option.dest
    try:
        with _sigterm_unwinds():
            report = convert(
                args.family,
                args.source,
                args.output,
                layers=args.layers,
                every=args.every,
                init=args.init,
                **{state_option: getattr(args, state_option)},
                dtype=args.dtype,
                seed=args.seed,
                tokenizer=args.tokenizer,
                overwrite=args.overwrite,
                push_to_hub=args.push_to_hub,
                private=args.private,
                **({"max_shard_size": args.max_shard_size} if args.max_shard_size else {}),
                progress=not args.quiet,
            )
    except KeyboardInterrupt:
        print(f"{args.prog}: interrupted; nothing written", file=sys.stderr)
        return 130
    except Terminated:
        print(f"{args.prog}: terminated (SIGTERM); nothing written", file=sys.stderr)
        return 128 + signal.SIGTERM
    except HubPushError as err:
        print(f"{args.prog}: {err} (the converted folder is at {args.output})", file=sys.stderr)
        return EXIT_PUSH_FAILED
    for line in report.warnings:
        print(f"warning: {line}", file=sys.stderr)
    print("\n".join(report.lines()))
    return 0


def add_parser(subparsers: argparse._SubParsersAction, name: str, help_text: str, argv: Sequence[str] = ()) -> None:
    """``statex-hf convert FAMILY``, one subcommand per registry entry (``gla``, ``mamba2``)."""
    parser = subparsers.add_parser(name, help=help_text, description=help_text)
    families = parser.add_subparsers(dest="family_command", required=True, metavar="FAMILY")
    for family in FAMILIES.values():
        add_convert_arguments(families.add_parser(family.name, help=family.source_help), family.name)
