#!/usr/bin/env bash
# 2xH100: a whole LEGAL=1 run (gpu_check's legal_full: 28 s of training, 64 Hessian batches) of HEAD with
# FlashAttention 4 on torchrun: the barrier before the clocks, per-rank scoring batches and TTT shares, the FA4 ops.
S=/tmp/rW2; mkdir -p $S; exec > $S/run.log 2>&1
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1; R=$PWD
st() { echo "$1 t=$(date +%s)" >> $S/status.txt; }
st start
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > $S/env.txt
mkdir -p /tmp/fx /tmp/newrepo /tmp/carry && cp .exp/pollZ.sh /tmp/fx/ && cp .carry/* /tmp/carry/ && cp -r train_gpt.py tools data /tmp/newrepo/
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl > $S/pip_brotli.txt 2>&1
xz -dc .fa1/ir.so.xz > /tmp/ir.so; st "ir rc=$? bytes=$(stat -c %s /tmp/ir.so)"
python3 /tmp/newrepo/data/prepare_caseops.py --docs /tmp/carry/fineweb_sample.jsonl.gz --out /tmp/data --val-docs 800 \
  --tokenizer /tmp/carry/caseops.model --workers 32 --shard-tokens 1000000 --quiet > $S/prepare.log 2>&1; st "prepare rc=$?"
for i in $(seq 120); do [ -f /tmp/fa2_ready ] && break; sleep 2; done; st "fa2 $(ls /tmp/fa2 | wc -l)"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site /tmp/fa2/*.whl > $S/pip_fa4.txt 2>&1; st "pip rc=$?"
tar xf /tmp/fa2/cu13_rest.tar -C /tmp/site && xz -dc /tmp/fa2/rt.so.xz > /tmp/site/nvidia_cutlass_dsl/cu13/lib/libcute_dsl_runtime.so \
  && cp /tmp/ir.so /tmp/site/nvidia_cutlass_dsl/dsl_packages/cutlass/_mlir/_mlir_libs/_cutlass_ir.cu13.cpython-312-x86_64-linux-gnu.so; st "libs rc=$?"
export PYTHONPATH=/tmp/site:/tmp/site/nvidia_cutlass_dsl/dsl_packages
(cd /tmp/newrepo && WARMUP_STEPS=8 GPU_CHECK_STEPS=legal_full timeout 500 bash tools/gpu_check.sh $S/check 2); st "gpu_check rc=$?"
st ALLDONE
