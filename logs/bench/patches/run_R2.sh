#!/usr/bin/env bash
# 1xH100, SDPA (no FlashAttention): tools/bench.py of the working tree (HEAD) and of R2 (apply_partial_rotary with
# full-width cos/sin tables and a permuted copy of x instead of slices and a cat).
S=/tmp/rR2; mkdir -p $S; exec > $S/run.log 2>&1
export PYTHONUNBUFFERED=1
st() { echo "$1 t=$(date +%s)" >> $S/status.txt; }
st start
for n in head R2; do mkdir -p /tmp/r_$n /tmp/w_$n; cp -r train_gpt.py tools data /tmp/r_$n/; done
cp .exp/tg_R2.py /tmp/r_R2/train_gpt.py
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl > $S/pip_brotli.txt 2>&1
export PYTHONPATH=/tmp/site
python3 data/prepare_caseops.py --docs .carry/fineweb_sample.jsonl.gz --out /tmp/data --val-docs 800 \
  --tokenizer .carry/caseops.model --workers 16 --quiet > $S/prepare.log 2>&1; st "prepare rc=$?"
B="--data-dir /tmp/data --warmup 6 --steps 10 --windows 0 --profile 1"
for n in head R2; do (cd /tmp/w_$n && TORCHINDUCTOR_CACHE_DIR=/tmp/ic_$n timeout 250 python3 /tmp/r_$n/tools/bench.py $B) > $S/bench_$n.txt 2>&1; st "bench $n rc=$?"; done
python3 tools/compare_losses.py $S/bench_head.txt $S/bench_R2.txt > $S/compare_head_R2.txt 2>&1
st ALLDONE
grep -h "^train \|^peak" $S/bench_*.txt; cat $S/compare_head_R2.txt
for n in head R2; do echo "== $n"; grep "^profile recurrence:1 kernel" $S/bench_$n.txt | grep "rms_norm" | cut -c1-190; grep "^profile recurrence:1 category" $S/bench_$n.txt; done
(cd $S && tar czf $OUT/rR2.tgz .)
