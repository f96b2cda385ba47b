#!/usr/bin/env bash
# pollKV2.sh DIR LIMIT_S: wait for DIR/status.txt to say ALLDONE (or LIMIT_S), print the key lines, tar DIR into $OUT
S=$1; end=$(( $(date +%s) + $2 ))
while [ $(date +%s) -lt $end ] && ! grep -q ALLDONE $S/status.txt 2>/dev/null; do sleep 5; done
cat $S/status.txt 2>/dev/null
grep -h "^kvxab2" $S/kvxab2*.txt 2>/dev/null | cut -c1-250
tail -3 $S/kvxab2.txt 2>/dev/null | cut -c1-300
grep -h "^train \|^peak\|^sliding\|^bench \|Error" $S/bench_*.txt 2>/dev/null | cut -c1-200 | head -30
tail -2 $S/tests_D.txt 2>/dev/null; cat $S/compare_*.txt 2>/dev/null
(cd $S && tar czf $OUT/$(basename $S).tgz --exclude='*.pt' --exclude='*.ptz' . 2>/dev/null)
