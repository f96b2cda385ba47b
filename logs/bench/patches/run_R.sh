#!/usr/bin/env bash
# 4xH100: bench of HEAD on 4 GPUs (torchrun) and on one GPU of the same machine.
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
R=$PWD
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > $OUT/env.txt
python3 data/prepare_caseops.py --docs .carry/fineweb_sample.jsonl.gz --docs .carry/wikipedia_sample.jsonl.gz \
  --out /tmp/data --val-docs 800 --tokenizer .carry/caseops.model --workers 32 --quiet > $OUT/prepare.log 2>&1; echo "prepare rc=$?"
mkdir -p /tmp/w4 /tmp/w1
(cd /tmp/w4 && timeout 240 torchrun --standalone --nproc_per_node=4 $R/tools/bench.py --data-dir /tmp/data --warmup 3 --steps 8 --windows 4096) > $OUT/h100x4_R_bench4.txt 2>&1; echo "bench4 rc=$?"
grep -h "^train\|^ranks\|^peak\|^sliding" $OUT/h100x4_R_bench4.txt
(cd /tmp/w1 && CUDA_VISIBLE_DEVICES=0 timeout 200 python3 $R/tools/bench.py --data-dir /tmp/data --warmup 3 --steps 8 --windows 4096) > $OUT/h100x4_R_machine_1gpu.txt 2>&1; echo "bench1 rc=$?"
grep -h "^train\|^peak\|^sliding" $OUT/h100x4_R_machine_1gpu.txt
