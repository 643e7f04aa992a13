"""Schedule the miniature's units: pretraining first, each source's continuations once it exists.

Units run in this process one after another (``jobs=1``: CPU, tests) or as parallel processes (the small
models leave a GPU mostly idle: their steps are bound by the host). A run stops at ``max_minutes``: it
starts no unit that would not fit and ends the ones still running; the next invocation with the same
output folder resumes (finished units keep their ``result.json``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from miniature.settings import ARMS
from miniature.units import DEADLINE_ENV, ORIGINAL, is_done, run_unit

SCRIPT = Path(__file__).resolve().parents[1] / "reproduce_statex.py"
# Time a pretraining unit keeps after its training stops early, to save and evaluate its model.
EVAL_RESERVE_SECONDS = 75


def plan(families: Sequence[str], seeds: Sequence[int], arms: Sequence[str], stage: str) -> list[str]:
    """Unit specs ``family:seed:arm`` in order: every pretraining before any continuation."""
    units = []
    if stage in ("pretrain", "all"):
        units += [f"{f}:{s}:{ORIGINAL}" for s in seeds for f in families]
    if stage in ("continue", "all"):
        units += [f"{f}:{s}:{a}" for s in seeds for f in families for a in arms if a in ARMS]
    return units


def _source_ready(out: Path, spec: str) -> bool:
    family, seed, arm = spec.split(":")
    return arm == ORIGINAL or is_done(out, family, int(seed), ORIGINAL)


def _pending(out: Path, units: Sequence[str]) -> list[str]:
    return [u for u in units if not is_done(out, u.split(":")[0], int(u.split(":")[1]), u.split(":")[2])]


@dataclass
class Clock:
    """The time limit, and how long each kind of unit took so far (to start only units that fit)."""

    max_seconds: float
    start: float = field(default_factory=time.time)
    longest: dict[str, float] = field(default_factory=dict)

    @staticmethod
    def kind(spec: str) -> str:
        return "pretrain" if spec.endswith(ORIGINAL) else "continue"

    def elapsed(self) -> float:
        return time.time() - self.start

    def fits(self, spec: str) -> bool:
        return self.elapsed() + self.longest.get(self.kind(spec), 0.0) <= self.max_seconds

    def record(self, spec: str, seconds: float) -> None:
        self.longest[self.kind(spec)] = max(self.longest.get(self.kind(spec), 0.0), seconds)


def run_units(
    out: Path, units: Sequence[str], jobs: int, max_minutes: float, pretrain_minutes: float | None = None
) -> list[str]:
    """Run the units not yet done; returns those still not done (out of time, failed or waiting on a source).

    Pretraining stops early (and its result says so) at ``pretrain_minutes``, or in time to be saved and
    evaluated before ``max_minutes``, so that the continuations get their share of a time-limited run.
    """
    clock = Clock(max_minutes * 60)
    pretrain_end = min(max_minutes, pretrain_minutes or max_minutes) * 60
    if pretrain_end != float("inf"):
        os.environ[DEADLINE_ENV] = str(clock.start + min(pretrain_end, clock.max_seconds - EVAL_RESERVE_SECONDS))
    if jobs <= 1:
        for spec in _pending(out, units):
            if not _source_ready(out, spec) or not clock.fits(spec):
                continue
            print(f"[{clock.elapsed() / 60:5.1f} min] {spec}", flush=True)
            started = time.time()
            run_unit(out, spec)
            clock.record(spec, time.time() - started)
    else:
        _run_parallel(out, units, jobs, clock)
    left = _pending(out, units)
    if left:
        print(f"not done ({len(left)}): {' '.join(left)}; run again with the same --output-dir to resume")
    return left


def _run_parallel(out: Path, units: Sequence[str], jobs: int, clock: Clock) -> None:
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    waiting = _pending(out, units)
    running: dict[str, tuple[subprocess.Popen, float]] = {}
    failed: set[str] = set()
    # One thread per unit: many small processes share the host's cores.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
    while waiting or running:
        for spec in [s for s in waiting if _source_ready(out, s) and clock.fits(s)][: jobs - len(running)]:
            waiting.remove(spec)
            log = open(logs / f"{spec.replace(':', '-')}.log", "w")  # noqa: SIM115 (the child writes it)
            command = [sys.executable, "-P", str(SCRIPT), "--unit", spec, "--output-dir", str(out)]
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
            running[spec] = (process, time.time())
            print(f"[{clock.elapsed() / 60:5.1f} min] start {spec}", flush=True)
        for spec, (process, started) in list(running.items()):
            if process.poll() is None:
                continue
            del running[spec]
            clock.record(spec, time.time() - started)
            status = "done" if process.returncode == 0 else f"FAILED ({process.returncode}; see logs/)"
            if process.returncode:
                failed.add(spec)
            print(f"[{clock.elapsed() / 60:5.1f} min] {status} {spec} in {time.time() - started:.0f} s", flush=True)
        # Continuations of a failed pretraining, or units that no longer fit, will not start in this run.
        waiting = [s for s in waiting if f"{s.split(':')[0]}:{s.split(':')[1]}:{ORIGINAL}" not in failed]
        if not running and not any(_source_ready(out, s) and clock.fits(s) for s in waiting):
            break
        if clock.elapsed() > clock.max_seconds:
            for spec, (process, _) in running.items():
                os.killpg(process.pid, signal.SIGTERM)
                print(f"[{clock.elapsed() / 60:5.1f} min] out of time: stopped {spec}", flush=True)
            for process, _ in running.values():
                process.wait()
            break
        time.sleep(1.0)
