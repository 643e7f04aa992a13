#!/usr/bin/env bash
# The single-GPU suite and the benchmarks on the GPU machine (a device call is limited to 10 minutes).
#
# Here, once:   mkdir -p .device/wheels && cp ../shared/device-wheels/* .device/wheels/
#               pip download --no-deps -d .device/wheels pytest pluggy iniconfig pytest-timeout pytest-xdist execnet
#               (pyproject's pytest options need pytest-timeout)
# Device calls: bash benchmarks/gpu_session.sh STEP...   (carry: [".device"]; a log per step in $OUT)
#   STEP: install | tests | gla | ssd | sweep | profile | decode-profile | train | generate | switches | gemv | fsdp |
#         multigpu | repro
#   (install: only the setup every call does, for commands of your own after it). Several steps
#   share one call (one machine start), e.g. `gla profile`; `tests` needs a call of its own (the whole
#   suite takes most of one; benchmarks/README.md has its time).
#   Knobs: TESTS_PATHS (test files, run in that order), TESTS_ARGS (e.g. "-n 4": pytest-xdist, carried in
#   .device/wheels, compiles the Triton kernels in parallel), TESTS_TIMEOUT, FLA_TIMEOUT, GLA_TIMEOUT,
#   GLA_ARGS (e.g. "--impls fla --shapes H1 --skip-layers"), GLA_CACHE (see the gla step), SSD_ARGS
#   (e.g. "--impls ours,mamba_ssm --peer-ns 512"), SWEEP_ARGS (e.g. "--ops gla"), GEMV_ARGS (e.g. "--ms 1"),
#   SWITCH_ARGS, SWITCH_FLAGS, SWITCH_ROUNDS, SWITCH_TIMEOUT (see the switches step).
#   repro: the miniature (reproduce_statex.py) into the folders REPRO_DIRS, each with its REPRO_ARGS (see
#   the step); they come back as $OUT/repro*.tgz, and carried .device/repro*.tgz resume them.
#   fsdp: bench_train_fsdp.py (FSDP_ARGS, default "--gpus 1": the 1-GPU config at 64K, both families;
#   "--gpus 1 2" on a 2-GPU machine). multigpu: tests/gpu/test_multi_gpu.py (the 1-GPU test alone on one
#   GPU); it needs datasets, carried as .device/wheels-datasets (benchmarks/README.md).
# The GPU machine has torch, triton and transformers; fla and mamba_ssm come from the carried wheels
# (mamba_ssm as extracted source: pip cannot build it there). Each step has its own time limit so
# one slow step cannot eat the call; `tests` leaves out the multi-GPU test, which is the `multigpu` step.
set -uo pipefail
OUT=${OUT:-/tmp/statex-gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1

python -m pip install --quiet --no-deps --no-index .device/wheels/*.whl
if [ -d .device/wheels-datasets ]; then python -m pip install --quiet --no-deps --no-index .device/wheels-datasets/*.whl; fi
python -m pip install --quiet --no-deps --no-build-isolation -e .
mkdir -p /tmp/mamba_ssm_src && tar -xzf .device/wheels/mamba_ssm-*.tar.gz -C /tmp/mamba_ssm_src
export MAMBA_SSM_SRC=$(ls -d /tmp/mamba_ssm_src/mamba_ssm-*)

run_step() {
    case "$1" in
    install) ;;  # the installs above are the whole step
    tests)
        # A test that breaks a capture on purpose runs in a process of its own: torch does not promise a
        # process whose capture failed is whole, and the tests that would share it should not pay for that.
        isolated=tests/gpu/test_decode_graphs_gpu.py::test_a_capture_the_forward_breaks_falls_back_on_the_callers_stream
        STATEX_GPU_TESTS=1 timeout "${TESTS_TIMEOUT:-500}" python -P -m pytest -q --durations=0 ${TESTS_ARGS:-} ${TESTS_PATHS:-tests/gpu} \
            --ignore=tests/gpu/test_multi_gpu.py --deselect "$isolated"
        status=$?
        if [[ -z "${TESTS_PATHS:-}" || "${TESTS_PATHS}" == *test_decode_graphs_gpu.py* ]]; then
            STATEX_GPU_TESTS=1 timeout 120 python -P -m pytest -q "$isolated" || status=1
        fi
        return $status ;;
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
    decode-profile) timeout 200 python benchmarks/profile_decode.py ${DECODE_PROFILE_ARGS:-} ;;
    train) timeout 540 python benchmarks/bench_train.py --json "$OUT/train.json" ;;
    generate) timeout 540 python benchmarks/bench_generate.py ${GENERATE_ARGS:-} --json "$OUT/generate.json" ;;
    switches)
        # Decode switches side by side: bench_generate's rows of ours (SWITCH_ARGS; default Mamba2 at B = 1) without a
        # flag and with each of SWITCH_FLAGS (';' between them; default --norm-in-step, a same-run baseline), in
        # turn for SWITCH_ROUNDS rounds, each run its own process: the run-to-run spread shows beside the difference.
        # SWITCH_TIMEOUT (default 90 s) is each run's own limit (bench_generate's --timeout, which reports what
        # finished); the outer timeout only backs it up.
        IFS=';' read -r -a flags <<< "${SWITCH_FLAGS:---norm-in-step}"
        limit=${SWITCH_TIMEOUT:-90}
        for round in $(seq "${SWITCH_ROUNDS:-2}"); do
            for flag in "" "${flags[@]}"; do
                echo "== round $round: ${flag:-no flag}"
                timeout -k 10 "$((limit + 15))" python -P benchmarks/bench_generate.py --timeout "$limit" \
                    ${SWITCH_ARGS:---impls ours_mamba2 --batches 1 --ttft 1024 --eager-new-tokens 4} $flag 2>&1 | grep -v '^ROW'
            done
        done ;;
    gemv) timeout 540 python benchmarks/bench_gemv.py ${GEMV_ARGS:-} --json "$OUT/gemv.json" ;;
    fsdp) timeout 560 python benchmarks/bench_train_fsdp.py ${FSDP_ARGS:---gpus 1} --json "$OUT/fsdp.json" ;;
    multigpu) STATEX_GPU_TESTS=1 timeout "${TESTS_TIMEOUT:-540}" python -P -m pytest -q --durations=0 tests/gpu/test_multi_gpu.py ;;
    repro)
        # The miniature (benchmarks/reproduce_statex.py): its units run as parallel processes (the small models
        # leave the GPU mostly idle; their steps are bound by the host). REPRO_DIRS names the output folders
        # (default "miniature"), REPRO_ARGS the arguments for each, in order, separated by ';' (e.g.
        # "--preset narrow --stage pretrain"); the folders run at the same time, REPRO_JOBS processes each.
        # Carried .device/repro*.tgz (the $OUT/repro*.tgz of a previous call) restore them: the run resumes.
        # posttrain needs the datasets package: carry its wheels (datasets, dill, multiprocess) as .device/wheels-datasets.
        mkdir -p /tmp/repro && for archive in .device/repro*.tgz; do [ -f "$archive" ] && tar -xzf "$archive" -C /tmp/repro; done
        nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader -l 15 > /tmp/repro/gpu-util.log &
        monitor=$! runs=()
        IFS=';' read -r -a repro_args <<< "${REPRO_ARGS:-}"
        i=0
        for dir in ${REPRO_DIRS:-miniature}; do
            timeout -k 20 "${REPRO_TIMEOUT:-520}" python -P benchmarks/reproduce_statex.py --output-dir "/tmp/repro/$dir" \
                --jobs "${REPRO_JOBS:-12}" --max-minutes "${REPRO_MINUTES:-8}" ${repro_args[$i]:-} > "/tmp/repro/$dir.log" 2>&1 &
            runs+=($!) i=$((i + 1))
        done
        wait "${runs[@]}"; kill "$monitor"; tail -n 25 /tmp/repro/*.log
        # $OUT returns 8 files of 16 MB at most: the results in one archive, the source models' weights by family.
        tar -czf "$OUT/repro.tgz" --exclude='*.safetensors' -C /tmp/repro .
        for family in gla mamba2; do
            (cd /tmp/repro && find . -path "*/units/$family-seed*/source/*.safetensors" | tar -czf "$OUT/repro-$family.tgz" -T -)
        done ;;
    *) echo "usage: $0 STEP... (install | tests | gla | ssd | sweep | profile | decode-profile | train | generate | switches | gemv | fsdp | multigpu | repro)" >&2; return 2 ;;
    esac
}

for step in "${@:-tests}"; do
    run_step "$step" 2>&1 | tee "$OUT/$step.log"
done
