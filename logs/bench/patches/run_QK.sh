#!/usr/bin/env bash
# 1xH100, ATTENTION=sdpa, no data: the attention's scoring products (qk_rope, xsa_proj) in the working tree.
# GPU tests of the kernels, the packed script's kernel check, then evalqk.py against dade453's train_gpt.py.
S=$OUT; export PYTHONUNBUFFERED=1 ATTENTION=sdpa
nvidia-smi --query-gpu=name,clocks.max.sm,power.limit --format=csv,noheader
timeout 240 python3 -m pytest -q tests/test_train_mlp_kernel.py > $S/tests.txt 2>&1; echo "tests rc=$?"; tail -3 $S/tests.txt
python3 tools/pack.py /tmp/pk > $S/packed.txt 2>&1 && python3 -c "
ns = {'__name__': 'packed'}
exec(compile(open('/tmp/pk/train_gpt.py').read(), '/tmp/pk/train_gpt.py', 'exec'), ns)
print('packed_mlp_kernel:', ns['mlp_kernel']('triton'))" >> $S/packed.txt 2>&1; echo "packed rc=$?"; tail -2 $S/packed.txt
timeout 400 python3 logs/bench/patches/evalqk.py NEW=train_gpt.py BASE=.exp/base_dade453.py > $S/evalqk.txt 2>&1
echo "evalqk rc=$?"; grep -v Warning $S/evalqk.txt | tail -20
