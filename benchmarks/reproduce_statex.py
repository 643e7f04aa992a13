"""StateX in miniature: when the state is what limits recall, does expanding it beat plain continued training?

For each family (GLA, Mamba2) and seed:

1. **Pretrain** a small model from scratch on multi-query associative recall (MQAR, with a share of passkey
   prompts) until accuracy against the number of key-value pairs shows the knee where its state is full.
2. **Continue** it on the same data and token budget as four arms: LPT (as it is), StateX (``statex-hf
   convert``: layers ``range(0, L, every)`` expanded, re-initialized), StateX without layer 0, and StateX
   keeping the learned weights (GLA ``--init inherit``; Mamba2 ``--init copy``).
3. **Evaluate** every model with ``statex-hf eval mqar`` and ``statex-hf eval niah --task passkey``.

Training runs through ``statex_hf.training.posttrain``. Outputs in ``--output-dir``: ``results.md`` (tables,
mean +- std over seeds, verdict), ``results.json``, plots (accuracy against pairs, passkey against length,
loss curves), each unit's result and training curve under ``units/`` and its eval JSONs under ``evals/``.

The GPU run (units in parallel processes; ``--max-minutes`` ends a call in time, the next resumes)::

    python benchmarks/reproduce_statex.py --jobs 12 --max-minutes 8 --output-dir benchmarks/results/miniature

End-to-end check on CPU (tiny models, a few steps, into a new temporary folder)::

    python benchmarks/reproduce_statex.py --tiny
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from dataclasses import asdict, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # data-loader workers fork after the tokenizer ran

from miniature.settings import ARMS, FAMILIES, PRESETS, Settings  # noqa: E402

DEFAULT_OUTPUT = Path("benchmarks/results/miniature")
# Settings a run can change from the command line (the rest: edit miniature/settings.py).
OVERRIDES = {
    "pretrain_steps": int,
    "continue_steps": int,
    "continue_lr": float,
    "pretrain_lr": float,
    "hidden_size": int,
    "num_layers": int,
    "mamba2_state_size": int,
}


def new_tiny_folder() -> Path:
    """Where ``--tiny`` writes without ``--output-dir``: a new folder each time, never the committed results."""
    return Path(tempfile.mkdtemp(prefix="statex-miniature-tiny-"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="CPU smoke run: tiny models, a few steps (--preset tiny)")
    parser.add_argument("--preset", choices=sorted(PRESETS), help="model and data sizes (default: default)")
    parser.add_argument(
        "--output-dir",
        type=Path,
        help=f"results folder; an existing one resumes (default {DEFAULT_OUTPUT}; with --tiny a new temporary folder)",
    )
    parser.add_argument("--seeds", default=None, help="comma-separated seeds (default 0,1,2; with --tiny 0)")
    parser.add_argument("--families", default=",".join(FAMILIES), help="comma-separated, from gla,mamba2")
    parser.add_argument("--arms", default=",".join(ARMS), help=f"continuations, from {','.join(ARMS)}")
    parser.add_argument("--stage", choices=("pretrain", "continue", "all"), default="all")
    parser.add_argument("--jobs", type=int, default=1, help="units run at once as processes (default 1: in here)")
    parser.add_argument("--max-minutes", type=float, default=float("inf"), help="stop, resumable, after this long")
    parser.add_argument(
        "--pretrain-minutes",
        type=float,
        help="pretraining stops early (and says so) after this long (default: in time)",
    )
    parser.add_argument("--sources-from", type=Path, help="take the pretrained sources of this earlier run")
    parser.add_argument("--report-only", action="store_true", help="no training: the report from what is done")
    parser.add_argument("--unit", help=argparse.SUPPRESS)  # family:seed:arm, run by the scheduler's processes
    for name, kind in OVERRIDES.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=kind, help=f"override settings.{name}")
    args = parser.parse_args(argv)
    args.seeds = [int(s) for s in (args.seeds or ("0" if args.tiny else "0,1,2")).split(",") if s.strip()]
    args.families = [f for f in args.families.split(",") if f.strip()]
    args.arms = [a for a in args.arms.split(",") if a.strip()]
    if not args.seeds or any(f not in FAMILIES for f in args.families) or any(a not in ARMS for a in args.arms):
        parser.error(f"--seeds needs a seed, --families takes {','.join(FAMILIES)}, --arms takes {','.join(ARMS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.unit:  # one unit, in a process of its own (see miniature/run.py)
        from miniature.units import run_unit

        run_unit(args.output_dir, args.unit)
        return 0

    from miniature.report import write_report
    from miniature.run import plan, run_units
    from miniature.units import copy_sources

    preset = PRESETS[args.preset or ("tiny" if args.tiny else "default")]
    settings = replace(preset, **{k: v for k in OVERRIDES if (v := getattr(args, k)) is not None})
    out = args.output_dir or (new_tiny_folder() if args.tiny else DEFAULT_OUTPUT)
    out.mkdir(parents=True, exist_ok=True)
    settings_file = out / "settings.json"
    if settings_file.exists() and Settings.from_json(settings_file) != settings:
        earlier = asdict(Settings.from_json(settings_file))
        changed = sorted(k for k, v in asdict(settings).items() if earlier[k] != v)
        print(
            f"{out} holds a run with other settings ({', '.join(changed)}): use another --output-dir", file=sys.stderr
        )
        return 2
    settings_file.write_text(settings.to_json())
    if args.sources_from:
        copy_sources(args.sources_from, out, args.families, args.seeds)

    if not args.report_only:
        import torch

        if args.tiny and not torch.cuda.is_available():
            # Tiny matmuls gain nothing from threads, and on a shared CPU idle threads' spinning costs 5x.
            torch.set_num_threads(1)
        from transformers.utils import logging

        logging.set_verbosity_error()
        logging.disable_progress_bar()
        units = plan(args.families, args.seeds, args.arms, args.stage)
        run_units(out, units, args.jobs, args.max_minutes, args.pretrain_minutes)
    print(write_report(out))
    print(f"results in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
