#!/usr/bin/env bash
# 1xH100, SDPA: the docstring's tiny configuration of the working tree's train_gpt.py on the GPU (tests/tinydata.py
# dataset, COMPRESSOR=lzma since the image has no brotli): the whole pipeline with MLP_KERNEL=auto, then LEGAL=1,
# then the pipeline with MLP_KERNEL=torch. End-to-end check of the MLP's Triton products (pre-quant TTT with frozen
# blocks, GPTQ Hessians, sliding and score-first evaluation).
S=/tmp/rAE; mkdir -p $S; exec > $S/run.log 2>&1
export PYTHONUNBUFFERED=1
st() { echo "$1 t=$(date +%s)" >> $S/status.txt; }
st start
R=$PWD
python3 -c "import sys; sys.path.insert(0, 'tests'); import tinydata; tinydata.make_dataset('/tmp/tiny')"; st "data rc=$?"
export DATA_DIR=/tmp/tiny VOCAB_SIZE=64 NUM_LAYERS=4 MODEL_DIM=64 NUM_HEADS=2 NUM_KV_HEADS=1 LOOP_START=1 LOOP_END=2 \
  PARALLEL_RESIDUAL_START=3 XSA_LAST_N=4 TRAIN_SEQ_LEN=32 EVAL_SEQ_LEN=32 EVAL_STRIDE=8 TRAIN_BATCH_TOKENS=2048 \
  VAL_BATCH_TOKENS=2048 ITERATIONS=20 MAX_WALLCLOCK_SECONDS=0 WARMUP_STEPS=0 GPTQ_CALIBRATION_BATCHES=4 \
  PREQUANT_TTT_EPOCHS=2 PREQUANT_TTT_CHUNK_TOKENS=1024 COMPRESSOR=lzma ATTENTION=sdpa
for run in "auto pipe 0" "auto legal 1" "torch pipe 0"; do
  set -- $run
  mkdir -p /tmp/w_$1_$2 && (cd /tmp/w_$1_$2 && MLP_KERNEL=$1 LEGAL=$3 RUN_ID=tiny_$1_$2 timeout 200 python3 $R/train_gpt.py \
    > $S/tiny_$1_$2.out 2>&1); st "$1_$2 rc=$?"
done
st ALLDONE
