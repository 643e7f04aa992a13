"""``statex-hf convert {gla,mamba2} SRC OUT ...``: the command line of :func:`statex_hf.conversion.convert`.

Bad input is one line on stderr and exit code 2, with nothing written; the conversion scripts in
``conversion_scripts/`` reuse these arguments and this runner.
"""

from __future__ import annotations

import argparse
import sys
import types

from statex_hf.expansion.errors import StateXInputError
from statex_hf.hub import HubPushError

EXIT_BAD_INPUT = 2
EXIT_PUSH_FAILED = 1


def _layer_list(text: str) -> list[int]:
    if text.strip().lower() in ("", "none"):
        return []
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated layer indices like 0,6,12, got {text!r}") from None


def _size(text: str) -> int:
    from accelerate.utils import convert_file_size_to_int  # "5GB", "500MB", "1GiB"

    try:
        return convert_file_size_to_int(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _one_line_error(parser: argparse.ArgumentParser) -> None:
    """argparse prints usage plus the message; keep every failure to one line, same exit code 2."""

    def error(self, message: str):
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message}\n")

    parser.error = types.MethodType(error, parser)


def add_convert_arguments(parser: argparse.ArgumentParser, family: str) -> None:
    """The options of one family's conversion (shared by the CLI and the scripts)."""
    from statex_hf.expansion import GLA_INIT_MODES, MAMBA2_INIT_MODES

    _one_line_error(parser)
    parser.add_argument("source", help="checkpoint folder or Hub repo id")
    parser.add_argument("output", help="output folder (must not exist unless --overwrite)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--every", type=int, metavar="K", help="expand layers 0, K, 2K, ... (default: four layers)")
    which.add_argument("--layers", type=_layer_list, metavar="I,J,...", help="expand exactly these layers")
    modes = GLA_INIT_MODES if family == "gla" else MAMBA2_INIT_MODES
    parser.add_argument(
        "--init",
        choices=modes,
        default="reinit",
        help="initialization of the expanded parts (default reinit: the paper's released code's; "
        "reinit-init-weights: the model class's _init_weights)",
    )
    if family == "gla":
        parser.add_argument("--num-heads", type=int, default=1, help="heads of an expanded layer (default 1)")
    else:
        parser.add_argument("--state-size", type=int, metavar="N", help="new state size N' (default 4x N)")
    parser.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default="auto")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fresh initialization (deterministic)")
    parser.add_argument("--tokenizer", metavar="NAME_OR_PATH", help="tokenizer to ship (required for state-spaces)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    parser.add_argument("--max-shard-size", type=_size, default="5GB", help="largest safetensors shard (5GB)")
    parser.add_argument("--push-to-hub", metavar="REPO", help="then upload to this Hub repo in one commit")
    parser.add_argument("--private", action="store_true", help="create the Hub repo private")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=run, family=family)


def run(args: argparse.Namespace) -> int:
    """Run one conversion from parsed arguments; returns the exit code."""
    from statex_hf.conversion.convert import convert

    if args.private and not args.push_to_hub:
        return _fail("--private needs --push-to-hub")
    try:
        report = convert(
            args.family,
            args.source,
            args.output,
            layers=args.layers,
            every=args.every,
            init=args.init,
            num_heads=getattr(args, "num_heads", None),
            state_size=getattr(args, "state_size", None),
            dtype=args.dtype,
            seed=args.seed,
            tokenizer=args.tokenizer,
            overwrite=args.overwrite,
            push_to_hub=args.push_to_hub,
            private=args.private,
            max_shard_size=args.max_shard_size,
            progress=not args.quiet,
        )
    except StateXInputError as err:
        return _fail(str(err))
    except KeyboardInterrupt:
        print("statex-hf convert: interrupted; nothing written", file=sys.stderr)
        return 130
    except HubPushError as err:
        print(f"statex-hf convert: {err} (the converted folder is at {args.output})", file=sys.stderr)
        return EXIT_PUSH_FAILED
    for line in report.warnings:
        print(f"warning: {line}", file=sys.stderr)
    print("\n".join(report.lines()))
    return 0


def _fail(message: str) -> int:
    print(f"statex-hf convert: error: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``convert gla`` and ``convert mamba2`` to the ``statex-hf`` command line."""
    convert = subparsers.add_parser("convert", help="expand a GLA or Mamba2 checkpoint into a StateX checkpoint")
    _one_line_error(convert)
    families = convert.add_subparsers(dest="family_command", required=True)
    gla = families.add_parser("gla", help="fla GLA checkpoint (e.g. fla-hub/gla-1.3B-100B)")
    add_convert_arguments(gla, "gla")
    mamba2 = families.add_parser("mamba2", help="Mamba2: state-spaces (mamba_ssm) or transformers checkpoint")
    add_convert_arguments(mamba2, "mamba2")
