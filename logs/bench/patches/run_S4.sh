#!/usr/bin/env bash
# 4xH100 (call S4), started in the background (setsid) and read back by pollFL.sh: per-GPU scaling of HEAD's training
# step with FlashAttention 4 (carried as in run_FL.sh: .fa1 now, .fa2 into /tmp/fa2 by the next call). tools/bench.py
# on 4 GPUs (torchrun), then on one GPU of the same machine (the compiled graphs cached by the first run); both with
# ATTENTION=flash_attn_4. If FlashAttention 4 cannot load, the same two runs with SDPA.
S=/tmp/rS4; mkdir -p $S; exec > $S/run.log 2>&1
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
st() { echo "$1 t=$(date +%s)" >> $S/status.txt; }
st start; nvidia-smi --query-gpu=name,clocks.max.sm,power.limit --format=csv,noheader >> $S/status.txt
xz -dc .fa1/ir.so.xz > /tmp/ir.so; st "ir rc=$? bytes=$(stat -c %s /tmp/ir.so)"
python3 data/prepare_caseops.py --docs .cfw/fineweb_sample.jsonl.gz --out /tmp/data --val-docs 800 \
  --tokenizer .cfw/caseops.model --workers 32 --quiet > $S/prepare.log 2>&1; st "prepare rc=$?"
mkdir -p /tmp/r /tmp/w4 /tmp/w1 && cp -r train_gpt.py tools data /tmp/r/
for i in $(seq 120); do [ -f /tmp/fa2_ready ] && break; sleep 2; done; st "fa2 $(ls /tmp/fa2 | wc -l)"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site /tmp/fa2/*.whl > $S/pip_fa4.txt 2>&1
tar xf /tmp/fa2/cu13_rest.tar -C /tmp/site && xz -dc /tmp/fa2/rt.so.xz > /tmp/site/nvidia_cutlass_dsl/cu13/lib/libcute_dsl_runtime.so \
  && cp /tmp/ir.so /tmp/site/nvidia_cutlass_dsl/dsl_packages/cutlass/_mlir/_mlir_libs/_cutlass_ir.cu13.cpython-312-x86_64-linux-gnu.so
st "libs rc=$?"
export PYTHONPATH=/tmp/site:/tmp/site/nvidia_cutlass_dsl/dsl_packages
B="/tmp/r/tools/bench.py --data-dir /tmp/data --warmup 4 --steps 10 --windows 0"
for att in flash_attn_4 sdpa; do
  (cd /tmp/w4 && ATTENTION=$att timeout 420 torchrun --standalone --nproc_per_node=4 $B) > $S/bench4_$att.txt 2>&1
  rc4=$?; st "bench4 $att rc=$rc4 $(grep -h '^train ' $S/bench4_$att.txt | tr '\n' ' ')"
  (cd /tmp/w1 && CUDA_VISIBLE_DEVICES=0 ATTENTION=$att timeout 300 python3 $B) > $S/bench1_$att.txt 2>&1
  st "bench1 $att rc=$? $(grep -h '^train ' $S/bench1_$att.txt | tr '\n' ' ')"
  [ $rc4 = 0 ] && break
done
st ALLDONE
