#!/usr/bin/env bash
# 1xH100, ATTENTION=sdpa, synthetic tokens: tools/bench.py of the working tree without and with Inductor's
# coordinate-descent tuning of its Triton kernels (TORCHINDUCTOR_COORDINATE_DESCENT_TUNING=1), then without again.
S=${S:-/tmp/rCD}; mkdir -p $S; exec > $S/run.log 2>&1
export PYTHONUNBUFFERED=1 ATTENTION=sdpa
st() { echo "$1 t=$(date +%s)" >> $S/status.txt; }
st start
nvidia-smi --query-gpu=name,clocks.max.sm,power.limit --format=csv,noheader >> $S/status.txt
B="python3 tools/bench.py --warmup 6 --steps 10 --windows 4096"
TORCHINDUCTOR_CACHE_DIR=/tmp/ind_base $B > $S/bench_base.txt 2>&1; st "base rc=$?"
TORCHINDUCTOR_COORDINATE_DESCENT_TUNING=1 TORCHINDUCTOR_CACHE_DIR=/tmp/ind_cd $B > $S/bench_cd.txt 2>&1; st "cd rc=$?"
TORCHINDUCTOR_CACHE_DIR=/tmp/ind_base2 $B > $S/bench_base2.txt 2>&1; st "base2 rc=$?"
st ALLDONE
