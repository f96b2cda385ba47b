#!/usr/bin/env bash
# 1xH100: FlashAttention-4 (flash-attn-4 4.0.0b36, CuTe DSL, carried in two calls) against HEAD's cuDNN SDPA.
# Microbench at the record's shapes, then tools/bench.py of HEAD and of HEAD with the FA4 custom op, same SEED.
S=/tmp/rX; mkdir -p $S; exec > $S/run.log 2>&1
export PYTHONUNBUFFERED=1; R=$PWD
st() { echo "$1 t=$(date +%s)" >> $S/status.txt; }
st start
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > $S/env.txt
mkdir -p /tmp/fx /tmp/headrepo /tmp/fa4repo && cp .exp/fa4op.py .exp/fa4ab.py .exp/tg_fa4.py .exp/pollX.sh /tmp/fx/
mkdir -p /tmp/carry && cp .carry/* /tmp/carry/ && cp -r train_gpt.py tools data /tmp/headrepo/ && cp -r tools data /tmp/fa4repo/ && cp .exp/tg_fa4.py /tmp/fa4repo/train_gpt.py
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl > $S/pip_brotli.txt 2>&1
xz -dc .fa1/ir.so.xz > /tmp/ir.so; st "ir rc=$? bytes=$(stat -c %s /tmp/ir.so)"
python3 /tmp/headrepo/data/prepare_caseops.py --docs /tmp/carry/fineweb_sample.jsonl.gz --out /tmp/data --val-docs 800 \
  --tokenizer /tmp/carry/caseops.model --workers 16 --quiet > $S/prepare.log 2>&1; st "prepare rc=$?"
mkdir -p /tmp/w1 /tmp/w2
(cd /tmp/w1 && PYTHONPATH=/tmp/site TORCHINDUCTOR_CACHE_DIR=/tmp/ic1 timeout 400 python3 /tmp/headrepo/tools/bench.py --data-dir /tmp/data --warmup 6 --steps 10 --windows 4096 --profile 2) > $S/bench_1_HEAD.txt 2>&1; st "bench 1 rc=$?"
for i in $(seq 120); do [ -f /tmp/fa2_ready ] && break; sleep 5; done; st "fa2 $(ls /tmp/fa2 | wc -l)"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site /tmp/fa2/*.whl > $S/pip_fa4.txt 2>&1; st "pip rc=$?"
tar xf /tmp/fa2/cu13_rest.tar -C /tmp/site && xz -dc /tmp/fa2/rt.so.xz > /tmp/site/nvidia_cutlass_dsl/cu13/lib/libcute_dsl_runtime.so \
  && cp /tmp/ir.so /tmp/site/nvidia_cutlass_dsl/dsl_packages/cutlass/_mlir/_mlir_libs/_cutlass_ir.cu13.cpython-312-x86_64-linux-gnu.so; st "libs rc=$?"
export PYTHONPATH=/tmp/site:/tmp/site/nvidia_cutlass_dsl/dsl_packages:/tmp/fx
python3 -c "import cutlass, flash_attn.cute.interface as i; print('import ok', cutlass.__file__)" > $S/import.txt 2>&1; st "import rc=$?"
timeout 400 python3 /tmp/fx/fa4ab.py /tmp/headrepo /tmp/fx > $S/fa4ab.txt 2>&1; st "fa4ab rc=$?"
if grep -q compiled_fullgraph_ok $S/fa4ab.txt; then
  (cd /tmp/w2 && TORCHINDUCTOR_CACHE_DIR=/tmp/ic2 timeout 450 python3 /tmp/fa4repo/tools/bench.py --data-dir /tmp/data --warmup 6 --steps 10 --windows 4096 --profile 2) > $S/bench_2_fa4.txt 2>&1; st "bench 2 rc=$?"
  python3 /tmp/headrepo/tools/compare_losses.py $S/bench_1_HEAD.txt $S/bench_2_fa4.txt > $S/compare_fa4.txt 2>&1
fi
st ALLDONE
