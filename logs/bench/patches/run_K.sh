#!/usr/bin/env bash
# Experiments of this session (1xH100): loss kernels, evaluation tail, bench A/C/B/A, GPU tests, gpu_check of C.
S=/tmp/r22; mkdir -p $S; exec > $S/run.log 2>&1
export PYTHONUNBUFFERED=1
st() { echo "$1" >> $S/status.txt; }
python3 -c "import torch, torch.distributed as d; print(torch.__version__, 'all_gather_single:', hasattr(d, 'all_gather_single'))" > $S/env.txt 2>&1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >> $S/env.txt
python3 data/prepare_caseops.py --docs .carry/fineweb_sample.jsonl.gz --docs .carry/wikipedia_sample.jsonl.gz \
  --out /tmp/data --val-docs 800 --tokenizer .carry/caseops.model --workers 16 --quiet > $S/prepare.log 2>&1; st "prepare rc=$?"
for v in A B C; do mkdir -p /tmp/tree_$v; cp -r train_gpt.py tools data /tmp/tree_$v/; done
cp .exp/tgA.py /tmp/tree_A/train_gpt.py; cp .exp/tg_B.py /tmp/tree_B/train_gpt.py
timeout 300 python3 logs/bench/patches/lossab.py A=/tmp/tree_A/train_gpt.py B=/tmp/tree_B/train_gpt.py C=train_gpt.py > $S/lossab.txt 2>&1; st "lossab rc=$?"
timeout 300 python3 logs/bench/patches/evaltail.py > $S/evaltail.txt 2>&1; st "evaltail rc=$?"
timeout 200 python3 -m pytest -q tests/test_train_optim.py tests/test_train_eval.py tests/test_train_model.py > $S/tests.txt 2>&1; st "tests rc=$?"
n=0
for v in A C B A; do n=$((n+1)); mkdir -p /tmp/w_$n
  (cd /tmp/w_$n && timeout 400 python3 /tmp/tree_$v/tools/bench.py --data-dir /tmp/data --warmup 6 --steps 10 --windows 4096) > $S/bench_${n}_$v.txt 2>&1; st "bench $n $v rc=$?"
done
GPU_CHECK_STEPS="pipeline legal" bash tools/gpu_check.sh $S/gc 1; st "gpu_check rc=$?"
st ALLDONE
