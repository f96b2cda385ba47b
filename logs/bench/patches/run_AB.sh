#!/usr/bin/env bash
# 1xH100, SDPA only (FlashAttention 4 not installed), FineWeb sample shards: evalqk2.py's sliding-evaluation A/B of
# the working tree (NEW: a fourth pipeline stage for fused_gemm's modes 1 and 2) against BASE = e09aa31, then
# gpu_check.sh's pipeline run of the working tree, then gemmws.py (Triton's warp specialisation of fused_gemm_kernel).
S=/tmp/rAB; mkdir -p $S; exec > $S/run.log 2>&1
export PYTHONUNBUFFERED=1
st() { echo "$1 t=$(date +%s)" >> $S/status.txt; }
st start; nvidia-smi --query-gpu=name,clocks.max.sm,power.limit --format=csv,noheader >> $S/status.txt
nvidia-smi --query-gpu=timestamp,clocks.sm,temperature.gpu,power.draw,clocks_throttle_reasons.active --format=csv -l 2 > $S/smi.csv 2>&1 &
mkdir -p /tmp/fx /tmp/r && cp logs/bench/patches/pollAB.sh /tmp/fx/ && cp -r train_gpt.py tools data tests logs .exp .whl /tmp/r/
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl > $S/pip_brotli.txt 2>&1
python3 data/prepare_caseops.py --docs .cfw/fineweb_sample.jsonl.gz --out /tmp/data --val-docs 800 \
  --tokenizer .cfw/caseops.model --workers 16 --quiet > $S/prepare.log 2>&1; st "prepare rc=$?"
export PYTHONPATH=/tmp/site
(cd /tmp/r && TORCHINDUCTOR_CACHE_DIR=/tmp/ind_ab timeout 300 python3 logs/bench/patches/evalqk2.py NEW=train_gpt.py \
  BASE=.exp/base_e09aa31.py) > $S/evalqk2.txt 2>&1; st "evalqk2 rc=$?"
(cd /tmp/r && GPU_CHECK_STEPS=pipeline timeout 700 bash tools/gpu_check.sh $S/check 1); st "gpu_check rc=$?"
(cd /tmp/r && timeout 150 python3 logs/bench/patches/gemmws.py) > $S/gemmws.txt 2>&1; st "gemmws rc=$?"
st ALLDONE
