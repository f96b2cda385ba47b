#!/usr/bin/env bash
# 1xH100: bench of HEAD, then HEAD under TORCHINDUCTOR_MAX_AUTOTUNE_GEMM=1 ENABLE_PERSISTENT_TMA_MATMUL=1 with a
# fresh Inductor cache (call S's bench reused the MLP products' autotune results of the microbench), both profiled.
S=/tmp/rT; mkdir -p $S; exec > $S/run.log 2>&1
export PYTHONUNBUFFERED=1; R=$PWD
st() { echo "$1 t=$(date +%s)" >> $S/status.txt; }
st start
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > $S/env.txt
python3 data/prepare_caseops.py --docs .carry/fineweb_sample.jsonl.gz --docs .carry/wikipedia_sample.jsonl.gz \
  --out /tmp/data --val-docs 800 --tokenizer .carry/caseops.model --workers 16 --quiet > $S/prepare.log 2>&1; st "prepare rc=$?"
mkdir -p /tmp/w1 /tmp/w2
(cd /tmp/w1 && TORCHINDUCTOR_CACHE_DIR=/tmp/ic1 timeout 400 python3 $R/tools/bench.py --data-dir /tmp/data --warmup 6 --steps 10 --windows 4096 --profile 2) > $S/bench_1_HEAD.txt 2>&1; st "bench 1 rc=$?"
(cd /tmp/w2 && TORCHINDUCTOR_CACHE_DIR=/tmp/ic2 TORCHINDUCTOR_MAX_AUTOTUNE_GEMM=1 ENABLE_PERSISTENT_TMA_MATMUL=1 timeout 900 python3 $R/tools/bench.py --data-dir /tmp/data --warmup 6 --steps 10 --windows 4096 --profile 2) > $S/bench_2_tma.txt 2>&1; st "bench 2 rc=$?"
python3 tools/compare_losses.py $S/bench_1_HEAD.txt $S/bench_2_tma.txt > $S/compare_tma.txt 2>&1
st ALLDONE
