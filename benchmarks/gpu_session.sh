#!/usr/bin/env bash
# One stage of the GPU measurements of issue 11, for a lent GPU machine whose calls are capped at
# 10 minutes: run the stages as separate calls. Output goes to files under $OUT (default ./gpu_out),
# never through a pipe: a timed-out test can leave dataloader workers that hold a pipe open and lose
# everything printed before.
#
#   bash benchmarks/gpu_session.sh warm               # a fresh machine's first call: compiles the default training
#                                                     # step once (its two compiling steps took 348-443 s on a fresh H100
#                                                     # since the regions use combo kernels), so the next calls reuse Inductor's caches
#                                                     # on disk and have their time for measuring
#   bash benchmarks/gpu_session.sh tests              # GPU-marked tests of the kernels and the model
#   bash benchmarks/gpu_session.sh tests-train        # GPU-marked trainer tests (Lightning, compiled regions; slow)
#   bash benchmarks/gpu_session.sh kernel             # fused aggregation: both pixel-backward modes on
#                                                     # clustered points, and points visible in 1-2 cameras
#   bash benchmarks/gpu_session.sh train [ARGS...]    # compiled training step, --profile --host-timeline,
#                                                     # trace + what the host did in each GPU idle gap
#   bash benchmarks/gpu_session.sh eager-ops          # eager ops between the regions (CPU-side count)
#   bash benchmarks/gpu_session.sh ab ARGS...         # A/B on a warm machine: the compiled step without, then
#                                                     # with ARGS (30 steps each, no profile); run it twice;
#                                                     # e.g. ARGS = --no-combo-kernels, --gradient-sink or --inductor KEY=VALUE
#   bash benchmarks/gpu_session.sh ab-toggle NAME...  # one process, for each NAME blocks alternating with it flipped
#                                                     # and not (train_throughput --ab), then each NAME's own bench:
#                                                     # anchor-encoder (stacked / per branch; compiles twice: on a
#                                                     # fresh machine give it a call of its own), denoising-costs
#                                                     # (GT on the host / moved to the GPU; the wait in finish()),
#                                                     # graphed-optimizer (clip + AdamW as one CUDA graph / eager).
#                                                     # after `warm`, one call fits `ab-toggle denoising-costs
#                                                     # graphed-optimizer`
#   bash benchmarks/gpu_session.sh host-sample [NAME...] # the ab-toggle step (NAMEs optional) sampled by py-spy from outside
#                                                     # (needs the py-spy wheel in .wheels): three samplers at once,
#                                                     # wall (--idle), on-CPU, and GIL holder; host_samples.py reads them.
#                                                     # After `warm` (without it, a fresh H100 compiles past the limit)
#   bash benchmarks/gpu_session.sh trainer-ab ARGS... # the same through the trainer's Lightning module, 1 GPU
#                                                     # (ddp_scaling.py --devices 1, reduce-overhead regions),
#                                                     # e.g. ARGS = --graphed-optimizer
#
# Needs python3 with torch (CUDA) and Triton; pydantic and jsonschema are installed from ./.wheels
# when present (a machine without an index: `pip download -d .wheels ... pydantic jsonschema py-spy`;
# py-spy only for host-sample).
# GPU_SESSION_DRY_RUN=FILE appends each stage command to FILE (one per line) instead of running it:
# tests/benchmarks/test_gpu_session.py checks on the CPU that every command's options parse.
set -u
if [ -n "${GPU_SESSION_DRY_RUN:-}" ]; then
    timeout() { shift; printf '%q ' "$@" >>"$GPU_SESSION_DRY_RUN"; echo >>"$GPU_SESSION_DRY_RUN"; }
