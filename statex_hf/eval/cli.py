"""``statex-hf eval niah|mqar MODEL``: recall evals from the command line.

Arguments, the model's folder, the device and every output path are checked before anything is
loaded; a bad one ends the command with one line on stderr and exit status 2. An existing
``--output`` / ``--plot`` is replaced only when it is an earlier eval's results / figure.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from statex_hf.cli import at_least, set_command
from statex_hf.errors import StateXUserError
from statex_hf.eval.loading import DTYPE_NAMES
from statex_hf.outputs import check_output_file

EVAL_TASKS = ("niah", "passkey", "mqar")
_LENGTH = re.compile(r"^(\d+(?:\.\d+)?)([kK]?)$")


def parse_length(text: str) -> int:
    """``"512" -> 512``, ``"4k" -> 4096``, ``"1.5k" -> 1536`` (k = 1024 tokens)."""
    match = _LENGTH.match(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a token count (use e.g. 512, 4k, 64k)")
    number = float(match.group(1)) * (1024 if match.group(2) else 1)
    if number != int(number) or number < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole positive number of tokens")
    return int(number)


def _comma_list(item_type: Any, name: str) -> Any:
    def parse(text: str) -> list[Any]:
        items = [s for s in text.split(",") if s.strip()]
        if not items:
            raise argparse.ArgumentTypeError(f"{name} is empty")
        values = [item_type(s) for s in items]
        return sorted(set(values))

    return parse


def parse_depth(text: str) -> float:
    try:
        depth = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"depth {text!r} is not a number") from None
    if not (math.isfinite(depth) and 0.0 <= depth <= 1.0):
        raise argparse.ArgumentTypeError(f"depth {text} is outside [0, 1] (0 = start of the context, 1 = end)")
    return depth


def _add_common(parser: argparse.ArgumentParser, default_output: str, batch_size: int) -> None:
    parser.add_argument("model", metavar="MODEL", help="checkpoint directory or Hub id of any AutoModelForCausalLM")
    parser.add_argument("--tokenizer", help="tokenizer directory or Hub id, when MODEL ships none")
    parser.add_argument("--samples", type=at_least(1), help="prompts per grid cell")
    parser.add_argument("--seed", type=int, default=0, help="seed of the task construction (default 0)")
    parser.add_argument(
        "--batch-size", type=at_least(1), default=batch_size, help=f"most prompts per forward (default {batch_size})"
    )
    parser.add_argument(
        "--max-batch-tokens",
        type=at_least(1),
        default=65536,
        help="most tokens per forward; long lengths get smaller batches (default 65536)",
    )
    parser.add_argument("--output", type=Path, help=f"results JSON (default {default_output} in the current directory)")
    plot = parser.add_mutually_exclusive_group()
    plot.add_argument("--plot", type=Path, help="figure path (default: the output path with .png)")
    plot.add_argument("--no-plot", action="store_true", help="write no figure")
    parser.add_argument("--device", help="torch device (default cuda if available, else cpu)")
    parser.add_argument("--dtype", choices=DTYPE_NAMES, help="weights dtype (default bfloat16 on CUDA, float32 on CPU)")
    parser.add_argument("--trust-remote-code", action="store_true", help="allow the checkpoint's own modeling code")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_parser(subparsers: argparse._SubParsersAction, name: str, help_text: str, argv: Sequence[str] = ()) -> None:
    """``statex-hf eval niah`` and ``statex-hf eval mqar``."""
    parser = subparsers.add_parser(name, help=help_text, description=help_text)
    commands = parser.add_subparsers(dest="eval_command", required=True, metavar="EVAL")

    niah = commands.add_parser(
        "niah",
        help="needle-in-a-haystack or passkey retrieval over lengths x depths",
        description="Needle-in-a-haystack (--task niah) or passkey (--task passkey) retrieval with the model's own "
        "tokenizer and the haystack text shipped in the package; greedy decoding, exact match.",
    )
    _add_common(niah, "TASK.json", batch_size=8)
    niah.add_argument("--task", choices=["niah", "passkey"], default="niah", help="needle kind (default niah)")
    niah.add_argument(
        "--lengths",
        type=_comma_list(parse_length, "--lengths"),
        default=[1024, 4096],
        help="prompt lengths in tokens, e.g. 1k,4k,16k,64k (default 1k,4k)",
    )
    niah.add_argument(
        "--depths",
        type=_comma_list(parse_depth, "--depths"),
        default=[0.0, 0.25, 0.5, 0.75, 1.0],
        help="needle depths in [0, 1] (default 0,0.25,0.5,0.75,1)",
    )
    set_command(niah, _run_niah)
    niah.set_defaults(samples_default=5)

    mqar = commands.add_parser(
        "mqar",
        help="multi-query associative recall: accuracy by number of pairs and length",
        description="Multi-query associative recall (Zoology) on single tokens of the model's vocabulary; "
        "accuracy of the next-token argmax after each queried key.",
    )
    _add_common(mqar, "mqar.json", batch_size=16)
    mqar.add_argument(
        "--num-pairs",
        type=_comma_list(at_least(1), "--num-pairs"),
        default=[4, 8, 16, 32, 64],
        help="key-value pairs per sequence (default 4,8,16,32,64)",
    )
    mqar.add_argument(
        "--lengths",
        type=_comma_list(parse_length, "--lengths"),
        default=[256, 512, 1024, 2048],
        help="sequence lengths in tokens (default 256,512,1k,2k)",
    )
    set_command(mqar, _run_mqar)
    mqar.set_defaults(samples_default=16)


def _plot_path(args: argparse.Namespace) -> Path | None:
    return None if args.no_plot else (args.plot or args.output.with_suffix(".png"))


def is_eval_results(path: Path) -> bool:
    """``path`` holds the results JSON of an earlier ``statex-hf eval`` (so a rerun may replace it)."""
    try:
        results = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(results, dict) and results.get("task") in EVAL_TASKS and "accuracy" in results


def is_matplotlib_figure(path: Path) -> bool:
    """``path`` is a figure matplotlib saved (PNG, PDF and SVG name it in their metadata)."""
    with open(path, "rb") as f:
        head = f.read(4096)
        f.seek(max(0, path.stat().st_size - 4096))
        tail = f.read()
    return b"matplotlib" in (head + tail).lower()


def _check_outputs(args: argparse.Namespace) -> None:
    """Every file the eval will write can be written, and replaces nothing but an earlier eval's output."""
    args.output = args.output or Path(f"{getattr(args, 'task', args.eval_command)}.json")
    check_output_file(
        args.output, label=f"--output {args.output}", replaceable=is_eval_results, kind="an eval results file"
    )
    plot = _plot_path(args)
    if plot is None:
        return
    if plot.expanduser().resolve() == args.output.expanduser().resolve():
        raise StateXUserError(f"--plot {plot} is the --output file too; give the figure its own name")
    from matplotlib.figure import Figure

    formats = Figure().canvas.get_supported_filetypes()
    if plot.suffix and plot.suffix[1:].lower() not in formats:
        raise StateXUserError(f"--plot {plot}: matplotlib cannot write {plot.suffix} files; use .png, .pdf or .svg")
    check_output_file(plot, label=f"--plot {plot}", replaceable=is_matplotlib_figure, kind="a figure an eval drew")


