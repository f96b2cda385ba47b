#!/usr/bin/env bash
# 1xH100, ATTENTION=sdpa, FineWeb sample shards (as run_FQ.sh): gpu_check.sh's pipeline run of the working tree, to
# see whether call FQ's pre-quant TTT epochs (3.2-3.6 s) repeat without FlashAttention 4 on another machine.
export PYTHONUNBUFFERED=1 ATTENTION=sdpa
nvidia-smi --query-gpu=name,clocks.max.sm,power.limit --format=csv,noheader
python3 data/prepare_caseops.py --docs .cfw/fineweb_sample.jsonl.gz --out /tmp/data --val-docs 800 \
  --tokenizer .cfw/caseops.model --workers 16 --quiet > $OUT/prepare.log 2>&1; echo "prepare rc=$?"
GPU_CHECK_STEPS=pipeline timeout 570 bash tools/gpu_check.sh $OUT/check 1; echo "gpu_check rc=$?"
grep -h "attention:\|val_tokens\|throughput\|warmup_done\|prequant_ttt\|gptq\|sliding\|eval_phase\|final_score\|peak" \
  $OUT/check/*.txt | cut -c1-200
