#!/usr/bin/env bash
# 1xH100: loss variants, bench b073582 / HEAD / b073582, GPU tests, gpu_check (pipeline, legal) of HEAD.
S=/tmp/r23; mkdir -p $S; exec > $S/run.log 2>&1
export PYTHONUNBUFFERED=1
st() { echo "$1 t=$(date +%s)" >> $S/status.txt; }
python3 -c "import torch; print(torch.__version__)" > $S/env.txt 2>&1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >> $S/env.txt
python3 data/prepare_caseops.py --docs .carry/fineweb_sample.jsonl.gz --docs .carry/wikipedia_sample.jsonl.gz \
  --out /tmp/data --val-docs 800 --tokenizer .carry/caseops.model --workers 16 --quiet > $S/prepare.log 2>&1; st "prepare rc=$?"
for v in A F; do mkdir -p /tmp/tree_$v; cp -r train_gpt.py tools data /tmp/tree_$v/; done
cp .exp/tgA.py /tmp/tree_A/train_gpt.py
timeout 200 python3 logs/bench/patches/lossab.py A=/tmp/tree_A/train_gpt.py D=train_gpt.py E=.exp/tg_E.py > $S/lossab.txt 2>&1; st "lossab rc=$?"
n=0
for v in A F A; do n=$((n+1)); mkdir -p /tmp/w_$n
  (cd /tmp/w_$n && timeout 400 python3 /tmp/tree_$v/tools/bench.py --data-dir /tmp/data --warmup 6 --steps 10 --windows 4096) > $S/bench_${n}_$v.txt 2>&1; st "bench $n $v rc=$?"
done
timeout 200 python3 -m pytest -q tests/test_train_optim.py tests/test_train_eval.py tests/test_train_model.py > $S/tests.txt 2>&1; st "tests rc=$?"
GPU_CHECK_STEPS="pipeline legal" bash tools/gpu_check.sh $S/gc 1; st "gpu_check rc=$?"
st ALLDONE
