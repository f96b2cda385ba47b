#!/usr/bin/env bash
# 1xH100, SDPA only (call LG): gpu_check.sh's legal_full run of the working tree (a whole LEGAL=1 run: 28 s of training,
# 64 Hessian batches, score-first TTT), FineWeb sample shards only. Writes to $OUT.
S=$OUT; export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,clocks.max.sm,power.limit --format=csv,noheader > $S/gpu.txt
mkdir -p /tmp/r && cp -r train_gpt.py tools data tests .whl /tmp/r/
python3 data/prepare_caseops.py --docs .cfw/fineweb_sample.jsonl.gz --out /tmp/data --val-docs 800 \
  --tokenizer .cfw/caseops.model --workers 16 --quiet > $S/prepare.log 2>&1; echo "prepare rc=$?" >> $S/status.txt
(cd /tmp/r && GPU_CHECK_STEPS=legal_full timeout 540 bash tools/gpu_check.sh /tmp/rLG 1); echo "gpu_check rc=$?" >> $S/status.txt
cp /tmp/rLG/gpu1_legal_full.txt $S/legal_full.txt 2>/dev/null; cp /tmp/rLG/gpu1_legal_full.out $S/legal_full.out 2>/dev/null
cat $S/status.txt
grep -hE "attention:|tok/s|score_first|quantized|final|submission|eval_phase|peak|warmup_done" $S/legal_full.txt | cut -c1-220 | tail -25
