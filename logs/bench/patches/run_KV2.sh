#!/usr/bin/env bash
# 1xH100, FlashAttention 4 installed: its backward per member of the query-head groups (D, the working tree) against
# c463fe9 (HEAD) and B (K, V expanded inside the backward, call KV). kvxab2.py (microbenchmark), GPU tests of D, then
# tools/bench.py of c463fe9, D, B and c463fe9 again.
S=/tmp/rKV2; mkdir -p $S; exec > $S/run.log 2>&1
export PYTHONUNBUFFERED=1
st() { echo "$1 t=$(date +%s)" >> $S/status.txt; }
st start
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > $S/env.txt
mkdir -p /tmp/fx /tmp/carry && cp .exp/pollKV2.sh .exp/kvxab2.py /tmp/fx/ && cp .carry/fineweb_sample.jsonl.gz .carry/caseops.model /tmp/carry/
for n in head B D; do mkdir -p /tmp/r_$n /tmp/w_$n /tmp/w_${n}2; cp -r tools data tests /tmp/r_$n/; done
cp .exp/tg_c463fe9.py /tmp/r_head/train_gpt.py; cp train_gpt.py /tmp/r_D/; cp .exp/tg_kvxB.py /tmp/r_B/train_gpt.py
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl > $S/pip_brotli.txt 2>&1
xz -dc .fa1/ir.so.xz > /tmp/ir.so; st "ir rc=$? bytes=$(stat -c %s /tmp/ir.so)"
python3 /tmp/r_D/data/prepare_caseops.py --docs /tmp/carry/fineweb_sample.jsonl.gz --out /tmp/data --val-docs 800 \
  --tokenizer /tmp/carry/caseops.model --workers 16 --quiet > $S/prepare.log 2>&1; st "prepare rc=$?"
for i in $(seq 120); do [ -f /tmp/fa2_ready ] && break; sleep 5; done; st "fa2 $(ls /tmp/fa2 | wc -l)"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site /tmp/fa2/*.whl > $S/pip_fa4.txt 2>&1; st "pip rc=$?"
tar xf /tmp/fa2/cu13_rest.tar -C /tmp/site && xz -dc /tmp/fa2/rt.so.xz > /tmp/site/nvidia_cutlass_dsl/cu13/lib/libcute_dsl_runtime.so \
  && cp /tmp/ir.so /tmp/site/nvidia_cutlass_dsl/dsl_packages/cutlass/_mlir/_mlir_libs/_cutlass_ir.cu13.cpython-312-x86_64-linux-gnu.so; st "libs rc=$?"
export PYTHONPATH=/tmp/site:/tmp/site/nvidia_cutlass_dsl/dsl_packages
timeout 240 python3 /tmp/fx/kvxab2.py /tmp/r_D > $S/kvxab2.txt 2>&1; st "kvxab2 rc=$?"
(cd /tmp/r_D && timeout 200 python3 -m pytest -q tests/test_train_flash4.py tests/test_train_model.py -p no:cacheprovider) > $S/tests_D.txt 2>&1; st "tests rc=$?"
B="--data-dir /tmp/data --warmup 6 --steps 10 --windows 4096 --profile 2"
bench() { (cd /tmp/w_$2 && TORCHINDUCTOR_CACHE_DIR=/tmp/ic_$2 timeout 400 python3 /tmp/r_$1/tools/bench.py $B) > $S/bench_$2.txt 2>&1; st "bench $2 rc=$?"; }
bench head head; bench D D; bench B B; bench head head2
for n in D B head2; do python3 /tmp/r_D/tools/compare_losses.py $S/bench_head.txt $S/bench_$n.txt > $S/compare_head_$n.txt 2>&1; done
st ALLDONE
