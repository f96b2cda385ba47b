#!/usr/bin/env bash
# 1xH100, FlashAttention 4 4.0.0b36 installed (carried as in run_AF.sh), FineWeb sample shards: tttab3.py (pre-quant
# TTT's step, FlashAttention 4 and SDPA times KERNELS=torch/triton, with profiles), then gpu_check.sh's pipeline run
# of the working tree (pre-quant TTT on SDPA) and of BASE = 6fd0454 (KERNELS=auto, ATTENTION=auto); nvidia-smi
# samples SM clock, temperature and power every 2 s throughout.
S=/tmp/rTS; mkdir -p $S; exec > $S/run.log 2>&1
export PYTHONUNBUFFERED=1
st() { echo "$1 t=$(date +%s)" >> $S/status.txt; }
st start
nvidia-smi --query-gpu=name,clocks.max.sm,power.limit --format=csv,noheader >> $S/status.txt
nvidia-smi --query-gpu=timestamp,clocks.sm,temperature.gpu,power.draw,clocks_throttle_reasons.active --format=csv -l 2 > $S/smi.csv 2>&1 &
mkdir -p /tmp/fx /tmp/carry /tmp/r /tmp/rb && cp logs/bench/patches/pollTS.sh logs/bench/patches/tttab3.py /tmp/fx/ \
  && cp .cfw/* /tmp/carry/
cp -r train_gpt.py tools data tests /tmp/r/ && cp -r tools data tests /tmp/rb/ && cp .exp/base_6fd0454.py /tmp/rb/train_gpt.py
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl > $S/pip_brotli.txt 2>&1
xz -dc .fa1/ir.so.xz > /tmp/ir.so; st "ir rc=$? bytes=$(stat -c %s /tmp/ir.so)"
python3 /tmp/r/data/prepare_caseops.py --docs /tmp/carry/fineweb_sample.jsonl.gz --out /tmp/data --val-docs 800 \
  --tokenizer /tmp/carry/caseops.model --workers 16 --quiet > $S/prepare.log 2>&1; st "prepare rc=$?"
for i in $(seq 120); do [ -f /tmp/fa2_ready ] && break; sleep 5; done; st "fa2 $(ls /tmp/fa2 | wc -l)"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site /tmp/fa2/*.whl > $S/pip_fa4.txt 2>&1; st "pip rc=$?"
tar xf /tmp/fa2/cu13_rest.tar -C /tmp/site && xz -dc /tmp/fa2/rt.so.xz > /tmp/site/nvidia_cutlass_dsl/cu13/lib/libcute_dsl_runtime.so \
  && cp /tmp/ir.so /tmp/site/nvidia_cutlass_dsl/dsl_packages/cutlass/_mlir/_mlir_libs/_cutlass_ir.cu13.cpython-312-x86_64-linux-gnu.so; st "libs rc=$?"
export PYTHONPATH=/tmp/site:/tmp/site/nvidia_cutlass_dsl/dsl_packages
(cd /tmp/r && TTTAB_BACKENDS=flash_attn_4,sdpa TORCHINDUCTOR_CACHE_DIR=/tmp/ind_t timeout 450 python3 /tmp/fx/tttab3.py) \
  > $S/tttab3.txt 2>&1; st "tttab3 rc=$?"
(cd /tmp/r && GPU_CHECK_STEPS=pipeline timeout 900 bash tools/gpu_check.sh $S/check 1); st "gpu_check new rc=$?"
(cd /tmp/rb && GPU_CHECK_STEPS=pipeline timeout 900 bash tools/gpu_check.sh $S/check_base 1); st "gpu_check base rc=$?"
st ALLDONE
