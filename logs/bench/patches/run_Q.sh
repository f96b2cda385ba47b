#!/usr/bin/env bash
# 1xH100: training A/B of bb9c80c (H) against the fused linear+loss (L), bench H / L / H, GPU tests of L.
S=/tmp/rQ; mkdir -p $S; exec > $S/run.log 2>&1
export PYTHONUNBUFFERED=1
st() { echo "$1 t=$(date +%s)" >> $S/status.txt; }
st start
python3 -c "import torch; print(torch.__version__)" > $S/env.txt 2>&1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >> $S/env.txt
python3 data/prepare_caseops.py --docs .carry/fineweb_sample.jsonl.gz --docs .carry/wikipedia_sample.jsonl.gz \
  --out /tmp/data --val-docs 800 --tokenizer .carry/caseops.model --workers 16 --quiet > $S/prepare.log 2>&1; st "prepare rc=$?"
mkdir -p /tmp/tree_H /tmp/tree_L; cp -r tools data tests /tmp/tree_H/; cp -r tools data tests /tmp/tree_L/
cp .exp/tg_HEAD.py /tmp/tree_H/train_gpt.py; cp .exp/tg_L.py /tmp/tree_L/train_gpt.py; cp .exp/test_train_model_L.py /tmp/tree_L/tests/test_train_model.py
timeout 300 python3 logs/bench/patches/trainab.py H=/tmp/tree_H/train_gpt.py L=/tmp/tree_L/train_gpt.py > $S/trainab.txt 2>&1; st "trainab rc=$?"
n=0
for v in H L H; do n=$((n+1)); mkdir -p /tmp/w_$n
  (cd /tmp/w_$n && timeout 400 python3 /tmp/tree_$v/tools/bench.py --data-dir /tmp/data --warmup 6 --steps 10 --windows 4096) > $S/bench_${n}_$v.txt 2>&1; st "bench $n $v rc=$?"
done
python3 tools/compare_losses.py $S/bench_1_H.txt $S/bench_2_L.txt > $S/compare_HL.txt 2>&1
python3 tools/compare_losses.py $S/bench_1_H.txt $S/bench_3_H.txt > $S/compare_HH.txt 2>&1
(cd /tmp/tree_L && timeout 300 python3 -m pytest -q tests/test_train_optim.py tests/test_train_eval.py tests/test_train_model.py) > $S/tests.txt 2>&1; st "tests rc=$?"
st ALLDONE
