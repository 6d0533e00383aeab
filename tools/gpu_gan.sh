#!/usr/bin/env bash
# Issue 23, part 5: the demo's recipe (isgan_demo) on one GPU at 256x128, with a stage 2 of 5,040 steps (420 epochs
# of 12 steps: 48 training identities, P x K = 4 x 4) on synthperson, then the disentanglement benchmark after
# stages 2 and 3 and the figures of docs/figures. One call, under 9 minutes (the parts' limits add up to 540 s);
# training that runs out of its limit stops at its last checkpoint (every 20 epochs), and what it reached is
# measured.
#
#   OUT=/some/dir bash tools/gpu_gan.sh    # train.log, the benchmark tables and JSON, figures and the last
#                                          # sample grid go to OUT (default output/gpu_gan); checkpoints do not
#   DEVICE=cpu HEIGHT=64 WIDTH=32 STAGE1_EPOCHS=1 STAGE2_EPOCHS=2 STAGE3_EPOCHS=1 PROBE_STEPS=20 \
#       bash tools/gpu_gan.sh              # the script's own check: 2.5 minutes on two CPU cores
#
# $PYTHON: the interpreter with torch (default python3); the package is this checkout's, not installed.
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
OUTDIR=${OUT:-output/gpu_gan}
mkdir -p "$OUTDIR"
LOG="$OUTDIR/gpu_gan.log"
: > "$LOG"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
RUN="$WORK/run"
EPOCHS2=${STAGE2_EPOCHS:-420}
source tools/timed_parts.sh

"$PY" -c "import torch; print(f'torch {torch.__version__}, CUDA {torch.version.cuda}, ' + \
(torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU'))" 2>&1 | tee -a "$LOG"

# GAN_WARMUP keeps the recipe's share of stage 2 (40 of 240 epochs); the loader's workers feed a GPU step
part "train isgan_demo at ${HEIGHT:-256}x${WIDTH:-128}, stage 2 of $EPOCHS2 epochs" "${TRAIN_LIMIT:-360}" \
    "$PY" tools/train.py --config-file isgan_demo DEVICE "${DEVICE:-cuda}" DATA.ROOT "$WORK/data" \
    OUTPUT_DIR "$RUN" DATA.HEIGHT "${HEIGHT:-256}" DATA.WIDTH "${WIDTH:-128}" DATA.WORKERS 4 \
    TRAIN.STAGE1.EPOCHS "${STAGE1_EPOCHS:-20}" TRAIN.STAGE2.EPOCHS "$EPOCHS2" \
    TRAIN.STAGE3.EPOCHS "${STAGE3_EPOCHS:-4}" LOSS.GAN_WARMUP "$((EPOCHS2 / 6))" TRAIN.RESUME_FREQ 20 \
    TRAIN.SAMPLE_FREQ 60
cp "$RUN/train.log" "$OUTDIR/train.log" 2>/dev/null

for stage in 2 3; do
    weights="$RUN/stage$stage/latest.pth.tar"
    if [ -f "$weights" ]; then
        part "disentanglement benchmark after stage $stage" 60 \
            "$PY" tools/benchmark.py --disentangle "$weights" --probe-steps "${PROBE_STEPS:-1000}" \
            --out "$OUTDIR/disentangle_stage$stage.json"
    fi
done
samples=$(ls "$RUN"/stage2/samples/*.png 2>/dev/null | sort | tail -1)
[ -n "$samples" ] && cp "$samples" "$OUTDIR/stage2_last_samples.png"
if ls "$RUN"/stage3/model.pth.tar-* > /dev/null 2>&1; then
    part "figures" 60 env PYTHON="$PY" bash tools/make_figures.sh "$RUN" "$OUTDIR/figures"
fi

summary
exit $((FAILED > 0))
