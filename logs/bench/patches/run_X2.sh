#!/usr/bin/env bash
# Second half of run_X.sh with libs-core (the CuTe DSL's Python frontend) added to the carried wheels.
S=/tmp/rX; exec >> $S/run.log 2>&1
st() { echo "$1 t=$(date +%s)" >> $S/status.txt; }
sed -i '/ALLDONE/d' $S/status.txt
rm -rf /tmp/fa2 && mkdir -p /tmp/fa2 && cp .fa2/* /tmp/fa2/ && cp .exp/fa4op.py .exp/fa4ab.py .exp/tg_fa4.py .exp/pollX.sh /tmp/fx/
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site /tmp/fa2/*.whl > $S/pip_fa4.txt 2>&1; st "pip2 rc=$?"
tar xf /tmp/fa2/cu13_rest.tar -C /tmp/site && xz -dc /tmp/fa2/rt.so.xz > /tmp/site/nvidia_cutlass_dsl/cu13/lib/libcute_dsl_runtime.so \
  && cp /tmp/ir.so /tmp/site/nvidia_cutlass_dsl/dsl_packages/cutlass/_mlir/_mlir_libs/_cutlass_ir.cu13.cpython-312-x86_64-linux-gnu.so; st "libs2 rc=$?"
export PYTHONPATH=/tmp/site:/tmp/site/nvidia_cutlass_dsl/dsl_packages:/tmp/fx
python3 -c "import cutlass, flash_attn.cute.interface as i; print('import ok', cutlass.__file__)" > $S/import.txt 2>&1; st "import2 rc=$?"
timeout 400 python3 /tmp/fx/fa4ab.py /tmp/headrepo /tmp/fx > $S/fa4ab.txt 2>&1; st "fa4ab2 rc=$?"
if grep -q compiled_fullgraph_ok $S/fa4ab.txt; then
  (cd /tmp/w2 && TORCHINDUCTOR_CACHE_DIR=/tmp/ic2 timeout 450 python3 /tmp/fa4repo/tools/bench.py --data-dir /tmp/data --warmup 6 --steps 10 --windows 4096 --profile 2) > $S/bench_2_fa4.txt 2>&1; st "bench 2 rc=$?"
  python3 /tmp/headrepo/tools/compare_losses.py $S/bench_1_HEAD.txt $S/bench_2_fa4.txt > $S/compare_fa4.txt 2>&1
fi
st ALLDONE
