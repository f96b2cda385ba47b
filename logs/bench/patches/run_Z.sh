#!/usr/bin/env bash
# 1xH100: tools/bench.py of 3f216ed (SDPA) and of the working tree with flash-attn-4 installed (backend flash_attn_4),
# the CPU/GPU tests of the backend and the model with FA4 installed, then gpu_check.sh's pipeline and legal runs
# with FA4 (data: the FineWeb sample only; the carry limit leaves no room for the Wikipedia sample).
S=/tmp/rZ; mkdir -p $S; exec > $S/run.log 2>&1
export PYTHONUNBUFFERED=1; R=$PWD
st() { echo "$1 t=$(date +%s)" >> $S/status.txt; }
st start
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > $S/env.txt
mkdir -p /tmp/fx /tmp/oldrepo /tmp/newrepo /tmp/carry && cp .exp/pollX.sh .exp/pollZ.sh /tmp/fx/ && cp .carry/* /tmp/carry/
cp -r tools data /tmp/oldrepo/ && cp .exp/tg_3f216ed.py /tmp/oldrepo/train_gpt.py
cp -r train_gpt.py tools data tests /tmp/newrepo/
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl > $S/pip_brotli.txt 2>&1
xz -dc .fa1/ir.so.xz > /tmp/ir.so; st "ir rc=$? bytes=$(stat -c %s /tmp/ir.so)"
python3 /tmp/newrepo/data/prepare_caseops.py --docs /tmp/carry/fineweb_sample.jsonl.gz --out /tmp/data --val-docs 800 \
  --tokenizer /tmp/carry/caseops.model --workers 16 --quiet > $S/prepare.log 2>&1; st "prepare rc=$?"
B="--data-dir /tmp/data --warmup 6 --steps 10 --windows 4096 --profile 2"
mkdir -p /tmp/w1 /tmp/w2
(cd /tmp/w1 && TORCHINDUCTOR_CACHE_DIR=/tmp/ic1 timeout 400 python3 /tmp/oldrepo/tools/bench.py $B) > $S/bench_1_3f216ed.txt 2>&1; st "bench 1 rc=$?"
for i in $(seq 120); do [ -f /tmp/fa2_ready ] && break; sleep 5; done; st "fa2 $(ls /tmp/fa2 | wc -l)"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site /tmp/fa2/*.whl > $S/pip_fa4.txt 2>&1; st "pip rc=$?"
tar xf /tmp/fa2/cu13_rest.tar -C /tmp/site && xz -dc /tmp/fa2/rt.so.xz > /tmp/site/nvidia_cutlass_dsl/cu13/lib/libcute_dsl_runtime.so \
  && cp /tmp/ir.so /tmp/site/nvidia_cutlass_dsl/dsl_packages/cutlass/_mlir/_mlir_libs/_cutlass_ir.cu13.cpython-312-x86_64-linux-gnu.so; st "libs rc=$?"
export PYTHONPATH=/tmp/site:/tmp/site/nvidia_cutlass_dsl/dsl_packages
python3 -m pip list --path /tmp/site 2>/dev/null | grep -i "flash\|cutlass\|quack\|tvm\|dlpack\|brotli" > $S/versions.txt
(cd /tmp/newrepo && timeout 300 python3 -m pytest -q tests/test_train_flash4.py tests/test_train_model.py tests/test_train_eval.py -p no:cacheprovider) > $S/tests.txt 2>&1; st "tests rc=$?"
(cd /tmp/w2 && TORCHINDUCTOR_CACHE_DIR=/tmp/ic2 timeout 450 python3 /tmp/newrepo/tools/bench.py $B) > $S/bench_2_new_fa4.txt 2>&1; st "bench 2 rc=$?"
python3 /tmp/newrepo/tools/compare_losses.py $S/bench_1_3f216ed.txt $S/bench_2_new_fa4.txt > $S/compare_fa4.txt 2>&1
(cd /tmp/newrepo && timeout 900 bash tools/gpu_check.sh $S/check 1); st "gpu_check rc=$?"
st ALLDONE
