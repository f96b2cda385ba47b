#!/usr/bin/env bash
# 1xH100 (same machine as run_O): eval A/B of Q against Q with realize_reads_threshold=2, then gpu_check of the tree (= Q).
S=/tmp/rP; mkdir -p $S; exec > $S/run.log 2>&1
export PYTHONUNBUFFERED=1
st() { echo "$1 t=$(date +%s)" >> $S/status.txt; }
st start
EVALAB_ROWS=256 timeout 240 python3 logs/bench/patches/evalab.py Q=.exp/tg_Q.py R=.exp/tg_R.py > $S/evalab.txt 2>&1; st "evalab rc=$?"
GPU_CHECK_STEPS="pipeline legal" bash tools/gpu_check.sh $S/gc 1; st "gpu_check rc=$?"
st ALLDONE
