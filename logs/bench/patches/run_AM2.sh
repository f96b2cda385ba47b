#!/usr/bin/env bash
# 1xH100, ATTENTION=sdpa, synthetic tokens: the MLP's Triton products (MLP_KERNEL) in the working tree.
# GPU tests of the kernels, the packed script's kernel check, then tools/bench.py with MLP_KERNEL=torch, triton,
# torch again (each with its own Inductor cache), a profile of the triton form, and the loss comparison.
S=${S:-/tmp/rAM2}; mkdir -p $S; exec > $S/run.log 2>&1
export PYTHONUNBUFFERED=1 ATTENTION=sdpa
st() { echo "$1 t=$(date +%s)" >> $S/status.txt; }
st start
nvidia-smi --query-gpu=name,clocks.max.sm,power.limit --format=csv,noheader >> $S/status.txt
python3 -m pytest -q tests/test_train_mlp_kernel.py > $S/tests.txt 2>&1; st "tests rc=$?"
python3 tools/pack.py /tmp/pk > $S/packed.txt 2>&1 && python3 -c "
ns = {'__name__': 'packed'}
exec(compile(open('/tmp/pk/train_gpt.py').read(), '/tmp/pk/train_gpt.py', 'exec'), ns)
print('packed_mlp_kernel:', ns['mlp_kernel']('triton'))" >> $S/packed.txt 2>&1; st "packed rc=$?"
B="python3 tools/bench.py --warmup 6 --steps 10 --windows 4096"
MLP_KERNEL=torch TORCHINDUCTOR_CACHE_DIR=/tmp/ind_t $B > $S/bench_torch.txt 2>&1; st "torch rc=$?"
MLP_KERNEL=triton TORCHINDUCTOR_CACHE_DIR=/tmp/ind_k $B > $S/bench_triton.txt 2>&1; st "triton rc=$?"
MLP_KERNEL=torch TORCHINDUCTOR_CACHE_DIR=/tmp/ind_t2 $B > $S/bench_torch2.txt 2>&1; st "torch2 rc=$?"
python3 tools/compare_losses.py $S/bench_torch.txt $S/bench_torch2.txt $S/bench_triton.txt > $S/compare.txt 2>&1
st "compare rc=$?"
MLP_KERNEL=triton TORCHINDUCTOR_CACHE_DIR=/tmp/ind_k python3 tools/bench.py --warmup 3 --steps 2 --windows 0 \
  --profile 2 > $S/profile_triton.txt 2>&1; st "profile rc=$?"
st ALLDONE
