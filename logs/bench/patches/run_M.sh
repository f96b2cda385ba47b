#!/usr/bin/env bash
# 1xH100: profile of training and of the sliding evaluation at HEAD; loss variant F (division as a product).
export PYTHONUNBUFFERED=1
python3 data/prepare_caseops.py --docs .carry/fineweb_sample.jsonl.gz --docs .carry/wikipedia_sample.jsonl.gz \
  --out /tmp/data --val-docs 800 --tokenizer .carry/caseops.model --workers 16 --quiet > $OUT/prepare.log 2>&1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > $OUT/gpus.txt
timeout 120 python3 logs/bench/patches/lossab.py D=train_gpt.py F=.exp/tg_F.py 2>&1 | grep -v Warn > $OUT/lossab_F.txt
mkdir -p /tmp/w && R=$PWD && (cd /tmp/w && timeout 330 python3 $R/tools/bench.py --data-dir /tmp/data --warmup 3 --steps 3 --profile 1 --windows 4096) > $OUT/bench_profile.txt 2>&1
echo "rc=$?" >> $OUT/gpus.txt
grep -h "us_per_call:" $OUT/lossab_F.txt; grep -h "^train\|^sliding\|profile sliding_eval\|category" $OUT/bench_profile.txt | cut -c1-200
