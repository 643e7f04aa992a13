#!/usr/bin/env bash
# The single-GPU suite and the benchmarks on the GPU machine (a device call is limited to 10 minutes).
#
# Here, once:   mkdir -p .device/wheels && cp ../shared/device-wheels/* .device/wheels/
#               pip download --no-deps -d .device/wheels pytest pluggy iniconfig pytest-timeout
#               (pyproject's pytest options need pytest-timeout)
# Device calls: bash benchmarks/gpu_session.sh STEP...   (carry: [".device"]; a log per step in $OUT)
#   STEP: tests | gla | ssd | sweep | profile | train | generate | repro. Several steps share one call (one
#   machine start), e.g. `gla profile`; `tests` needs a call of its own (the whole suite: 433 s).
#   Knobs: TESTS_PATHS (test files, run in that order), TESTS_TIMEOUT, FLA_TIMEOUT, GLA_TIMEOUT,
#   GLA_ARGS (e.g. "--impls fla --shapes H1 --skip-layers"), GLA_CACHE (see the gla step), SSD_ARGS
#   (e.g. "--impls ours,mamba_ssm --peer-ns 512"), SWEEP_ARGS (e.g. "--ops gla").
#   repro: the miniature reproduction, the units in REPRO_UNITS ("seed:arch ...", default
#   "0:gla 0:mamba2") in parallel; their results folders come back as $OUT/repro.tgz. Carry a previous
#   repro.tgz as .device/repro.tgz to keep its folders; merge them with reproduce_statex.py --merge.
#   A variant: REPRO_ARGS="--convert-args=--layers=2,4,6" REPRO_TAG=layers246 (folders named with it).
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

run_step() {
    case "$1" in
    tests) STATEX_GPU_TESTS=1 timeout "${TESTS_TIMEOUT:-500}" python -P -m pytest -q --durations=0 ${TESTS_PATHS:-tests/gpu} \
        --ignore=tests/gpu/test_multi_gpu.py ;;
    gla)
        # GLA_CACHE=1: the workers keep their Triton caches in /tmp/triton-cache, seeded from a carried
        # .device/triton-autotune.tgz; the autotuning results (*.autotune.json) come back as
        # $OUT/triton-autotune.tgz. fla's first call autotunes longer than a call: this splits it over two.
        cache_args=()
        if [ -n "${GLA_CACHE:-}" ]; then
            mkdir -p /tmp/triton-cache && cache_args=(--triton-cache /tmp/triton-cache)
            [ -f .device/triton-autotune.tgz ] && tar -xzf .device/triton-autotune.tgz -C /tmp/triton-cache
        fi
        timeout -k 10 "${GLA_TIMEOUT:-540}" python benchmarks/bench_gla.py --fla-timeout "${FLA_TIMEOUT:-120}" ${GLA_ARGS:-} "${cache_args[@]}"
        if [ -n "${GLA_CACHE:-}" ]; then
            (cd /tmp/triton-cache && find . -name '*.autotune.json' | tar -czf "$OUT/triton-autotune.tgz" -T -)
        fi ;;
    ssd) timeout 540 python benchmarks/bench_ssd.py ${SSD_ARGS:---impls ours,ours_recompute,mamba_ssm} --json "$OUT/ssd.json" ;;
    sweep) timeout 540 python benchmarks/sweep_launch_configs.py ${SWEEP_ARGS:-} --json "$OUT/sweep.json" ;;
    profile) timeout 200 python benchmarks/profile_gla.py ;;
    train) timeout 540 python benchmarks/bench_train.py --json "$OUT/train.json" ;;
    generate) timeout 540 python benchmarks/bench_generate.py ${GENERATE_ARGS:-} --json "$OUT/generate.json" ;;
    repro)
        # The small models leave the H100 mostly idle (the step time is host-bound), so the (seed, arch)
        # units in REPRO_UNITS run as parallel processes, each into its own folder; merge them here later.
        mkdir -p /tmp/repro-out && { [ -f .device/repro.tgz ] && tar -xzf .device/repro.tgz -C /tmp/repro-out; }
        nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader -l 15 > "$OUT/gpu-util.log" &
        monitor=$! units=() tag=${REPRO_TAG:+-$REPRO_TAG}
        for unit in ${REPRO_UNITS:-0:gla 0:mamba2}; do
            seed=${unit%%:*} arch=${unit##*:}
            OMP_NUM_THREADS=2 timeout 545 python benchmarks/reproduce_statex.py --seeds "$seed" --archs "$arch" ${REPRO_ARGS:-} \
                --output-dir "/tmp/repro-out/seed$seed-$arch$tag" > "/tmp/repro-out/seed$seed-$arch$tag.log" 2>&1 &
            units+=($!)
        done
        # Unit logs go into the archive: $OUT returns 8 files at most, whatever the number of units.
        wait "${units[@]}"; kill "$monitor"; tail -n 30 /tmp/repro-out/seed*.log
        tar -czf "$OUT/repro.tgz" -C /tmp/repro-out . ;;
    *) echo "usage: $0 STEP... (tests | gla | ssd | sweep | profile | train | generate | repro)" >&2; return 2 ;;
    esac
}

for step in "${@:-tests}"; do
    run_step "$step" 2>&1 | tee "$OUT/$step.log"
done
