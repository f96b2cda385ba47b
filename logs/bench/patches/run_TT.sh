#!/usr/bin/env bash
# 1xH100, ATTENTION=sdpa, no data: tttab.py (pre-quant TTT's step and a training micro-batch, KERNELS=torch vs triton).
export PYTHONUNBUFFERED=1 ATTENTION=sdpa
nvidia-smi --query-gpu=name,clocks.max.sm,power.limit --format=csv,noheader
timeout 500 python3 logs/bench/patches/tttab.py > $OUT/tttab.txt 2>&1; echo "tttab rc=$?"; grep "^tttab\|Error" $OUT/tttab.txt
