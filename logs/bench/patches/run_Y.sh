#!/usr/bin/env bash
# 1xH100: HEAD's bench, then FA4 forward configurations and the hybrid (cuDNN forward + FA4 backward) in a
# microbench, then tools/bench.py with FA4 (fastest forward configuration) and with the hybrid.
S=/tmp/rY; mkdir -p $S; exec > $S/run.log 2>&1
export PYTHONUNBUFFERED=1; R=$PWD
st() { echo "$1 t=$(date +%s)" >> $S/status.txt; }
st start
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > $S/env.txt
mkdir -p /tmp/fx /tmp/headrepo /tmp/fa4repo /tmp/carry && cp .exp/fa4op.py .exp/fa4ab2.py .exp/tg_fa4.py .exp/pollX.sh /tmp/fx/
cp .carry/* /tmp/carry/ && cp -r train_gpt.py tools data /tmp/headrepo/ && cp -r tools data /tmp/fa4repo/ && cp .exp/tg_fa4.py /tmp/fa4repo/train_gpt.py
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl > $S/pip_brotli.txt 2>&1
xz -dc .fa1/ir.so.xz > /tmp/ir.so; st "ir rc=$? bytes=$(stat -c %s /tmp/ir.so)"
python3 /tmp/headrepo/data/prepare_caseops.py --docs /tmp/carry/fineweb_sample.jsonl.gz --out /tmp/data --val-docs 800 \
  --tokenizer /tmp/carry/caseops.model --workers 16 --quiet > $S/prepare.log 2>&1; st "prepare rc=$?"
B="--data-dir /tmp/data --warmup 6 --steps 10 --windows 4096 --profile 2"
mkdir -p /tmp/w1 /tmp/w2 /tmp/w3
(cd /tmp/w1 && TORCHINDUCTOR_CACHE_DIR=/tmp/ic1 timeout 400 python3 /tmp/headrepo/tools/bench.py $B) > $S/bench_1_HEAD.txt 2>&1; st "bench 1 rc=$?"
for i in $(seq 120); do [ -f /tmp/fa2_ready ] && break; sleep 5; done; st "fa2 $(ls /tmp/fa2 | wc -l)"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site /tmp/fa2/*.whl > $S/pip_fa4.txt 2>&1; st "pip rc=$?"
tar xf /tmp/fa2/cu13_rest.tar -C /tmp/site && xz -dc /tmp/fa2/rt.so.xz > /tmp/site/nvidia_cutlass_dsl/cu13/lib/libcute_dsl_runtime.so \
  && cp /tmp/ir.so /tmp/site/nvidia_cutlass_dsl/dsl_packages/cutlass/_mlir/_mlir_libs/_cutlass_ir.cu13.cpython-312-x86_64-linux-gnu.so; st "libs rc=$?"
export PYTHONPATH=/tmp/site:/tmp/site/nvidia_cutlass_dsl/dsl_packages:/tmp/fx
python3 -m pip list --path /tmp/site 2>/dev/null | grep -i "flash\|cutlass\|quack\|tvm\|dlpack" > $S/versions.txt
timeout 400 python3 /tmp/fx/fa4ab2.py /tmp/headrepo /tmp/fx /tmp/best.env > $S/fa4ab2.txt 2>&1; st "fa4ab2 rc=$? best=$(cat /tmp/best.env) hybrid_ok=$(cat /tmp/best.env.hybrid_ok 2>/dev/null)"
if [ -f /tmp/best.env ]; then
  (cd /tmp/w2 && env $(cat /tmp/best.env) FA4_MODE=fa4 TORCHINDUCTOR_CACHE_DIR=/tmp/ic2 timeout 450 python3 /tmp/fa4repo/tools/bench.py $B) > $S/bench_2_fa4.txt 2>&1; st "bench 2 rc=$?"
  python3 /tmp/headrepo/tools/compare_losses.py $S/bench_1_HEAD.txt $S/bench_2_fa4.txt > $S/compare_fa4.txt 2>&1
  (cd /tmp/w3 && env $(cat /tmp/best.env) FA4_MODE=hybrid TORCHINDUCTOR_CACHE_DIR=/tmp/ic3 timeout 450 python3 /tmp/fa4repo/tools/bench.py $B) > $S/bench_3_hybrid.txt 2>&1; st "bench 3 rc=$?"
  python3 /tmp/headrepo/tools/compare_losses.py $S/bench_1_HEAD.txt $S/bench_3_hybrid.txt > $S/compare_hybrid.txt 2>&1
fi
st ALLDONE
