"""Post-training under FSDP on N GPUs: the 1.3B StateX models at T = 64K, tokens/s and peak memory per GPU, scaling.

Each (family, N) is one ``accelerate launch`` of this file with the shipped N-GPU config
(``statex-hf accelerate-config N``; a count with no file of its own takes the 8-GPU file with
``--num_processes N``). Each process runs the ``Trainer`` as ``posttrain`` builds it: the recipe's
``TrainingArguments`` under that config (FSDP2 with one unit per block, FSDP's activation
checkpointing, bf16, one sequence per GPU), the chunked loss, ``PackedCollator``, AdamW. The model is
the StateX 1.3B of ``bench_train.py`` (random weights; GLA layers 0, 6, 12, 18 merged to one head,
Mamba2 layers 0, 12, 24, 36 at N = 512), the data random token ids, a different T-token row per GPU.

Accumulation is 1 unless ``--accumulation`` says otherwise: every timed step is one sequence per
GPU, a gradient reduce-scatter and an AdamW step, so the communication per token is the most the
recipe can have (its step accumulates 8 / N micro-batches per reduction). The first ``--warmup``
steps (kernel compile and autotune, the optimizer state) are not timed; the next ``--steps`` are,
between synchronizations. Per GPU: tokens/s = T x accumulation / step time (the slowest process's),
peak memory = ``torch.cuda.max_memory_allocated`` over the timed steps (the shard of the fp32
weights, gradients and AdamW state, the gathered bf16 blocks, activations). Scaling efficiency:
tokens/s per GPU on N GPUs / on one (the 1-GPU file, FSDP's code path in one process).

    python benchmarks/bench_train_fsdp.py --gpus 1 2                   # both families, T = 64K
    python benchmarks/bench_train_fsdp.py --gpus 1 --families gla --steps 3
    python benchmarks/bench_train_fsdp.py --tiny --gpus 1 2            # CPU check: tiny models, FSDP over gloo

``--tiny`` runs on CPU (4-layer models, T = 256, fp32) through ``tests/fsdp_on_cpu.py``, since
accelerate applies FSDP only on GPUs; it checks that the benchmark runs, its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import FAMILIES, model_config  # noqa: E402

FSDP_ON_CPU = Path(__file__).resolve().parents[1] / "tests" / "fsdp_on_cpu.py"
TINY_SEQ_LEN = 256


class RandomRows(torch.utils.data.Dataset):
    """``rows`` sequences of ``seq_len`` random token ids (fixed by ``seed``)."""

    def __init__(self, rows: int, seq_len: int, vocab_size: int, seed: int = 0):
        generator = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(0, vocab_size, (rows, seq_len), generator=generator)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict:
        return {"input_ids": self.ids[index].tolist()}


def measure_in_this_process(args: argparse.Namespace) -> None:
    """One process of ``accelerate launch``: train, time, and (process 0) write the row to ``--json-out``."""
    from accelerate.utils import gather_object
    from transformers import Trainer, TrainerCallback

    from statex_hf.training.collator import PackedCollator
    from statex_hf.training.recipe import chunked_loss_size_for, training_arguments

    cuda = torch.cuda.is_available() and not args.tiny
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if cuda else torch.device("cpu")
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    class StepTimer(TrainerCallback):
        def on_step_end(self, train_args, state, control, **kwargs):
            if state.global_step == args.warmup:
                sync()
                self.warm_s, self.start = time.perf_counter() - self.begin, time.perf_counter()
                if cuda:
                    torch.cuda.reset_peak_memory_stats(device)
            elif state.global_step == args.warmup + args.steps:
                sync()
                self.step_s = (time.perf_counter() - self.start) / args.steps
                self.peak_gib = torch.cuda.max_memory_allocated(device) / 2**30 if cuda else 0.0

        def on_train_begin(self, train_args, state, control, **kwargs):
            self.begin = time.perf_counter()

    torch.manual_seed(0)  # the same initial weights in every process
    config, model_class = model_config(args.family, expanded=True, tiny=args.tiny)
    config.chunked_loss_size = chunked_loss_size_for(args.seq_len)  # as posttrain sets it for training
    with device:
        model = model_class(config)
    params = sum(p.numel() for p in model.parameters())
    steps = args.warmup + args.steps
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    data = RandomRows(steps * args.accumulation * world, args.seq_len, config.vocab_size, seed=1)
    with tempfile.TemporaryDirectory() as out:
        train_args = training_arguments(
            out,
            max_steps=steps,
            gradient_accumulation_steps=args.accumulation,
            warmup_steps=0,
            save_strategy="no",
            logging_steps=steps,
            disable_tqdm=True,
            seed=0,
            **({"use_cpu": True, "ddp_backend": "gloo", "bf16": False} if args.tiny else {}),
        )
        timer = StepTimer()
        trainer = Trainer(
            model=model, args=train_args, data_collator=PackedCollator(), train_dataset=data, callbacks=[timer]
        )
        trainer.train()
    per_process = gather_object([{"rank": rank, "step_s": timer.step_s, "peak_GiB": timer.peak_gib}])
    if rank == 0:
        slowest = max(p["step_s"] for p in per_process)
        row = {
            "family": args.family,
            "tiny": args.tiny,
            "gpus": world,
            "T": args.seq_len,
            "accumulation": args.accumulation,
            "params_M": params / 1e6,
            "fsdp": trainer.is_fsdp_enabled,
            "bf16": bool(train_args.bf16),
            "first_steps_s": timer.warm_s,
            "step_s": slowest,
            "tokens_per_s_per_gpu": args.seq_len * args.accumulation / slowest,
            "peak_GiB_per_gpu": max(p["peak_GiB"] for p in per_process),
            "loss": [log["loss"] for log in trainer.state.log_history if "loss" in log][-1],
            "per_process": per_process,
        }
        with open(args.json_out, "w") as f:
            json.dump(row, f)


def config_file(gpus: int) -> str:
    from statex_hf.training.accelerate_config import SHIPPED_GPU_COUNTS, accelerate_config_path

    return accelerate_config_path(gpus if gpus in SHIPPED_GPU_COUNTS else 8)


def launch(family: str, gpus: int, args: argparse.Namespace) -> dict:
    """``accelerate launch`` this file on ``gpus`` processes for ``family``; the row it measured."""
    with tempfile.TemporaryDirectory() as tmp:
        json_out = os.path.join(tmp, "row.json")
        command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", config_file(gpus)]
        command += ["--num_processes", str(gpus), "--main_process_port", str(args.port)]
        if args.tiny:  # fp32 on CPU; accelerate's FSDP needs tests/fsdp_on_cpu.py there
            command += ["--mixed_precision", "no", str(FSDP_ON_CPU)]
        command += [__file__, "--worker", family, "--seq-len", str(args.seq_len), "--steps", str(args.steps)]
        command += ["--warmup", str(args.warmup), "--accumulation", str(args.accumulation), "--json-out", json_out]
        command += ["--tiny"] if args.tiny else []
        # Multicast stays off on shared hosts (the machine's NCCL_NVLS_ENABLE=0 is inherited).
        env = dict(os.environ, NCCL_NVLS_ENABLE=os.environ.get("NCCL_NVLS_ENABLE", "0"), PYTHONUNBUFFERED="1")
        env["PYTHONSAFEPATH"] = "1"  # the repository's top-level kernels/ must not shadow the PyPI package
        try:
            result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=args.timeout)
        except subprocess.TimeoutExpired:
            return {"family": family, "gpus": gpus, "T": args.seq_len, "error": f"over {args.timeout} s"}
        if result.returncode != 0 or not os.path.exists(json_out):
            lines = result.stderr.splitlines()
            # The first error a worker raised: the launcher's own last line, ChildFailedError, names none.
            raised = [line for line in lines if "Error" in line and "ChildFailedError" not in line]
            sys.stderr.write(result.stderr[-4000:])
            error = (raised[:1] or lines[-1:] or ["failed"])[0]
            return {"family": family, "gpus": gpus, "T": args.seq_len, "error": error[:200]}
        with open(json_out) as f:
            return json.load(f)


def table(rows: list[dict]) -> str:
    lines = [
        "| model | GPUs | T | tokens/s per GPU | step (s) | peak memory per GPU (GiB) | scaling efficiency "
        "| first steps (s) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    one = {r["family"]: r for r in rows if r["gpus"] == 1 and "error" not in r}
    for r in rows:
        name = f"StateX-{'GLA' if r['family'] == 'gla' else 'Mamba2'}-{'tiny' if r.get('tiny') else '1.3B'}"
        if "error" in r:
            lines.append(f"| {name} | {r['gpus']} | {r['T']:,} | {r['error']} | | | | |")
            continue
        base = one.get(r["family"])
        scaling = f"{r['tokens_per_s_per_gpu'] / base['tokens_per_s_per_gpu']:.0%}" if base and r["gpus"] > 1 else ""
        lines.append(
            f"| {name} | {r['gpus']} | {r['T']:,} | {r['tokens_per_s_per_gpu']:,.0f} | {r['step_s']:.2f} | "
            f"{r['peak_GiB_per_gpu']:.1f} | {scaling} | {r['first_steps_s']:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gpus", nargs="+", type=int, default=[1, 2], help="GPU counts to run (default: 1 2)")
    parser.add_argument("--families", nargs="+", choices=FAMILIES, default=list(FAMILIES))
    parser.add_argument("--seq-len", type=int, help="tokens per sequence (default 65,536; --tiny: 256)")
    parser.add_argument("--steps", type=int, default=3, help="timed optimizer steps (default 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first (default 1)")
    parser.add_argument("--accumulation", type=int, default=1, help="micro-batches per optimizer step (default 1)")
    parser.add_argument("--tiny", action="store_true", help="tiny models on CPU: checks that the benchmark runs")
    parser.add_argument("--timeout", type=int, default=540, help="seconds per launch (default 540)")
    parser.add_argument("--port", type=int, default=29_541, help="the launcher's rendezvous port")
    parser.add_argument("--json", help="also write the rows here")
    parser.add_argument("--worker", choices=FAMILIES, dest="family", help=argparse.SUPPRESS)
    parser.add_argument("--json-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.seq_len = args.seq_len or (TINY_SEQ_LEN if args.tiny else 65_536)
    if args.warmup < 1 or args.steps < 1:
        parser.error("--warmup and --steps must be at least 1 (the first step compiles the kernels)")
    if args.family:
        measure_in_this_process(args)
        return
    if not args.tiny and torch.cuda.device_count() < max(args.gpus):
        raise SystemExit(f"bench_train_fsdp.py: {max(args.gpus)} GPUs asked, {torch.cuda.device_count()} here")
    rows = []
    for family in args.families:
        for gpus in args.gpus:
            row = launch(family, gpus, args)
            print(json.dumps(row), flush=True)
            rows.append(row)
            if args.json:
                with open(args.json, "w") as f:
                    json.dump(rows, f, indent=1)
    device = "CPU (--tiny)" if args.tiny else torch.cuda.get_device_name()
    print(f"\nFSDP (shipped configs), batch 1 per GPU, accumulation {args.accumulation}, {device}:")
    print(table(rows))


if __name__ == "__main__":
    main()
