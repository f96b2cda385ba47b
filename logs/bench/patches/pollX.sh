#!/usr/bin/env bash
# pollX.sh DIR LIMIT_S: wait for DIR/status.txt to say ALLDONE (or LIMIT_S), then copy results into $OUT
S=$1; end=$(( $(date +%s) + $2 ))
while [ $(date +%s) -lt $end ] && ! grep -q ALLDONE $S/status.txt 2>/dev/null; do sleep 5; done
cat $S/status.txt 2>/dev/null
grep -h "^profile.*category\|^fa4ab\|^fa4ab2\|^import\|^train \|^peak\|^sliding\|^bench \|Error\|error" $S/*.txt 2>/dev/null | cut -c1-300 | head -70
cat $S/compare_*.txt 2>/dev/null | head -30
(cd $S && tar czf $OUT/$(basename $S).tgz --exclude='*.pt' --exclude='*.ptz' . 2>/dev/null)