def _write(results: dict[str, Any], args: argparse.Namespace) -> None:
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.output}")


def _run(args: argparse.Namespace, check: Any, evaluate: Any) -> int:
    """Check outputs, device and model folder; load the tokenizer, ``check(tokenizer)`` the task fits it, then
    load the model and ``evaluate``.

    Everything that can be checked without the model is checked first, so a mistake fails in a second.
    """
    from statex_hf.eval.loading import check_device, check_sources, load_model, load_tokenizer

    _check_outputs(args)
    check_device(args.device)
    check_sources(args.model, args.tokenizer)
    if args.no_progress:
        from transformers.utils import logging

        logging.disable_progress_bar()
    import statex_hf

    statex_hf.register_auto_classes()  # a StateX checkpoint's tokenizer config names its model type
    samples = args.samples or args.samples_default
    tokenizer = load_tokenizer(args.model, args.tokenizer, args.trust_remote_code)
    try:
        check(tokenizer)
    except ValueError as error:
        raise StateXUserError(str(error)) from None
    model = load_model(args.model, args.device, args.dtype, args.trust_remote_code)
    return evaluate(model, tokenizer, samples)


def _display_name(model: str) -> str:
    """A Hub id as is; a local folder by its last two path parts (plot titles, JSON)."""
    path = Path(model).expanduser()
    return "/".join(path.resolve().parts[-2:]) if path.is_dir() else model


def _run_niah(args: argparse.Namespace) -> int:
    from statex_hf.eval.niah import build_needle_samples, run_niah
    from statex_hf.eval.plots import format_length, plot_niah_heatmap

    def check(tokenizer: Any) -> None:
        try:  # one prompt per length: a length too short for the prompt with this tokenizer fails here
            build_needle_samples(tokenizer, args.task, args.lengths, [0.5], samples=1, seed=args.seed)
        except ValueError as error:
            raise ValueError(f"--lengths: {error}") from None

    def evaluate(model: Any, tokenizer: Any, samples: int) -> int:
        results = run_niah(
            model, tokenizer, task=args.task, lengths=args.lengths, depths=args.depths, samples=samples,
            seed=args.seed, batch_size=args.batch_size, max_batch_tokens=args.max_batch_tokens,
            progress=not args.no_progress, model_name=_display_name(args.model),
        )  # fmt: skip
        _write(results, args)
        if (plot := _plot_path(args)) is not None:
            print(f"wrote {plot_niah_heatmap(results, plot)}")
        print(f"{args.task} exact match by length (mean over depths):")
        for length, row in zip(results["lengths"], results["accuracy"]):
            print(f"  {format_length(length):>6}  {sum(row) / len(row):.3f}")
        return 0

    return _run(args, check, evaluate)


def _run_mqar(args: argparse.Namespace) -> int:
    from statex_hf.eval.mqar import mqar_cells, run_mqar
    from statex_hf.eval.plots import format_length, plot_mqar

    def check(tokenizer: Any) -> None:  # some cell fits, and the vocabulary holds the pairs asked for
        mqar_cells(tokenizer, args.num_pairs, args.lengths)

    def evaluate(model: Any, tokenizer: Any, samples: int) -> int:
        results = run_mqar(
            model, tokenizer, num_pairs=args.num_pairs, lengths=args.lengths, samples=samples, seed=args.seed,
            batch_size=args.batch_size, max_batch_tokens=args.max_batch_tokens, progress=not args.no_progress,
            model_name=_display_name(args.model),
        )  # fmt: skip
        _write(results, args)
        if (plot := _plot_path(args)) is not None:
            print(f"wrote {plot_mqar(results, plot)}")
        header = "pairs " + " ".join(f"{format_length(n):>6}" for n in results["lengths"])
        print("MQAR query accuracy:\n  " + header)
        for n, row in zip(results["num_pairs"], results["accuracy"]):
            print(f"  {n:>5} " + " ".join("     -" if a is None else f"{a:6.3f}" for a in row))
        return 0

    return _run(args, check, evaluate)
