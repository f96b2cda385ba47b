#!/usr/bin/env bash
# 1xH100: eval A/B (HEAD, X0, Q, X0Q), attention bench with FlexAttention, bench fd5e56b / X0Q / fd5e56b, GPU tests, gpu_check of X0Q.
S=/tmp/rO; mkdir -p $S; exec > $S/run.log 2>&1
export PYTHONUNBUFFERED=1
st() { echo "$1 t=$(date +%s)" >> $S/status.txt; }
st start
python3 -c "import torch; print(torch.__version__)" > $S/env.txt 2>&1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >> $S/env.txt
pip install --no-index .whl/*.whl > $S/pip.txt 2>&1
python3 data/prepare_caseops.py --docs .carry/fineweb_sample.jsonl.gz --docs .carry/wikipedia_sample.jsonl.gz \
  --out /tmp/data --val-docs 800 --tokenizer .carry/caseops.model --workers 16 --quiet > $S/prepare.log 2>&1; st "prepare rc=$?"
timeout 420 python3 logs/bench/patches/evalab.py HEAD=.exp/tg_HEAD.py X0=.exp/tg_X0.py Q=.exp/tg_Q.py X0Q=.exp/tg_X0Q.py > $S/evalab.txt 2>&1; st "evalab rc=$?"
timeout 200 python3 tools/bench_attention.py > $S/attention.txt 2>&1; st "attention rc=$?"
for v in A B; do mkdir -p /tmp/tree_$v; cp -r tools data /tmp/tree_$v/; done
cp .exp/tg_fd5.py /tmp/tree_A/train_gpt.py; cp .exp/tg_X0Q.py /tmp/tree_B/train_gpt.py
n=0
for v in A B A; do n=$((n+1)); mkdir -p /tmp/w_$n
  (cd /tmp/w_$n && timeout 400 python3 /tmp/tree_$v/tools/bench.py --data-dir /tmp/data --warmup 6 --steps 10 --windows 4096) > $S/bench_${n}_$v.txt 2>&1; st "bench $n $v rc=$?"
done
python3 tools/compare_losses.py $S/bench_1_A.txt $S/bench_2_B.txt > $S/compare_AB.txt 2>&1
python3 tools/compare_losses.py $S/bench_1_A.txt $S/bench_3_A.txt > $S/compare_AA.txt 2>&1
mkdir -p /tmp/tree_T; cp -r tests tools data /tmp/tree_T/; cp .exp/tg_X0Q.py /tmp/tree_T/train_gpt.py
(cd /tmp/tree_T && timeout 300 python3 -m pytest -q tests/test_train_optim.py tests/test_train_eval.py tests/test_train_model.py) > $S/tests.txt 2>&1; st "tests rc=$?"
st ALLDONE
