#!/usr/bin/env bash
# 1xH100, SDPA only (flash-attn-4 not installed): xsadiag.py (the XSA projection's operand paths), then
# tools/bench.py --steps 0 --windows 4096 (scoring at the initial weights, synthetic tokens) at 256, 512 and 1,024
# windows per call (VAL_BATCH_TOKENS), then 256 again; each run in its own process, one Inductor cache.
# Calls QD3 and QD4 (QD4: data/ copied, xsadiag.py with its variants 4 and 5).
S=$OUT; export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,clocks.max.sm,power.limit --format=csv,noheader > $S/gpu.txt
(timeout 120 python3 logs/bench/patches/xsadiag.py) > $S/xsadiag.txt 2>&1; echo "xsadiag rc=$?" >> $S/status.txt
mkdir -p /tmp/w && cp -r train_gpt.py tools data /tmp/w/  # call QD3 left data/ out: its bench runs failed
for vb in 524288 1048576 2097152 524288; do
  (cd /tmp/w && VAL_BATCH_TOKENS=$vb TORCHINDUCTOR_CACHE_DIR=/tmp/ind timeout 150 python3 tools/bench.py --steps 0 \
    --windows 4096) > $S/bench_vb$vb.txt 2>&1
  echo "bench VAL_BATCH_TOKENS=$vb rc=$? $(grep -h '^sliding_eval' $S/bench_vb$vb.txt)" | tee -a $S/status.txt
  cat $S/bench_vb$vb.txt >> $S/bench_all.txt
done
tail -8 $S/xsadiag.txt
