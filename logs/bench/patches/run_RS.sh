#!/usr/bin/env bash
# 1xH100, ATTENTION=sdpa, no data: a sequential block's residual and MLP norm in the output projection's epilogue
# (xsa_res) in the working tree. GPU tests of the kernels, the packed script's kernel check, then evalqk2.py against
# 9c19ec0's and dade453's train_gpt.py.
S=$OUT; export PYTHONUNBUFFERED=1 ATTENTION=sdpa
nvidia-smi --query-gpu=name,clocks.max.sm,power.limit --format=csv,noheader
timeout 240 python3 -m pytest -q tests/test_train_kernels.py > $S/tests.txt 2>&1; echo "tests rc=$?"; tail -3 $S/tests.txt
python3 tools/pack.py /tmp/pk > $S/packed.txt 2>&1 && python3 -c "
ns = {'__name__': 'packed'}
exec(compile(open('/tmp/pk/train_gpt.py').read(), '/tmp/pk/train_gpt.py', 'exec'), ns)
print('packed_kernels:', ns['kernels']('triton'))" >> $S/packed.txt 2>&1; echo "packed rc=$?"; tail -2 $S/packed.txt
timeout 300 python3 logs/bench/patches/evalqk2.py RES=train_gpt.py PREV=.exp/prev_9c19ec0.py BASE=.exp/base_dade453.py \
  > $S/evalqk2.txt 2>&1; echo "evalqk2 rc=$?"; grep -v Warning $S/evalqk2.txt | tail -8
