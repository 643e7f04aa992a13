#!/usr/bin/env bash
# The single-GPU suite and the benchmarks, one step per device call (a call is limited to 10 minutes).
#
# Here, once:   mkdir -p .device/wheels && cp ../shared/device-wheels/* .device/wheels/
#               pip download --no-deps -d .device/wheels pytest pluggy iniconfig pytest-timeout
#               (pyproject's pytest options need pytest-timeout)
# Device calls: bash benchmarks/gpu_session.sh tests|gla|ssd|train|repro   (carry: [".device"]; logs in $OUT)
#   repro: the miniature reproduction for up to 8 minutes; its results folder comes back as
#   $OUT/repro.tgz. Carry a previous repro.tgz as .device/repro.tgz to resume where it stopped.
# The GPU machine has torch, triton and transformers; fla and mamba_ssm come from the carried wheels
# (mamba_ssm as extracted source: pip cannot build it there). Each step has its own time limit so
# one slow step cannot eat the call; the multi-GPU test needs a 2-GPU machine and is not run here.
set -uo pipefail
OUT=${OUT:-/tmp/statex-gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1

python -m pip install --quiet --no-deps --no-index .device/wheels/*.whl
python -m pip install --quiet --no-deps --no-build-isolation -e .
mkdir -p /tmp/mamba_ssm_src && tar -xzf .device/wheels/mamba_ssm-*.tar.gz -C /tmp/mamba_ssm_src
export MAMBA_SSM_SRC=$(ls -d /tmp/mamba_ssm_src/mamba_ssm-*)

case "${1:-tests}" in
    tests) STATEX_GPU_TESTS=1 timeout 500 python -m pytest -q tests/gpu --ignore=tests/gpu/test_multi_gpu.py ;;
    gla) timeout 540 python benchmarks/bench_gla.py --fla-timeout 120 ;;
    ssd) timeout 540 python benchmarks/bench_ssd.py --impls ours,mamba_ssm --json "$OUT/ssd.json" ;;
    train) timeout 540 python benchmarks/bench_train.py --json "$OUT/train.json" ;;
    repro)
        mkdir -p /tmp/repro-out && { [ -f .device/repro.tgz ] && tar -xzf .device/repro.tgz -C /tmp/repro-out; }
        timeout 560 python benchmarks/reproduce_statex.py --max-minutes 8 --output-dir /tmp/repro-out/repro
        tar -czf "$OUT/repro.tgz" -C /tmp/repro-out repro ;;
    *) echo "usage: $0 tests|gla|ssd|train|repro" >&2; exit 2 ;;
esac 2>&1 | tee "$OUT/${1:-tests}.log"
