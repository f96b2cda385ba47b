#!/usr/bin/env bash
# 1xH100, FlashAttention 4 4.0.0b36 installed (carried as in run_KV7.sh): which backend train_gpt.py of the working
# tree selects (auto, and ATTENTION=flash_attn_4), then tests/test_train_flash4.py with the real kernels.
S=/tmp/rFG; mkdir -p $S; exec > $S/run.log 2>&1
export PYTHONUNBUFFERED=1
st() { echo "$1 t=$(date +%s)" >> $S/status.txt; }
st start
mkdir -p /tmp/fx /tmp/r && cp logs/bench/patches/pollFG.sh /tmp/fx/ && cp -r train_gpt.py tests tools data /tmp/r/
xz -dc .fa1/ir.so.xz > /tmp/ir.so; st "ir rc=$? bytes=$(stat -c %s /tmp/ir.so)"
for i in $(seq 120); do [ -f /tmp/fa2_ready ] && break; sleep 5; done; st "fa2 $(ls /tmp/fa2 | wc -l)"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site /tmp/fa2/*.whl > $S/pip_fa4.txt 2>&1; st "pip rc=$?"
tar xf /tmp/fa2/cu13_rest.tar -C /tmp/site && xz -dc /tmp/fa2/rt.so.xz > /tmp/site/nvidia_cutlass_dsl/cu13/lib/libcute_dsl_runtime.so \
  && cp /tmp/ir.so /tmp/site/nvidia_cutlass_dsl/dsl_packages/cutlass/_mlir/_mlir_libs/_cutlass_ir.cu13.cpython-312-x86_64-linux-gnu.so; st "libs rc=$?"
export PYTHONPATH=/tmp/site:/tmp/site/nvidia_cutlass_dsl/dsl_packages
(cd /tmp/r && python3 -c "import train_gpt as tg; print('selected auto:' + tg.attention_backend('auto'), 'flash_attn_4:' + tg.attention_backend('flash_attn_4'))") > $S/select.txt 2>&1; st "select rc=$?"
(cd /tmp/r && timeout 300 python3 -m pytest -q tests/test_train_flash4.py -p no:cacheprovider -rs) > $S/tests.txt 2>&1; st "tests rc=$?"
st ALLDONE
