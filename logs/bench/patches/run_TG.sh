#!/usr/bin/env bash
# 1xH100, SDPA only: the training graphs' generated code (forward and backward, with and without recurrence) from
# tools/bench.py --steps 3 --warmup 3 --windows 0, scanned by dupstores.py for values stored to several buffers (as
# the scoring graph's input kernels did before c2caa5c). Everything comes back in one archive.
S=$OUT; export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,clocks.max.sm,power.limit --format=csv,noheader > $S/gpu.txt
mkdir -p /tmp/w && cp -r train_gpt.py tools data /tmp/w/
(cd /tmp/w && TORCHINDUCTOR_CACHE_DIR=/tmp/ind_tg timeout 420 python3 tools/bench.py --steps 3 --warmup 3 --windows 0) \
  > $S/bench.txt 2>&1; echo "bench rc=$?" >> $S/status.txt
mkdir -p $S/code && cp $(grep -rl "async_compile" /tmp/ind_tg --include=*.py) $S/code/
python3 logs/bench/patches/dupstores.py $S/code/*.py > $S/dupstores.txt 2>&1
cat $S/status.txt; grep -E "^throughput|tok/s" $S/bench.txt | tail -3; cut -c1-220 $S/dupstores.txt
tar czf /tmp/tg.tgz -C $S . && find $S -mindepth 1 -delete && mv /tmp/tg.tgz $S/
