#!/usr/bin/env bash
# 1xH100, FlashAttention 4 4.0.0b36 installed (carried as in run_AF.sh), FineWeb sample shards: evalqk2.py (the working
# tree, NOE = it without cuDNN for scoring's full-row attention, BASE = dade453), then gpu_check.sh's pipeline run of the
# working tree (KERNELS=auto, ATTENTION=auto), then tools/bench.py of the working tree.
S=/tmp/rFQ; mkdir -p $S; exec > $S/run.log 2>&1
export PYTHONUNBUFFERED=1
st() { echo "$1 t=$(date +%s)" >> $S/status.txt; }
st start
nvidia-smi --query-gpu=name,clocks.max.sm,power.limit --format=csv,noheader >> $S/status.txt
mkdir -p /tmp/fx /tmp/carry /tmp/r /tmp/exp && cp logs/bench/patches/pollFQ.sh logs/bench/patches/evalqk2.py /tmp/fx/ \
  && cp .cfw/* /tmp/carry/ && cp .exp/noE.py .exp/base_dade453.py /tmp/exp/
cp -r train_gpt.py tools data tests /tmp/r/
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl > $S/pip_brotli.txt 2>&1
xz -dc .fa1/ir.so.xz > /tmp/ir.so; st "ir rc=$? bytes=$(stat -c %s /tmp/ir.so)"
python3 /tmp/r/data/prepare_caseops.py --docs /tmp/carry/fineweb_sample.jsonl.gz --out /tmp/data --val-docs 800 \
  --tokenizer /tmp/carry/caseops.model --workers 16 --quiet > $S/prepare.log 2>&1; st "prepare rc=$?"
for i in $(seq 120); do [ -f /tmp/fa2_ready ] && break; sleep 5; done; st "fa2 $(ls /tmp/fa2 | wc -l)"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site /tmp/fa2/*.whl > $S/pip_fa4.txt 2>&1; st "pip rc=$?"
tar xf /tmp/fa2/cu13_rest.tar -C /tmp/site && xz -dc /tmp/fa2/rt.so.xz > /tmp/site/nvidia_cutlass_dsl/cu13/lib/libcute_dsl_runtime.so \
  && cp /tmp/ir.so /tmp/site/nvidia_cutlass_dsl/dsl_packages/cutlass/_mlir/_mlir_libs/_cutlass_ir.cu13.cpython-312-x86_64-linux-gnu.so; st "libs rc=$?"
export PYTHONPATH=/tmp/site:/tmp/site/nvidia_cutlass_dsl/dsl_packages
(cd /tmp/r && TORCHINDUCTOR_CACHE_DIR=/tmp/ind_e timeout 400 python3 /tmp/fx/evalqk2.py NEW=train_gpt.py \
  NOE=/tmp/exp/noE.py BASE=/tmp/exp/base_dade453.py) > $S/evalqk2.txt 2>&1; st "evalqk2 rc=$?"
(cd /tmp/r && GPU_CHECK_STEPS=pipeline timeout 900 bash tools/gpu_check.sh $S/check 1); st "gpu_check rc=$?"
B="python3 tools/bench.py --data-dir /tmp/data --warmup 6 --steps 10 --windows 4096"
(cd /tmp/r && TORCHINDUCTOR_CACHE_DIR=/tmp/ind_k $B) > $S/bench_new.txt 2>&1; st "bench rc=$?"
st ALLDONE
