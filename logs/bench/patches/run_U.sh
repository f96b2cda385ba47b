#!/usr/bin/env bash
# 1xH100: scoring time per window at 256 / 128 / 64 / 32 windows per call (one GPU; 4, 8 GPUs' TTT shares and the
# old 8-GPU batch), HEAD's train_gpt.py; then the evaluation and legal TTT tests with the GPU.
S=/tmp/rU; mkdir -p $S; exec > $S/run.log 2>&1
export PYTHONUNBUFFERED=1; R=$PWD
st() { echo "$1 t=$(date +%s)" >> $S/status.txt; }
st start
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > $S/env.txt
EVALAB_ROWS="256 128 64 32" timeout 420 python3 logs/bench/patches/evalab.py HEAD=$R/train_gpt.py > $S/evalab_rows.txt 2>&1; st "evalab rc=$?"
timeout 240 python3 -m pytest -q tests/test_train_eval.py "tests/test_legal_ttt.py::test_warm_up_compiles_every_scoring_shape" > $S/tests.txt 2>&1; st "tests rc=$?"
st ALLDONE
