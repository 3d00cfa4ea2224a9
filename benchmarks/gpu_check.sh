#!/usr/bin/env bash
# GPU readiness check: extraction, LoRA, sharding and attention kernels on real-size cards.
#
# On a CUDA machine (about 5 minutes for steps 1-5; installs nothing), with random weights of the real
# architectures ViT-B/16 (card `clip`) and ViT-L/14 (card `clip-l14`) in bf16:
#   1. bench_extract.py  - extract img/s end to end against the bare forward (ratio >= 0.9
#                          expected on small images with enough decode workers);
#   2. bench_lora.py     - LoRA q/v step img/s and peak memory against full fine-tuning;
#   3. bench_shards.py   - one process against torchrun (several GPUs when present);
#   4. pytest -m gpu     - the CUDA tests that are skipped on a CPU;
#   5. gpu_attention.py  - which fused SDPA/flash kernels each card's attention runs, as built
#                          and after unfusing q/k/v for LoRA, and torch.compile on/off;
#   6. pytest -m giant   - every pretrained card at full size builds, has its declared parameter
#                          count and matches its library's own call (on the GPU);
#   7. gpu_card_times.py - measured ms/image per full-size card beside `models list`'s estimate.
# Every step runs under its own time limit and the script goes on after a failure; it exits 1
# if any step failed.
#
# Usage: benchmarks/gpu_check.sh [--dry-run] [--list]
#   --dry-run  the same steps end to end on the CPU with tiny cards, fp32 and a few images
#              (minutes; this is what the test suite runs);
#   --list     print the commands and exit.
# PYTHON (default: .venv/bin/python, else python3) chooses the interpreter.
set -uo pipefail
cd "$(dirname "$0")/.."

DRY=0
LIST=0
for arg in "$@"; do
    case "$arg" in
        --dry-run) DRY=1 ;;
        --list) LIST=1 ;;
        -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
        *) echo "gpu_check.sh: unknown option $arg (use --dry-run or --list)" >&2; exit 2 ;;
    esac
done

if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi

if [[ $DRY == 1 ]]; then
    BASE=tiny-clip; LARGE=tiny-vit; PREC=fp32; DEVICE=cpu; IMAGES=10; BATCH=5; WORKERS=0
    STEPS=1; LORA_BATCH=2; COMPILE=eager; LIMIT=240
    GIANT="--co"; CARDS="--tiny"; GPU_TESTS="tests/test_lora_adapters.py"
else
    BASE=clip; LARGE=clip-l14; PREC=bf16; DEVICE=cuda; IMAGES=256; BATCH=64; WORKERS=8
    STEPS=5; LORA_BATCH=32; COMPILE=inductor; LIMIT=120
    GIANT=""; CARDS=""; GPU_TESTS=""
fi

STEPS_RUN=(
    "benchmarks/bench_extract.py --model $BASE --images $IMAGES --batch-size $BATCH --precision $PREC --workers $WORKERS"
    "benchmarks/bench_extract.py --model $LARGE --images $IMAGES --batch-size $BATCH --precision $PREC --workers $WORKERS"
    "benchmarks/bench_lora.py --models $BASE,$LARGE --devices $DEVICE --precision $PREC --batch-size $LORA_BATCH --steps $STEPS"
    "benchmarks/bench_shards.py --model $BASE --images $IMAGES --batch-size $BATCH --precision $PREC"
    "-m pytest -q -m gpu -rs -p no:cacheprovider $GPU_TESTS"
    "benchmarks/gpu_attention.py --models $BASE,$LARGE --device $DEVICE --precision $PREC --batch-size $BATCH --steps $STEPS --compile-backend $COMPILE"
    "-m pytest -q -m giant $GIANT -p no:cacheprovider tests/test_backbones_zoo_full.py"
    "benchmarks/gpu_card_times.py --device $DEVICE --precision $PREC --batch-size $BATCH $CARDS"
)

if [[ $LIST == 1 ]]; then
    for step in "${STEPS_RUN[@]}"; do echo "$PYTHON $step"; done
    exit 0
fi

if [[ $DRY == 0 ]] && ! "$PYTHON" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check.sh: torch sees no CUDA device; run it on a GPU machine, or pass --dry-run" >&2
    exit 2
fi

"$PYTHON" - <<'EOF'
import os, platform, torch
print(f"torch {torch.__version__}, python {platform.python_version()}, {os.cpu_count()} CPU cores")
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    print(f"cuda:{i} {p.name}, {p.total_memory / 2**30:.0f} GiB, capability {p.major}.{p.minor}")
EOF

export HF_HUB_OFFLINE=1
FAILED=0
START=$SECONDS
for step in "${STEPS_RUN[@]}"; do
    echo
    echo "=== $PYTHON $step"
    t0=$SECONDS
    # shellcheck disable=SC2086
    timeout "$LIMIT" "$PYTHON" $step
    rc=$?
    echo "=== exit $rc after $((SECONDS - t0)) s"
    if [[ $rc != 0 ]]; then FAILED=1; fi
done
echo
echo "gpu_check: $((SECONDS - START)) s in all, $([[ $FAILED == 0 ]] && echo 'every step passed' || echo 'SOME STEPS FAILED')"
exit $FAILED
