#!/usr/bin/env bash
# GPU check of the whole pipeline on real text (not FineWeb-10B: the shared FineWeb/Wikipedia samples).
#
#   bash tools/gpu_check.sh RUN_DIR [NPROC]
#
# Expects .carry/{fineweb_sample,wikipedia_sample}.jsonl.gz and .carry/caseops.model (copied from ../shared)
# and a brotli wheel in .whl/. Builds DATA_DIR=/tmp/data (val = first 800 FineWeb documents, train = the rest
# plus Wikipedia), then runs, each logging to RUN_DIR:
#   1. the default configuration with 120 s of training (MAX_WALLCLOCK_SECONDS=132 incl. the 12 s GPTQ reserve),
#      3 pre-quant TTT epochs, GPTQ, Brotli, reload and scoring;
#   2. the legal mode (LEGAL=1) resumed from run 1's post-EMA checkpoint (it compiles its evaluation graphs
#      before the evaluation clock starts, as a full run's warm-up does);
#   3. (only when named) legal_full: a whole LEGAL=1 run with 28 s of training and 64 Hessian batches.
# Environment: GPU_CHECK_STEPS="pipeline legal" (default) picks the runs; GPU_CHECK_WORK (default /tmp/work) is where
# they run, shared across invocations so that legal can resume an earlier pipeline's checkpoint; extra variables pass
# through to train_gpt.py.
set -uo pipefail
R=${1:?usage: gpu_check.sh RUN_DIR [NPROC]}
N=${2:-1}
STEPS=${GPU_CHECK_STEPS:-pipeline legal}
for step in $STEPS; do
  case $step in
    pipeline|legal|legal_full) ;;
    *) echo "GPU_CHECK_STEPS: unknown step '$step' (expected pipeline, legal or legal_full)" >&2; exit 2 ;;
  esac
done
mkdir -p "$R"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$R/gpus.txt" 2>&1
if [ ! -f /tmp/data/datasets/fineweb10B_sp8192/manifest.json ]; then
  python3 data/prepare_caseops.py --docs .carry/fineweb_sample.jsonl.gz --docs .carry/wikipedia_sample.jsonl.gz \
    --out /tmp/data --val-docs 800 --tokenizer .carry/caseops.model --workers "$(nproc)" --quiet > "$R/prepare.log" 2>&1 \
    || { echo "prepare failed"; cat "$R/prepare.log"; exit 1; }
fi
export DATA_DIR=/tmp/data PYTHONUNBUFFERED=1
REPO=$PWD W=${GPU_CHECK_WORK:-/tmp/work}  # runs write logs/ and final_model.* in W, outside the (re-synced) checkout
mkdir -p "$W" && cd "$W"
launch() {
  if [ "$N" = 1 ]; then python3 "$REPO/train_gpt.py"; else torchrun --standalone --nproc_per_node="$N" "$REPO/train_gpt.py"; fi
}
for step in $STEPS; do
  rm -f "logs/gpu${N}_${step}.txt"  # the logger appends: an earlier invocation's run must not precede this one's
  case $step in
    pipeline)
      RUN_ID=gpu${N}_pipeline MAX_WALLCLOCK_SECONDS=132 PREQUANT_TTT_EPOCHS=3 TRAIN_LOG_EVERY=10 \
        launch > "$R/gpu${N}_pipeline.out" 2>&1 ;;
    legal)
      RUN_ID=gpu${N}_legal RESUME_CHECKPOINT=$W/final_model.pt LEGAL=1 launch > "$R/gpu${N}_legal.out" 2>&1 ;;
    legal_full)
      RUN_ID=gpu${N}_legal_full LEGAL=1 MAX_WALLCLOCK_SECONDS=40 GPTQ_CALIBRATION_BATCHES=64 TRAIN_LOG_EVERY=10 \
        launch > "$R/gpu${N}_legal_full.out" 2>&1 ;;
  esac
  echo "$step rc=$?" >> "$R/status.txt"
done
cp logs/gpu${N}_*.txt "$R/" 2>/dev/null
echo done >> "$R/status.txt"
