"""The B = 1 decode step's tiles swept end to end: each config's captured step, replayed, on one GPU.

    python -P benchmarks/sweep_decode_tiles.py [--impls ours_mamba2,ours_gla] [--rows "2,2,1024 4,4,1024"]
        [--wide "8,8,1024@8@1 8,8,1024@1e9@0"] [--steps "4,2,16,128,128 8,2,32,128,128"] [--json out.json]

The microbenchmarks time one kernel at a time (``bench_gemv.py``, ``bench_conv_state_update.py``); a decode step
is 150-220 kernels under programmatic dependent launch, where a kernel's tail overlaps the next one's start. Here
each config is set for the whole model (``launch.OVERRIDES``), ``generate`` captures the step, and its graph is
replayed back to back (``bench_generate.py``'s ``replay ms``; the median of ``--rounds`` rounds of ``--replays``).
Rows:
- ``--rows``: one-row product tiles ``warps,BN,BK`` (one row of x, one stage, no split), set for the GEMV, the
  grouped GEMV and the SwiGLU GEMV alike (the fused products must sum in the plain GEMV's tiles);
- ``--wide``: the table's ``m1_wide`` tiles ``warps,BN,BK``, after ``@`` ``WIDE_MIN_WAVES`` (the waves of the GPU a
  one-row product's grid must fill at those tiles to take them, ``configs.one_row_bucket``; ``1e9``: never), and
  after a second ``@`` ``WIDE_GATED_NORM`` (1: a product with a gated norm takes them whatever its grid; 0: not);
- ``--steps`` (Mamba2): the one-launch conv and state step's ``warps,stages,BP,BN,BW``.
The first row of each impl is the launch tables' own pick (``table``), run again last to show the drift. ``same``
says whether the config's greedy tokens equal the table's (random weights: a near tie may flip on another sum order).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
from statex_hf.kernels import launch
from statex_hf.kernels.launch import LaunchConfig
from statex_hf.kernels.linear import configs
from statex_hf.modeling.decode_graphs import decode_graphs_for

sys.path.insert(0, str(Path(__file__).resolve().parent))  # its siblings, under python -P too
from bench_generate import build  # noqa: E402

ROW_KERNELS = ("linear.gemv", "linear.gemv_group", "linear.gemv_swiglu")
ROWS = "2,2,1024 4,2,1024 4,4,1024 4,2,2048 8,4,2048 8,8,1024 2,4,512 4,8,512 1,2,512"
WIDES = "8,8,1024@1e9@0 8,8,1024@1e9@1 8,8,1024@8@0 4,4,1024@8@1 16,16,1024@8@1"
STEPS = "4,2,16,128,128 4,2,8,128,128 8,2,16,128,128 8,2,32,128,128 2,2,8,128,128 4,2,32,128,128"


def row_config(spec: str) -> LaunchConfig:
    warps, bn, bk = (int(v) for v in spec.split(","))
    return LaunchConfig.of(warps, 1, BM=1, BN=bn, BK=bk, SPLIT_K=1)


def wide_setting(spec: str) -> tuple[LaunchConfig, float, bool]:
    tiles, waves, gated = spec.split("@")
    return row_config(tiles), float(waves), gated == "1"


def step_config(spec: str) -> LaunchConfig:
    warps, stages, bp, bn, bw = (int(v) for v in spec.split(","))
    return LaunchConfig.of(warps, stages, BP=bp, BN=bn, BW=bw)


def replay_ms(model, ids: torch.Tensor, rounds: int, replays: int) -> tuple[float, torch.Tensor]:
    """(median ms of one replay of the step ``generate`` captures under the current overrides, its tokens)."""
    graphs = decode_graphs_for(model)
    graphs.clear()
    tokens = model.generate(ids, max_new_tokens=8, do_sample=False, eos_token_id=None)
    (step,) = graphs._steps.values()
    times = []
    for _ in range(rounds):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        for _ in range(replays):
            step.graph.replay()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / replays)
    return statistics.median(times), tokens


def sweep(impl: str, rows: list[str], wides: list[str], steps: list[str], rounds: int, replays: int) -> list[dict]:
    model, _ = build(impl)
    ids = torch.randint(1, model.config.vocab_size, (1, 64), device="cuda", generator=None)
    table_wide = (configs.TABLES["default"]["m1_wide"], configs.WIDE_MIN_WAVES, configs.WIDE_GATED_NORM)
    Case = tuple[str, dict[str, LaunchConfig], tuple[LaunchConfig, float, bool]]
    cases: list[Case] = [("table", {}, table_wide)]
    cases += [(f"rows {spec}", dict.fromkeys(ROW_KERNELS, row_config(spec)), table_wide) for spec in rows]
    cases += [(f"wide {spec}", {}, wide_setting(spec)) for spec in wides]
    if impl == "ours_mamba2":
        cases += [(f"step {spec}", {"ssd.conv_state_update": step_config(spec)}, table_wide) for spec in steps]
    cases.append(("table (again)", {}, table_wide))
    results, reference = [], None
    for label, overrides, wide in cases:
        saved = dict(launch.OVERRIDES)
        launch.OVERRIDES.update(overrides)
        configs.TABLES["default"]["m1_wide"], configs.WIDE_MIN_WAVES, configs.WIDE_GATED_NORM = wide
        try:
            ms, tokens = replay_ms(model, ids, rounds, replays)
        except Exception as error:  # a config the GPU cannot take: its row says why, the sweep goes on
            print(f"{impl:12s} {label:24s} failed: {type(error).__name__}: {str(error)[:80]}", flush=True)
            continue
        finally:
            launch.OVERRIDES.clear()
            launch.OVERRIDES.update(saved)
            configs.TABLES["default"]["m1_wide"], configs.WIDE_MIN_WAVES, configs.WIDE_GATED_NORM = table_wide
        reference = tokens if reference is None else reference
        same = bool(torch.equal(tokens, reference))
        print(f"{impl:12s} {label:24s} {ms:7.3f} ms  same tokens: {same}", flush=True)
        results.append({"impl": impl, "config": label, "replay_ms": ms, "same_tokens": same})
    del model
    torch.cuda.empty_cache()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--impls", default="ours_mamba2,ours_gla")
    parser.add_argument("--rows", default=ROWS, help="one-row product tiles warps,BN,BK (space-separated)")
    parser.add_argument(
        "--wide",
        default=WIDES,
        help="m1_wide tiles warps,BN,BK@WIDE_MIN_WAVES@WIDE_GATED_NORM (0 or 1; space-separated)",
    )
    parser.add_argument("--steps", default=STEPS, help="Mamba2 step configs warps,stages,BP,BN,BW (space-separated)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--replays", type=int, default=50)
    parser.add_argument("--json", help="write the rows here too")
    args = parser.parse_args()
    print(f"GPU: {torch.cuda.get_device_name()}", flush=True)
    torch.manual_seed(0)
    results = []
    for impl in args.impls.split(","):
        results += sweep(impl, args.rows.split(), args.wide.split(), args.steps.split(), args.rounds, args.replays)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
