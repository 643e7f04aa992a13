"""generate at 1.3B shapes: ours beside fla's GLAForCausalLM and transformers' Mamba2ForCausalLM, one run, one GPU.

    python benchmarks/bench_generate.py                          # everything, prints the table
    python benchmarks/bench_generate.py --impls ours_gla --batches 1 --json out.json

Models: random weights in bf16 at 1.3B shapes. ``ours_gla``: StateX GLA-1.3B (fla's GLA-1.3B with
the heads of layers 0, 6, 12, 18 merged into one); ``ours_mamba2``: StateX Mamba2-1.3B (state size
512 in layers 0, 12, 24, 36); ``fla_gla``: fla 0.6's ``GLAForCausalLM`` at GLA-1.3B; ``hf_mamba2``:
transformers' ``Mamba2ForCausalLM`` at Mamba2-1.3B (its PyTorch path). Each runs in its own process
with a time limit (fla autotunes its kernels on first use) and prints its rows as they finish.

Measured, per batch size B (a ``--prompt``-token random prompt, greedy, no EOS):
- ms/token: ``(t(generate N) - t(generate 2)) / (N - 2)``, decode steps only, wall clock, each t the least of
  ``TIMED_RUNS`` runs (in one run of N tokens a pause of the host's, a garbage collection say, moves the row);
- step ms: the steady pace of ``TIMED_RUNS`` more runs of N tokens on the GPU's own timeline (``StepClock``: an
  event recorded at every step where the loop takes the step's logits; from the third step to the last, so neither
  the prompt's forward nor a call's fixed costs enter it; the least of the runs). A host that falls behind shows too:
  the GPU records an event when the host gets to it. Two differences of whole calls carry each call's noise
  (a prompt's forward, the first step's binding), which ms/token at B = 1 has shown as +-0.2 ms;
- roofline: bytes a decode step must move (every weight read once, except the input embedding, of
  which B rows are read; every recurrent and convolution state read and written once) over the HBM
  bandwidth of the device (from its memory clock and bus width, as the driver reports them; the
  bandwidth of a large on-device copy is printed beside it); "share" is roofline / step ms, and
  "wt share" the weight read's alone / step ms (issue 20's B = 1 target: the weight-read roofline). Both use
  the steady clock: ms/token, a difference of two calls, has fallen below the replay on the GPU and below zero
  on a busy CI host;
- ours: the one-time capture of the CUDA-graph decode step (``capture s``, warm-up calls included), the
  step's graph replayed back to back (``replay ms``: its GPU time, without generate's loop on the host),
  the eager decode (``disable_compile=True``) at B = 1, and whether graphs and eager give the same
  greedy tokens;
- ours, B = 1: time to first token (``generate(max_new_tokens=1)``) at each ``--ttft`` prompt length
  beside a plain forward over the prompt (``model(ids, use_cache=False, logits_to_keep=1)``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # its siblings, under python -P too
from bench_train import EXPANDED_LAYERS, SHAPES  # noqa: E402
from worker_process import run_worker  # noqa: E402

IMPLS = ["ours_gla", "ours_mamba2", "fla_gla", "hf_mamba2"]
# The 1.3B shapes and StateX layers are bench_train's; the source models' ids need a pad token.
MAMBA2_SHAPE = {k: v for k, v in SHAPES["mamba2"].items() if not k.startswith("statex_")}
MAMBA2_SHAPE.update(pad_token_id=0, bos_token_id=0, eos_token_id=0)

# `--tiny`: the same code at toy shapes, runnable on CPU (a check of the script, not a measurement).
TINY_GLA = dict(hidden_size=64, num_hidden_layers=4, num_heads=4, vocab_size=128)
TINY_MAMBA2 = dict(MAMBA2_SHAPE, hidden_size=64, num_hidden_layers=4, num_heads=8, head_dim=16, state_size=16)
TINY_MAMBA2["vocab_size"] = 128
TTFT, TINY_TTFT = "4096,16384,65536", "256,1024"
REPLAYS = 50  # back-to-back replays of a captured step, timed together
TIMED_RUNS = 3  # runs of each timed generate, the least kept


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _emit(row: dict) -> None:
    print("ROW " + json.dumps(row), flush=True)


def hbm_bandwidth() -> tuple[float | None, float]:
    """(bytes/s the driver's memory clock and bus width give, bytes/s a 2 GiB device copy reaches)."""
    import torch
    from gpu_specs import hbm_tbps

    spec = hbm_tbps() * 1e12 if torch.cuda.is_available() else None
    src = torch.empty(2**30 if torch.cuda.is_available() else 2**24, dtype=torch.int16, device=_device())
    dst = torch.empty_like(src)
    dst.copy_(src)
    _sync()
    start = time.perf_counter()
    for _ in range(10):
        dst.copy_(src)
    _sync()
    copy = 10 * 2 * src.numel() * src.element_size() / (time.perf_counter() - start)
    return spec, copy


def build(impl: str, tiny: bool = False):
    """The model of ``impl`` (random weights, bf16, on the GPU) and its state bytes per sequence."""
    import torch

    device = torch.device(_device())
    if impl in ("ours_gla", "fla_gla"):
        from statex_hf import StateXGLAConfig, StateXGLAForCausalLM

        layers = EXPANDED_LAYERS["gla"][:1] if tiny else EXPANDED_LAYERS["gla"]
        shape = TINY_GLA if tiny else {}
        config = StateXGLAConfig(**shape, statex_layers=layers if impl == "ours_gla" else [], pad_token_id=0)
        heads = [config.layer_num_heads(i) for i in range(config.num_hidden_layers)]
        state = sum(h * (config.key_dim // h) * (config.value_dim // h) * 4 for h in heads)
        if impl == "ours_gla":
            with device:
                model = StateXGLAForCausalLM(config)
        else:
            from fla.models import GLAConfig, GLAForCausalLM

            with device:
                model = GLAForCausalLM(GLAConfig(**shape, pad_token_id=0))
    else:
        from statex_hf import StateXMamba2Config, StateXMamba2ForCausalLM

        layers = (EXPANDED_LAYERS["mamba2"][:1] if tiny else EXPANDED_LAYERS["mamba2"]) if impl == "ours_mamba2" else []
        shape = TINY_MAMBA2 if tiny else MAMBA2_SHAPE
        config = StateXMamba2Config(**shape, statex_layers=layers, statex_state_size=4 * shape["state_size"])
        inner = config.expand * config.hidden_size
        state = 0
        for i in range(config.num_hidden_layers):
            n = config.layer_state_size(i)
            conv_dim = inner + 2 * config.n_groups * n
            state += config.num_heads * config.head_dim * n * 4 + conv_dim * (config.conv_kernel - 1) * 2
        if impl == "ours_mamba2":
            with device:
                model = StateXMamba2ForCausalLM(config)
        else:
            from transformers import Mamba2Config, Mamba2ForCausalLM

            with device:
                model = Mamba2ForCausalLM(Mamba2Config(**shape))
    model = model.to(torch.bfloat16).eval()
    return model, state


def weight_bytes(model) -> int:
    """Bytes of the weights a decode step reads: all of them but the input embedding table (unless tied)."""
    embedding = model.get_input_embeddings().weight
    tied = embedding.data_ptr() == model.get_output_embeddings().weight.data_ptr()
    params = {p.data_ptr(): p for p in model.parameters()}
    total = sum(p.numel() * p.element_size() for p in params.values())
    return total if tied else total - embedding.numel() * embedding.element_size()


class StepClock:
    """A logits processor that changes nothing and marks when each step's logits reach ``generate``'s loop: a CUDA
    event on the GPU's timeline (the host's clock on CPU, where every op runs in order on the host)."""

    SKIPPED = 2  # marks before the pace is taken: the prompt's (then the first step's, which binds the cache)

    def __init__(self) -> None:
        self.marks: list = []

    def __call__(self, input_ids, scores):
        import torch

        if scores.is_cuda:
            self.marks.append(torch.cuda.Event(enable_timing=True))
            self.marks[-1].record()
        else:
            self.marks.append(time.perf_counter())
        return scores

    def ms_per_step(self) -> float:
        """The mean ms between marks after the ``SKIPPED`` first ones (once the run has ended: ``_sync`` first)."""
        first, last = self.marks[self.SKIPPED], self.marks[-1]
        span_ms = first.elapsed_time(last) if hasattr(first, "elapsed_time") else (last - first) * 1e3
        return span_ms / (len(self.marks) - 1 - self.SKIPPED)


def _paced(generate) -> float:
    """``StepClock``'s ms per step over one call of ``generate(logits_processor=...)``."""
    from transformers import LogitsProcessorList

    clock = StepClock()
    generate(logits_processor=LogitsProcessorList([clock]))
    _sync()
    return clock.ms_per_step()


def _timed(fn) -> float:
    _sync()
    start = time.perf_counter()
    fn()
    _sync()
    return time.perf_counter() - start


def apply_same_run_baselines(args) -> None:
    """Patch this process's dispatch as ``add_baseline_arguments``' flags ask (ours only: a peer's process imports
    nothing of ours)."""
    numbers = (args.gemv_max_rows, args.conv_ssd_max_rows)
    if args.sync_stop_check:  # a baseline in the same run: the stop flag read on the host after every step
        os.environ["STATEX_DEFER_STOP_CHECK"] = "0"
    # How many threads a capture's new kernels compile on (--serial-compile: the same-run baseline, one by one).
    threads = 1 if args.serial_compile else args.compile_threads
    if threads is not None:
        from statex_hf.modeling import decode_graphs

        decode_graphs.COMPILE_THREADS = threads
    if args.compile_at_capture:  # a baseline in the same run: the step's kernels compile in its first capture
        os.environ["STATEX_COMPILE_AHEAD"] = "0"
    if args.norm_in_step:  # a baseline in the same run: Mamba2's gated norm in its one-launch step, as before
        from statex_hf.kernels import dispatch

        dispatch.GATED_NORM_IN_OUT_PROJ = False
    if args.final_norm_in_head:  # off by default until measured: the run with it, beside one without
        from statex_hf.kernels import dispatch

        dispatch.FINAL_NORM_IN_HEAD = True
    if args.grouped_rows is not None:  # 1 by default until measured: the run with more, beside one without
        from statex_hf.kernels import dispatch

        dispatch.GROUPED_MAX_ROWS = args.grouped_rows
    if not (args.separate_products or args.unfused_residual_norm or args.norms_apart) and numbers == (None, None):
        return
    from statex_hf.kernels import dispatch
    from statex_hf.modeling.gla import modeling_statex_gla
    from statex_hf.modeling.mamba2 import modeling_statex_mamba2

    # A baseline in the same run: at one row a block's norms and adds as kernels of their own, not in its sublayers'
    # products (--unfused-residual-norm asks for every norm and add apart, so that too).
    if args.norms_apart or args.unfused_residual_norm:
        for module in (modeling_statex_gla, modeling_statex_mamba2):
            module.norms_go_into_products = lambda *args: False

    if args.gemv_max_rows is not None:  # a baseline in the same run: 0 sends every projection to cuBLAS
        dispatch.GEMV_MAX_ROWS = args.gemv_max_rows
    if args.separate_products:  # a baseline in the same run: each product of one input its own GEMV launch
        dispatch.one_launch_products = lambda x, weights, norm=None: None
        dispatch.one_launch_swiglu = lambda x, gate_weight, up_weight, norm=None: None
    if args.unfused_residual_norm:  # a baseline in the same run: each residual add (GLA's by torch, Mamba2's by the
        dispatch.one_launch_add_rmsnorm = lambda *args, **kwargs: None  # residual-add kernel) and each norm apart
    if args.conv_ssd_max_rows is not None:  # 0: a baseline in the same run, a Mamba2 step's conv and state update
        dispatch.ONE_LAUNCH_CONV_SSD_MAX_ROWS = args.conv_ssd_max_rows  # as two launches at every batch


def _compile_log() -> list[str]:
    """The messages ``kernels/parallel_compile.py`` logs from now on (how many kernels a capture compiled, and in how
    long), collected into the returned list."""
    messages: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    logger = logging.getLogger("transformers.statex_hf.kernels.parallel_compile")
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    return messages


def worker(impl: str, args) -> None:
    import torch

    torch.manual_seed(0)
    torch.set_grad_enabled(False)  # generate runs without autograd; the plain forward it is compared with too
    apply_same_run_baselines(args)
    compile_log = _compile_log()
    ours = impl.startswith("ours")
    spec_bw, copy_bw = hbm_bandwidth()
    bandwidth = spec_bw or copy_bw
    start = time.perf_counter()
    model, state_per_sequence = build(impl, args.tiny)
    weights = weight_bytes(model)
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    _emit(
        dict(impl=impl, kind="setup", gpu=gpu, build_s=time.perf_counter() - start, weight_gb=weights / 1e9,
             state_mb=state_per_sequence / 1e6, hbm_spec_tbs=(spec_bw or 0) / 1e12, hbm_copy_tbs=copy_bw / 1e12)
    )  # fmt: skip
    vocab = model.config.vocab_size
    base = dict(do_sample=False, eos_token_id=None, pad_token_id=0)

    def generate(ids, new_tokens, **kwargs):
        return model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, **base, **kwargs)

    new_tokens = args.new_tokens if ours else args.peer_new_tokens
    for batch in args.batches:
        ids = torch.randint(1, vocab, (batch, args.prompt), device=_device())
        compile_log.clear()
        try:
            first_s = _timed(lambda ids=ids: generate(ids, 2))  # compile, autotune and capture happen here
        except torch.OutOfMemoryError:
            # transformers' Mamba2 without its CUDA kernels materializes [B, chunks, L, L, heads] products in the
            # prefill (256 GiB at B = 64): a row that says so, and the next batch size still runs.
            _emit(dict(impl=impl, kind="decode", batch=batch, error="out of GPU memory in the prompt's forward"))
            torch.cuda.empty_cache()
            continue
        capture_s = replay_ms = None
        if ours:
            from statex_hf.modeling.decode_graphs import decode_graphs_for

            graphs = decode_graphs_for(model)
            capture_s = graphs.last_capture_seconds
            # The step's graph replayed back to back (the last one captured: this batch's): its GPU time alone,
            # so that ms/token minus it is what generate's loop on the host adds.
            steps = list(graphs._steps.values())  # none on CPU, or where the capture fell back to eager
            if steps:
                replay_ms = _timed(lambda graph=steps[-1].graph: [graph.replay() for _ in range(REPLAYS)])
                replay_ms *= 1e3 / REPLAYS
        two = min(_timed(lambda ids=ids: generate(ids, 2)) for _ in range(TIMED_RUNS))
        many = min(_timed(lambda ids=ids: generate(ids, new_tokens)) for _ in range(TIMED_RUNS))
        ms = (many - two) / (new_tokens - 2) * 1e3
        step_ms = min(_paced(lambda ids=ids, **kw: generate(ids, new_tokens, **kw)) for _ in range(TIMED_RUNS))
        roofline_ms = (weights + 2 * state_per_sequence * batch) / bandwidth * 1e3
        _emit(
            dict(impl=impl, kind="decode", batch=batch, ms_per_token=ms, step_ms=step_ms, roofline_ms=roofline_ms,
                 share=roofline_ms / step_ms, weight_share=weights / bandwidth * 1e3 / step_ms, first_call_s=first_s,
                 capture_s=capture_s, replay_ms=replay_ms, new_tokens=new_tokens, capture_compiles=list(compile_log))
        )  # fmt: skip
    if not ours:
        return

    ids = torch.randint(1, vocab, (1, args.prompt), device=_device())
    eager_tokens = generate(ids, args.eager_new_tokens, disable_compile=True)
    graph_tokens = generate(ids, args.eager_new_tokens)
    two = min(_timed(lambda: generate(ids, 2, disable_compile=True)) for _ in range(TIMED_RUNS))
    many = min(_timed(lambda: generate(ids, args.eager_new_tokens, disable_compile=True)) for _ in range(TIMED_RUNS))
    _emit(
        dict(impl=impl, kind="eager", batch=1, ms_per_token=(many - two) / (args.eager_new_tokens - 2) * 1e3,
             same_tokens_as_graphs=bool(torch.equal(eager_tokens, graph_tokens)))
    )  # fmt: skip

    for length in args.ttft:
        ids = torch.randint(1, vocab, (1, length), device=_device())
        model(ids, use_cache=False, logits_to_keep=1)  # compile for this length
        generate(ids, 1)
        forward_s = min(
            _timed(lambda ids=ids: model(ids, use_cache=False, logits_to_keep=1)) for _ in range(2)
        )  # fmt: skip
        ttft_s = min(_timed(lambda ids=ids: generate(ids, 1)) for _ in range(2))
        _emit(dict(impl=impl, kind="ttft", length=length, ttft_ms=ttft_s * 1e3, forward_ms=forward_s * 1e3))
        torch.cuda.empty_cache()


def _run_process(impl: str, argv: list[str], timeout: float) -> tuple[list[dict], str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1")
    return run_worker([sys.executable, __file__, "--worker", impl, *argv], env, timeout)


def print_table(rows: list[dict], statuses: dict) -> None:
    setup = {r["impl"]: r for r in rows if r["kind"] == "setup"}
    if setup:
        first = next(iter(setup.values()))
        print(
            f"{first['gpu']}: HBM {first['hbm_spec_tbs']:.2f} TB/s (driver's clock x bus), "
            f"{first['hbm_copy_tbs']:.2f} TB/s (device copy)"
        )
    print(f"{'impl':12} {'weights GB':>10} {'state MB/seq':>12} {'status':>14}")
    for impl, status in statuses.items():
        s = setup.get(impl, {})
        print(f"{impl:12} {s.get('weight_gb', 0):10.2f} {s.get('state_mb', 0):12.1f} {status:>14}")
    print(
        f"\n{'impl':12} {'B':>3} {'ms/token':>9} {'roofline ms':>11} {'share':>6} {'wt share':>8} {'capture s':>9} "
        f"{'first s':>8} {'replay ms':>9} {'step ms':>8}"
    )
    for r in rows:
        if r["kind"] == "decode" and "error" in r:
            print(f"{r['impl']:12} {r['batch']:3d} {r['error']}")
        elif r["kind"] == "decode":
            capture = "-" if r["capture_s"] is None else f"{r['capture_s']:.2f}"
            replay = "-" if r.get("replay_ms") is None else f"{r['replay_ms']:.2f}"
            weight_share = "-" if r.get("weight_share") is None else f"{r['weight_share']:.0%}"  # older rows: none
            step = "-" if r.get("step_ms") is None else f"{r['step_ms']:.2f}"  # older rows: none
            print(
                f"{r['impl']:12} {r['batch']:3d} {r['ms_per_token']:9.2f} {r['roofline_ms']:11.2f} "
                f"{r['share']:6.0%} {weight_share:>8} {capture:>9} {r['first_call_s']:8.1f} {replay:>9} {step:>8}"
            )
    for r in rows:
        for message in r.get("capture_compiles") or []:
            print(f"{r['impl']:12} B={r['batch']} capture: {message}")
    for r in rows:
        if r["kind"] == "eager":
            print(
                f"{r['impl']:12} eager B=1: {r['ms_per_token']:.2f} ms/token; same tokens: {r['same_tokens_as_graphs']}"
            )
    for r in rows:
        if r["kind"] == "ttft":
            ratio = r["ttft_ms"] / r["forward_ms"]
            print(
                f"{r['impl']:12} TTFT {r['length']:6d}: {r['ttft_ms']:8.1f} ms, plain forward {r['forward_ms']:8.1f} ms"
                f" ({ratio:.2f}x)"
            )


def add_baseline_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ours' same-run baselines: each turns one fusion or kernel choice of the decode step off."""
    parser.add_argument(
        "--gemv-max-rows", type=int, help="ours: rows up to which projections run as the Triton GEMV (0: cuBLAS)"
    )
    parser.add_argument(
        "--separate-products", action="store_true", help="ours: no grouped GEMV launches (each product its own)"
    )
    parser.add_argument(
        "--unfused-residual-norm",
        action="store_true",
        help="ours: each residual add (GLA's by torch, Mamba2's by its kernel) and each norm its own kernel "
        "(not one add + norm kernel; at one row, not in the products either: implies --norms-apart)",
    )
    parser.add_argument(
        "--norms-apart",
        action="store_true",
        help="ours: at one row each block's norm and residual add its own kernel (the add + norm kernel), not computed "
        "in the products that read and end its sublayers",
    )
    parser.add_argument(
        "--sync-stop-check",
        action="store_true",
        help="ours: generate's loop waits for the GPU after every token (transformers' stop check on CUDA), not a "
        "step later",
    )
    parser.add_argument(
        "--conv-ssd-max-rows",
        type=int,
        help="ours: sequences up to which a Mamba2 step's conv and state update run as one launch (0: two launches)",
    )
    parser.add_argument(
        "--norm-in-step",
        action="store_true",
        help="ours: at one row Mamba2's gated norm is taken by its one-launch step's last program, not by out_proj's "
        "product (dispatch.GATED_NORM_IN_OUT_PROJ off; on by default)",
    )
    parser.add_argument(
        "--final-norm-in-head",
        action="store_true",
        help="ours: at one row the final norm and the logits' fp32 cast in the head's GEMV launch "
        "(dispatch.FINAL_NORM_IN_HEAD; off by default until a GPU has timed it)",
    )
    parser.add_argument(
        "--grouped-rows",
        type=int,
        help="ours: rows up to which a step's products of one input (GLA's mixer's five, its MLP's gate and up with "
        "the SwiGLU) run as one launch (dispatch.GROUPED_MAX_ROWS; 1 by default until a GPU has timed it at more rows)",
    )
    parser.add_argument(
        "--serial-compile",
        action="store_true",
        help="ours: a capture's new Triton kernels compile one by one as they are first launched, not on threads "
        "first (measure with an empty TRITON_CACHE_DIR: cached kernels are not compiled at all)",
    )
    parser.add_argument(
        "--compile-threads",
        type=int,
        help="ours: the threads a capture's new Triton kernels compile on (default: the cores, at most "
        "parallel_compile.MAX_WORKERS)",
    )
    parser.add_argument(
        "--compile-at-capture",
        action="store_true",
        help="ours: a decode step's new Triton kernels compile in its first capture, not on threads started before "
        "the prompt's forward (STATEX_COMPILE_AHEAD=0)",
    )


def baseline_argv(args: argparse.Namespace) -> list[str]:
    """``add_baseline_arguments``' flags as ``args`` holds them, for a worker's command line."""
    parser = argparse.ArgumentParser()
    add_baseline_arguments(parser)
    argv = []
    for action in parser._actions:
        value = getattr(args, action.dest, None)
        if not action.option_strings or value is None or value is False:
            continue
        argv += [action.option_strings[0]] if value is True else [action.option_strings[0], str(value)]
    return argv


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--impls", default=",".join(IMPLS), help=f"comma-separated, from {IMPLS}")
    parser.add_argument("--batches", default="1,16,64")
    parser.add_argument("--prompt", type=int, default=512, help="prompt tokens of the decode runs")
    parser.add_argument("--new-tokens", type=int, default=128, help="new tokens per timed generate (ours)")
    parser.add_argument("--peer-new-tokens", type=int, default=32, help="new tokens per timed generate (peers)")
    parser.add_argument("--eager-new-tokens", type=int, default=32, help="new tokens of ours without graphs")
    parser.add_argument(
        "--ttft", help=f"prompt lengths of the time to first token (default {TTFT}; with --tiny {TINY_TTFT})"
    )
    parser.add_argument("--timeout", type=float, default=240, help="seconds for each of our processes")
    parser.add_argument("--peer-timeout", type=float, default=150, help="seconds for each peer process")
    add_baseline_arguments(parser)
    parser.add_argument("--json", help="write every row here")
    parser.add_argument("--tiny", action="store_true", help="toy shapes (a check of this script, runs on CPU)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    # Each count is timed as generate(N) - generate(2), over N - 2 tokens; the decode runs' are paced by StepClock
    # too, between its third mark and its last.
    for flag, least in (("new_tokens", 4), ("peer_new_tokens", 4), ("eager_new_tokens", 3)):
        if getattr(args, flag) < least:
            why = "timed as N tokens minus 2 tokens" + (", and paced from the third step on" if least == 4 else "")
            parser.error(f"--{flag.replace('_', '-')} must be at least {least} ({why})")
    args.batches = [int(b) for b in args.batches.split(",")]
    # --tiny's lengths keep the CPU check inside its process's time limit (64K tokens on CPU would not be).
    args.ttft = [int(t) for t in (args.ttft or (TINY_TTFT if args.tiny else TTFT)).split(",") if t]
    if args.worker:
        worker(args.worker, args)
        return
    passed = ["--batches", ",".join(map(str, args.batches)), "--prompt", str(args.prompt)]
    passed += ["--new-tokens", str(args.new_tokens), "--peer-new-tokens", str(args.peer_new_tokens)]
    passed += ["--eager-new-tokens", str(args.eager_new_tokens), "--ttft", ",".join(map(str, args.ttft))]
    passed += ["--tiny"] if args.tiny else []
    passed += baseline_argv(args)
    rows, statuses = [], {}
    for impl in args.impls.split(","):
        timeout = args.timeout if impl.startswith("ours") else args.peer_timeout
        impl_rows, statuses[impl] = _run_process(impl, passed, timeout)
        rows += impl_rows
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"rows": rows, "statuses": statuses}, f, indent=1)
    print_table(rows, statuses)


if __name__ == "__main__":
    main()
