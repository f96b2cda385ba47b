#!/usr/bin/env bash
# 1xH100, SDPA only: the scoring graph's generated code (Inductor's output_code modules) and its profile, to read
# what the blocks' input kernels load and store. tools/bench.py --steps 0 --windows 4096 --profile 1.
S=$OUT; export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,clocks.max.sm,power.limit --format=csv,noheader > $S/gpu.txt
mkdir -p /tmp/w && cp -r train_gpt.py tools data /tmp/w/
(cd /tmp/w && TORCHINDUCTOR_CACHE_DIR=/tmp/ind_oc timeout 300 python3 tools/bench.py --steps 0 --windows 4096 \
  --profile 1) > $S/bench_profile.txt 2>&1; echo "bench rc=$?" >> $S/status.txt
mkdir -p $S/code; for f in $(grep -rl "def call(args" /tmp/ind_oc --include=*.py); do cp $f $S/code/; done
ls -la $S/code >> $S/status.txt; cat $S/status.txt; grep "^sliding_eval\|profile sliding_eval category" $S/bench_profile.txt
