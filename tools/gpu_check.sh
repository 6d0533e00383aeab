#!/usr/bin/env bash
# GPU check, under 8 minutes on one GPU (the parts' limits add up to 7.7):
#   1. the CUDA-marked tests (float16 autocast + GradScaler, bfloat16 without it, channels-last, resume, checkpoints
#      loading on the CPU; with 2+ GPUs, DDP over NCCL and SyncBatchNorm),
#   2. a tiny 3-stage training run under torchrun on all GPUs (the real command line),
#   3. tools/benchmark.py --nproc <all GPUs>: training images/s of stages 1-3 in 1 and in all GPUs' processes,
#      with AMP off and on (TRAIN.AMP_DTYPE auto: bfloat16 where the GPU computes in it; IS-GAN ResNet-50, 384x128,
#      32 images per GPU).
# Each part has its own time limit; a failing part does not stop the others; a summary closes the run.
#
#   bash tools/gpu_check.sh             # uses python3 (or $PYTHON) with torch installed; no venv needed
#   OUT=/some/dir bash tools/gpu_check.sh   # also writes gpu_check.log, summary.txt and the benchmark tables there
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # the package from this checkout, without installing it
export PYTHONUNBUFFERED=1
OUTDIR=${OUT:-}
LOG=/dev/null
if [ -n "$OUTDIR" ]; then
    mkdir -p "$OUTDIR"
    LOG="$OUTDIR/gpu_check.log"
    : > "$LOG"
fi
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
source tools/timed_parts.sh

# ---------------------------------------------------------------- 0. what is there
say "=== environment"
if ! "$PY" -c "import torch" 2>/dev/null; then
    say "missing: torch (python: $PY). Install torch with CUDA, or set PYTHON to a python that has it."
    exit 2
fi
"$PY" - <<'EOF' 2>&1 | tee -a "$LOG"
import importlib, platform, torch
nccl = ".".join(map(str, torch.cuda.nccl.version())) if torch.cuda.is_available() else "-"
print(f"python {platform.python_version()}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
      f"cuDNN {torch.backends.cudnn.version()}, NCCL {nccl}")
for i in range(torch.cuda.device_count()):
    print(f"GPU {i}: {torch.cuda.get_device_name(i)}")
missing = []
for name in ("torchvision", "torchreid", "yacs", "yaml", "tabulate", "numpy", "scipy", "cv2", "PIL", "h5py",
             "tensorboard", "pytest", "isgan_torchreid"):
    try:
        importlib.import_module(name)
    except Exception as e:
        missing.append(f"{name} ({type(e).__name__}: {e})")
print("missing: " + "; ".join(missing) if missing else "all packages importable")
raise SystemExit(1 if missing else 0)
EOF
if [ "${PIPESTATUS[0]}" -ne 0 ]; then
    say "install the missing packages (wheels) first; nothing was run"
    exit 2
fi
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    say "no CUDA device visible to torch: nothing to check"
    exit 2
fi
NGPU=$("$PY" -c "import torch; print(torch.cuda.device_count())")
say "using $NGPU GPU(s)"

# ---------------------------------------------------------------- 1. CUDA-marked tests
part "CUDA tests (pytest -m cuda)" 200 \
    "$PY" -m pytest -q -m cuda -p no:cacheprovider --basetemp "$WORK/pytest" tests/test_cuda.py

# ---------------------------------------------------------------- 2. the training command under torchrun
part "torchrun tools/train.py on $NGPU GPU(s), tiny 3-stage run" 80 \
    "$PY" -m torch.distributed.run --nproc_per_node "$NGPU" --master_port 29531 tools/train.py \
    --config-file isgan_synthetic DEVICE cuda TRAIN.AMP True DATA.ROOT "$WORK/data" \
    OUTPUT_DIR "$WORK/run" DATA.WORKERS 2 DATA.SYNTH.NUM_TRAIN_IDS 16 SAMPLER.P "$((2 * NGPU))" \
    TRAIN.STAGE1.EPOCHS 2 TRAIN.STAGE2.EPOCHS 2 TRAIN.STAGE3.EPOCHS 1 TRAIN.PRINT_FREQ 1

# ---------------------------------------------------------------- 3. scaling benchmark, AMP off and on
for amp in False True; do
    table="$WORK/bench_amp_$amp.txt"
    part "benchmark: stages 1-3 in 1 and $NGPU process(es), TRAIN.AMP $amp" 90 \
        bash -c "set -o pipefail; \"$PY\" tools/benchmark.py --config-file isgan_market \
            --skip-training --skip-evaluator --nproc $NGPU --batch 32 --iters 5 \
            MODEL.PRETRAINED False TRAIN.AMP $amp | tee \"$table\""
    if [ -n "$OUTDIR" ] && [ -s "$table" ]; then
        cp "$table" "$OUTDIR/benchmark_amp_$(echo "$amp" | tr '[:upper:]' '[:lower:]').md"
    fi
done

# ---------------------------------------------------------------- summary
summary "$NGPU GPU(s)"
exit $((FAILED > 0))
