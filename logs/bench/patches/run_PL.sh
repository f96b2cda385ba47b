#!/usr/bin/env bash
# 1xH100, SDPA only (flash-attn-4 not installed), FineWeb sample shards: gpu_check.sh's pipeline run of the working
# tree (one view of each block's input for v, k and q in scoring). Started in the background (setsid), read back by
# pollPL.sh.
S=/tmp/rPL; mkdir -p $S; exec > $S/run.log 2>&1
export PYTHONUNBUFFERED=1
st() { echo "$1 t=$(date +%s)" >> $S/status.txt; }
st start; nvidia-smi --query-gpu=name,clocks.max.sm,power.limit --format=csv,noheader >> $S/status.txt
mkdir -p /tmp/r && cp -r train_gpt.py tools data tests logs .whl /tmp/r/
python3 data/prepare_caseops.py --docs .cfw/fineweb_sample.jsonl.gz --out /tmp/data --val-docs 800 \
  --tokenizer .cfw/caseops.model --workers 16 --quiet > $S/prepare.log 2>&1; st "prepare rc=$?"
(cd /tmp/r && GPU_CHECK_STEPS=pipeline timeout 700 bash tools/gpu_check.sh $S/check 1); st "gpu_check rc=$?"
st ALLDONE
