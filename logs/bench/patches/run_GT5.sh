#!/usr/bin/env bash
# 1xH100, SDPA only: the shared xsa_operand helper of fused_gemm_kernel (MODE 4) and xsa_res_kernel against
# 505488f's two inline copies. xsaeq.py: both trees' modes 4 and 5 on the same inputs, bit for bit; then
# tools/bench.py --steps 0 --windows 4096 for each tree in its own process, two rounds alternated.
# Then (run_GT5.sh tests) the GPU test files not run on stop 23's code, and the kernel tests.
S=$OUT; export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,clocks.max.sm,power.limit --format=csv,noheader > $S/gpu.txt
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl > $S/pip.txt 2>&1
export PYTHONPATH=/tmp/site
if [ "$1" = tests ]; then
  timeout 540 python3 -m pytest -v -p no:cacheprovider tests/test_train_kernels.py tests/test_tools_bench_mlp.py \
    tests/test_train_e2e.py tests/test_tools_bench.py > $S/tests.txt 2>&1; echo "pytest rc=$?" >> $S/status.txt
  tail -5 $S/tests.txt; exit
fi
timeout 120 python3 logs/bench/patches/xsaeq.py > $S/xsaeq.txt 2>&1; echo "xsaeq rc=$?" >> $S/status.txt
mkdir -p /tmp/wn /tmp/wb && cp -r train_gpt.py tools data /tmp/wn/ && cp -r tools data /tmp/wb/ \
  && cp .exp/base_505488f.py /tmp/wb/train_gpt.py
for r in 1 2; do for t in wb wn; do
  (cd /tmp/$t && TORCHINDUCTOR_CACHE_DIR=/tmp/ind_$t timeout 150 python3 tools/bench.py --steps 0 --windows 4096) \
    > $S/bench_${t}_$r.txt 2>&1
  echo "bench tree:$t round:$r rc=$? $(grep -h '^sliding_eval' $S/bench_${t}_$r.txt)" >> $S/status.txt
done; done
cat $S/status.txt $S/xsaeq.txt
