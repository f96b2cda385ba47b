#!/usr/bin/env bash
# pollAM2.sh DIR LIMIT_S: wait for DIR/status.txt to say ALLDONE (or LIMIT_S), print the key lines, copy DIR to $OUT
S=$1; end=$(( $(date +%s) + $2 ))
while [ $(date +%s) -lt $end ] && ! grep -q ALLDONE $S/status.txt 2>/dev/null; do sleep 5; done
cat $S/status.txt 2>/dev/null
tail -3 $S/tests.txt 2>/dev/null; tail -2 $S/packed.txt 2>/dev/null
for f in $S/bench_*.txt; do echo "== $f"; grep -h "^bench\|^train \|^losses\|sliding_eval\|memory\|Error" $f | cut -c1-200; done
cat $S/compare.txt 2>/dev/null
grep -h "category\|act_gemm" $S/profile_triton.txt 2>/dev/null | cut -c1-200
(cd $S && tar czf $OUT/$(basename $S).tgz . 2>/dev/null)
