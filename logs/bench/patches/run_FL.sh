#!/usr/bin/env bash
# 1xH100 (call FL), started in the background (setsid) and read back by pollFL.sh. Carried: .fa1 (FlashAttention 4's
# MLIR library; the rest, .fa2, comes in the next call into /tmp/fa2, as in run_FQ.sh), .exp (the LR candidate:
# LR_flash2_last_rows.patch applied to HEAD, as .exp/lr_train_gpt.py and .exp/lr_test_train_model.py), .cfw, .whl.
# 1. SDPA only: tools/bench.py --steps 0 --windows 4096 of HEAD (wb) and of the LR candidate (wn), each tree in its own
#    process, two rounds alternated; nllab.py NLLs of both; attnfwd.py; the LR GPU test and the bench's TTT-chunk tests.
# 2. FlashAttention 4 installed: its tests, then gpu_check.sh's pipeline run of HEAD with ATTENTION=flash_attn_4, with
#    nvidia-smi sampling clocks and power every second.
S=/tmp/rFL; mkdir -p $S; exec > $S/run.log 2>&1
export PYTHONUNBUFFERED=1
st() { echo "$1 t=$(date +%s)" >> $S/status.txt; }
st start; nvidia-smi --query-gpu=name,clocks.max.sm,power.limit --format=csv,noheader >> $S/status.txt
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/sb .whl/*.whl > $S/pip_brotli.txt 2>&1
xz -dc .fa1/ir.so.xz > /tmp/ir.so; st "ir rc=$? bytes=$(stat -c %s /tmp/ir.so)"
python3 data/prepare_caseops.py --docs .cfw/fineweb_sample.jsonl.gz --out /tmp/data --val-docs 800 \
  --tokenizer .cfw/caseops.model --workers 16 --quiet > $S/prepare.log 2>&1; st "prepare rc=$?"
mkdir -p /tmp/r /tmp/wb /tmp/wn && cp -r train_gpt.py tools data tests /tmp/r/ && cp -r train_gpt.py tools data tests /tmp/wb/ \
  && cp -r tools data tests /tmp/wn/ && cp .exp/lr_train_gpt.py /tmp/wn/train_gpt.py \
  && cp .exp/lr_test_train_model.py /tmp/wn/tests/test_train_model.py && cp logs/bench/patches/{nllab,attnfwd}.py /tmp/
export PYTHONPATH=/tmp/sb ATTENTION=sdpa
ab() { for t in wb wn; do
  (cd /tmp/$t && TORCHINDUCTOR_CACHE_DIR=/tmp/ind_$t timeout 150 python3 tools/bench.py --steps 0 --windows 4096) \
    > $S/bench_${t}_$1.txt 2>&1
  st "bench tree:$t round:$1 rc=$? $(grep -h '^sliding_eval' $S/bench_${t}_$1.txt)"
done; }
ab 1
for t in wb wn; do (cd /tmp/$t && timeout 150 python3 /tmp/nllab.py train_gpt.py /tmp/nll_$t.pt) >> $S/nllab.txt 2>&1; done
python3 /tmp/nllab.py --compare /tmp/nll_wb.pt /tmp/nll_wn.pt >> $S/nllab.txt 2>&1; st "nllab done"
(cd /tmp/wb && timeout 120 python3 /tmp/attnfwd.py) > $S/attnfwd.txt 2>&1; st "attnfwd rc=$?"
(cd /tmp/wn && timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_train_model.py -k last_rows) > $S/tests_lr.txt 2>&1
st "tests_lr rc=$?"
(cd /tmp/r && timeout 300 python3 -m pytest -q -p no:cacheprovider tests/test_tools_bench.py \
  -k "prequant_ttt_chunks or refuses_more_ttt") > $S/tests_bench.txt 2>&1; st "tests_bench rc=$?"
nvidia-smi --query-gpu=timestamp,clocks.sm,power.draw,temperature.gpu --format=csv -l 1 > $S/smi_ab2.csv &
SMI=$!
ab 2
kill $SMI
for i in $(seq 120); do [ -f /tmp/fa2_ready ] && break; sleep 5; done; st "fa2 $(ls /tmp/fa2 | wc -l)"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl /tmp/fa2/*.whl > $S/pip_fa4.txt 2>&1
st "pip rc=$?"
tar xf /tmp/fa2/cu13_rest.tar -C /tmp/site && xz -dc /tmp/fa2/rt.so.xz > /tmp/site/nvidia_cutlass_dsl/cu13/lib/libcute_dsl_runtime.so \
  && cp /tmp/ir.so /tmp/site/nvidia_cutlass_dsl/dsl_packages/cutlass/_mlir/_mlir_libs/_cutlass_ir.cu13.cpython-312-x86_64-linux-gnu.so
st "libs rc=$?"
export PYTHONPATH=/tmp/site:/tmp/site/nvidia_cutlass_dsl/dsl_packages; unset ATTENTION
python3 -m pip list --path /tmp/site 2>/dev/null | grep -i "flash\|cutlass\|quack\|tvm\|dlpack\|brotli" > $S/versions.txt
(cd /tmp/r && timeout 300 python3 -m pytest -q -p no:cacheprovider tests/test_train_flash4.py) > $S/tests_fa4.txt 2>&1
st "tests_fa4 rc=$?"
nvidia-smi --query-gpu=timestamp,clocks.sm,power.draw,temperature.gpu --format=csv -l 1 > $S/smi_pipeline.csv &
SMI=$!
(cd /tmp/r && ATTENTION=flash_attn_4 GPU_CHECK_STEPS=pipeline timeout 900 bash tools/gpu_check.sh $S/check 1)
st "gpu_check rc=$?"
kill $SMI
st ALLDONE