fi
stage="${1:?stage: warm | tests | tests-train | kernel | train | eager-ops | ab | ab-toggle | host-sample | trainer-ab}"
shift
case "$stage" in
    warm | tests | tests-train | kernel | train | eager-ops | ab | ab-toggle | host-sample | trainer-ab) ;;
    *) echo "unknown stage $stage (warm | tests | tests-train | kernel | train | eager-ops | ab | ab-toggle | host-sample | trainer-ab)" >&2; exit 2 ;;
esac
out="${OUT:-$PWD/gpu_out}"
mkdir -p "$out"
if [ -z "${GPU_SESSION_DRY_RUN:-}" ] && ls .wheels/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .wheels/*.whl >"$out/pip.log" 2>&1
    export PYTHONPATH="/tmp/site:$PWD"
else
    export PYTHONPATH="$PWD"
fi
export PYTHONUNBUFFERED=1
if [ -z "${GPU_SESSION_DRY_RUN:-}" ]; then
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv >"$out/gpu.txt" 2>&1
    python3 -c "import torch, triton; print(torch.__version__, triton.__version__)" >>"$out/gpu.txt" 2>&1
fi

case "$stage" in
    warm)
        # session 17: with combo kernels, warm-up took 358 + 85 s on a fresh H100, and a call that
        # measured afterwards ran out of time before its first timed step
        timeout 570 python3 benchmarks/train_throughput.py --steps 2 --warmup 3 --fused-adam --compile --compile-mode reduce-overhead \
            --skip-backbone-only --flops-tflop 12.27 --json "$out/warm.json" >"$out/warm.log" 2>&1
        ;;
    tests)
        timeout 560 python3 -m pytest -q -p no:cacheprovider --durations=10 -m gpu tests/gpu tests/model \
            >"$out/gpu_tests.log" 2>&1
        ;;
    tests-train)
        timeout 570 python3 -m pytest -q -p no:cacheprovider --durations=10 -m gpu tests/engine \
            >"$out/gpu_tests_train.log" 2>&1
        ;;
    kernel)
        for mode in segments chunks; do
            timeout 200 python3 benchmarks/aggregation_kernel.py --points clustered --pixel-backward "$mode" \
                --json "$out/agg_clustered_$mode.json" >"$out/agg_clustered_$mode.log" 2>&1
        done
        timeout 150 python3 benchmarks/aggregation_kernel.py --points visible \
            --json "$out/agg_visible.json" >"$out/agg_visible.log" 2>&1
        ;;
    train)
        timeout 40 python3 benchmarks/denoising_solve.py --device cuda --workers 8 --gt host device >"$out/denoising_solve.json" 2>"$out/denoising_solve.log"
        timeout 545 python3 benchmarks/train_throughput.py --steps 16 --warmup 5 --fused-adam --compile \
            --compile-mode reduce-overhead --flops-tflop 12.27 --gpu-idle --profile --host-timeline \
            --trace "$out/trace.json.gz" --json "$out/train.json" "$@" >"$out/train.log" 2>&1
        ;;
    eager-ops)
        timeout 570 python3 benchmarks/eager_ops.py --json "$out/eager_ops.json" >"$out/eager_ops.log" 2>&1
        ;;
    ab)
        common=(--steps 30 --warmup 5 --fused-adam --compile --compile-mode reduce-overhead --skip-backbone-only)
        # the base reuses a warm machine's compiled regions (run `warm` first); a variant that changes
        # Inductor's config (--inductor KEY=VALUE, --no-combo-kernels) compiles them all again (about 5.5
        # minutes; 296 s for the combo kernels on an H200)
        timeout 170 python3 benchmarks/train_throughput.py "${common[@]}" --json "$out/ab_base.json" >"$out/ab_base.log" 2>&1
        timeout 410 python3 benchmarks/train_throughput.py "${common[@]}" "$@" --json "$out/ab_variant.json" >"$out/ab_variant.log" 2>&1
        ;;
    ab-toggle)
        [ $# -gt 0 ] || { echo "ab-toggle needs NAMEs: anchor-encoder denoising-costs graphed-optimizer" >&2; exit 2; }
        # the training step first (on a machine without `warm` it compiles for 5-7.5 minutes), then each toggle's own bench
        timeout 500 python3 benchmarks/train_throughput.py --steps 30 --warmup 5 --fused-adam --compile --compile-mode reduce-overhead \
            --skip-backbone-only --flops-tflop 12.27 --ab "$@" --json "$out/ab_toggle.json" >"$out/ab_toggle.log" 2>&1
        for toggle in "$@"; do
            case "$toggle" in
                anchor-encoder) timeout 60 python3 benchmarks/anchor_encoder_kernels.py --device cuda \
                    >"$out/anchor_encoder_kernels.json" 2>"$out/anchor_encoder_kernels.log" ;;
                denoising-costs) timeout 40 python3 benchmarks/denoising_solve.py --device cuda --workers 1 8 --gt host device \
                    >"$out/denoising_solve.json" 2>"$out/denoising_solve.log" ;;
            esac
        done
        ;;
    host-sample)
        # py-spy reads the process's memory without stopping it (--nonblocking), so the samplers barely
        # slow the step; each keeps what it saw when the process exits
        ab=()
        [ $# -gt 0 ] && ab=(--ab "$@")
        timeout 540 python3 benchmarks/train_throughput.py --steps 30 --warmup 5 --fused-adam --compile --compile-mode reduce-overhead \
            --skip-backbone-only --flops-tflop 12.27 --gpu-idle --host-timeline "${ab[@]}" --json "$out/host_sample.json" >"$out/host_sample.log" 2>&1 &
        bench=$!
        if [ -z "${GPU_SESSION_DRY_RUN:-}" ]; then
            spy=/tmp/site/bin/py-spy
            sleep 2  # $! is `timeout`; python is its child
            target=$(awk '{print $1}' "/proc/$bench/task/$bench/children" 2>/dev/null)
            for view in wall cpu gil; do
                flag=(); [ "$view" = wall ] && flag=(--idle); [ "$view" = gil ] && flag=(--gil)
                "$spy" record --pid "${target:-$bench}" --nonblocking --threads --rate 400 --format raw "${flag[@]}" \
                    --output "$out/pyspy_$view.txt" >"$out/pyspy_$view.log" 2>&1 &
            done
        fi
        wait "$bench"
        status=$?
        wait
        # at most 8 files come back from a lent machine: one text log, one JSON per view, the raw samples in one archive
        : >"$out/host_samples.log"
        for view in wall cpu gil; do
            echo "=== $view" >>"$out/host_samples.log"
            cat "$out/pyspy_$view.log" >>"$out/host_samples.log" 2>/dev/null
            [ -s "$out/pyspy_$view.txt" ] && timeout 60 python3 benchmarks/host_samples.py "$out/pyspy_$view.txt" \
                --json "$out/host_samples_$view.json" >>"$out/host_samples.log" 2>&1
        done
        if [ -z "${GPU_SESSION_DRY_RUN:-}" ]; then
            (cd "$out" && tar czf pyspy_raw.tgz pyspy_*.txt 2>/dev/null; rm -f pyspy_*.txt pyspy_*.log pip.log)
        fi
        echo "stage $stage exit $status" >>"$out/gpu.txt"
        exit $status
        ;;
    trainer-ab)
        common=(--devices 1 --steps 30 --warmup 8 --compile --compile-mode reduce-overhead)
        timeout 285 python3 benchmarks/ddp_scaling.py "${common[@]}" --out "$out/trainer_ab_base.json" >"$out/trainer_ab_base.log" 2>&1
        timeout 285 python3 benchmarks/ddp_scaling.py "${common[@]}" "$@" --out "$out/trainer_ab_variant.json" >"$out/trainer_ab_variant.log" 2>&1
        ;;
esac
status=$?
echo "stage $stage exit $status" >>"$out/gpu.txt"
exit $status
