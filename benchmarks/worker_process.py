"""Run one benchmark worker in its own process, with a deadline, and collect the rows it prints.

A worker prints each result as one ``ROW {json}`` line as soon as it has it, so a worker stopped at
its deadline (or crashed) still reports what it finished. The worker gets its own process group, so a
stop at the deadline also stops what it started (Triton's compilers).
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time


def run_worker(cmd: list[str], env: dict[str, str], timeout: float) -> tuple[list[dict], str]:
    """(the rows ``cmd`` printed, "ok" / "exit N" / "timeout Ns"); rows and error lines echo to stderr."""
    rows: list[dict] = []
    status = "ok"
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    deadline = time.monotonic() + timeout
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ)
    tail: list[str] = []
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise subprocess.TimeoutExpired(cmd, timeout)
            if not selector.select(timeout=min(left, 5.0)):
                continue
            line = proc.stdout.readline()
            if not line:
                break
            if line.startswith("ROW "):
                rows.append(json.loads(line[4:]))
                print(line.rstrip(), file=sys.stderr, flush=True)
            else:
                if "error" in line.lower():
                    print(line.rstrip(), file=sys.stderr, flush=True)
                tail = (tail + [line.rstrip()])[-20:]
        proc.wait()
        if proc.returncode != 0:
            status = f"exit {proc.returncode}"
            print("\n".join(tail), file=sys.stderr, flush=True)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        status = f"timeout {timeout:.0f}s"
    return rows, status
