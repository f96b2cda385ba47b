#!/usr/bin/env bash
# 1xH100, FlashAttention 4 installed: evalab2.py (scoring with FA4 everywhere, D = 54f5c76, against E: cuDNN SDPA for
# the forward-only full-row attention), then gpu_check.sh's pipeline and legal runs of 54f5c76 (FineWeb sample only).
S=/tmp/rKV3; mkdir -p $S; exec > $S/run.log 2>&1
export PYTHONUNBUFFERED=1
st() { echo "$1 t=$(date +%s)" >> $S/status.txt; }
st start
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > $S/env.txt
mkdir -p /tmp/fx /tmp/carry /tmp/r_D && cp .exp/pollKV3.sh .exp/evalab2.py .exp/tg_E.py /tmp/fx/ && cp .carry/fineweb_sample.jsonl.gz .carry/caseops.model /tmp/carry/
cp -r train_gpt.py tools data tests /tmp/r_D/
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl > $S/pip_brotli.txt 2>&1
xz -dc .fa1/ir.so.xz > /tmp/ir.so; st "ir rc=$? bytes=$(stat -c %s /tmp/ir.so)"
python3 /tmp/r_D/data/prepare_caseops.py --docs /tmp/carry/fineweb_sample.jsonl.gz --out /tmp/data --val-docs 800 \
  --tokenizer /tmp/carry/caseops.model --workers 16 --quiet > $S/prepare.log 2>&1; st "prepare rc=$?"
for i in $(seq 120); do [ -f /tmp/fa2_ready ] && break; sleep 5; done; st "fa2 $(ls /tmp/fa2 | wc -l)"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site /tmp/fa2/*.whl > $S/pip_fa4.txt 2>&1; st "pip rc=$?"
tar xf /tmp/fa2/cu13_rest.tar -C /tmp/site && xz -dc /tmp/fa2/rt.so.xz > /tmp/site/nvidia_cutlass_dsl/cu13/lib/libcute_dsl_runtime.so \
  && cp /tmp/ir.so /tmp/site/nvidia_cutlass_dsl/dsl_packages/cutlass/_mlir/_mlir_libs/_cutlass_ir.cu13.cpython-312-x86_64-linux-gnu.so; st "libs rc=$?"
export PYTHONPATH=/tmp/site:/tmp/site/nvidia_cutlass_dsl/dsl_packages
(cd /tmp/r_D && TORCHINDUCTOR_CACHE_DIR=/tmp/ic_ab timeout 420 python3 /tmp/fx/evalab2.py D=/tmp/r_D/train_gpt.py E=/tmp/fx/tg_E.py) > $S/evalab2.txt 2>&1; st "evalab2 rc=$?"
(cd /tmp/r_D && timeout 900 bash tools/gpu_check.sh $S/check 1); st "gpu_check rc=$?"
st ALLDONE
