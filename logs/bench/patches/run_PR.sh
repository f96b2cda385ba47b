#!/usr/bin/env bash
# 1xH100, SDPA only (FlashAttention 4 not installed), FineWeb sample shards, tree e09aa31: tools/bench.py with one
# profiled step per mode and one profiled sliding evaluation (the scoring graph's kernels), then one pre-quant TTT
# epoch of 56 chunks (--ttt-chunks, its first GPU run); then the GPU test files that calls GT/GT2 did not reach.
set -u
REPO=$PWD; export PYTHONUNBUFFERED=1
st() { echo "$1 t=$(date +%s)" >> $OUT/status.txt; }
st start; nvidia-smi --query-gpu=name,clocks.max.sm,power.limit --format=csv,noheader >> $OUT/status.txt
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
python3 data/prepare_caseops.py --docs .cfw/fineweb_sample.jsonl.gz --out /tmp/data --val-docs 800 \
  --tokenizer .cfw/caseops.model --workers 16 --quiet > $OUT/prepare.txt 2>&1; st "prepare rc=$?"
mkdir -p /tmp/b && cd /tmp/b && timeout 330 python3 $REPO/tools/bench.py --data-dir /tmp/data --warmup 3 --steps 5 \
  --profile 1 --windows 4096 --ttt-chunks 56 > $OUT/bench.txt 2>&1; st "bench rc=$?"
cd $REPO && timeout 210 python3 -m pytest -q -p no:cacheprovider tests/test_tools_bench.py tests/test_tools_bench_mlp.py \
  tests/test_tools_compare_losses.py tests/test_tools_gpu_check.py tests/test_tools_pack.py tests/test_tools_submission.py \
  tests/test_train_data.py tests/test_train_distributed.py tests/test_train_e2e.py tests/test_train_eval.py \
  tests/test_train_model.py tests/test_train_optim.py > $OUT/tests.txt 2>&1; st "tests rc=$?"
cat $OUT/status.txt; grep -v "^ " $OUT/bench.txt | grep -E "^(bench|train|peak|eval|sliding|prequant|profile|  )" | head -40; tail -3 $OUT/tests.txt
