#!/usr/bin/env bash
# pollZ.sh DIR LIMIT_S: wait for DIR/status.txt to say ALLDONE (or LIMIT_S), print the key lines, tar DIR into $OUT
S=$1; end=$(( $(date +%s) + $2 ))
while [ $(date +%s) -lt $end ] && ! grep -q ALLDONE $S/status.txt 2>/dev/null; do sleep 5; done
cat $S/status.txt 2>/dev/null
grep -h "^train \|^peak\|^sliding\|^bench \|Error" $S/*.txt 2>/dev/null | cut -c1-250 | head -30
tail -2 $S/tests.txt 2>/dev/null; cat $S/compare_*.txt 2>/dev/null
grep -h "attention:\|val_bpb\|Total submission\|stopping_early\|step:.*train_time" $S/check/*.txt 2>/dev/null | cut -c1-250 | tail -25
(cd $S && tar czf $OUT/$(basename $S).tgz --exclude='*.pt' --exclude='*.ptz' . 2>/dev/null)
