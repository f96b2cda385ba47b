#!/usr/bin/env bash
# 1xH100, PyTorch SDPA: evalat.py on the working tree's train_gpt.py (the scoring graph under Inductor option sets).
S=${S:-/tmp/rAT}; mkdir -p $S; exec > $S/run.log 2>&1
export PYTHONUNBUFFERED=1
st() { echo "$1 t=$(date +%s)" >> $S/status.txt; }
st start
nvidia-smi --query-gpu=name,clocks.max.sm,power.limit --format=csv,noheader >> $S/status.txt
mkdir -p /tmp/r && cp -r train_gpt.py logs/bench/patches/evalat.py /tmp/r/
(cd /tmp/r && EVALAT="$EVALAT" EVALAT_ROWS="$EVALAT_ROWS" TORCHINDUCTOR_CACHE_DIR=/tmp/ind_AT python3 evalat.py train_gpt.py) > $S/evalat.txt 2>&1; st "evalat rc=$?"
st ALLDONE
