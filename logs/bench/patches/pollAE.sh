#!/usr/bin/env bash
# pollAE.sh DIR LIMIT_S: wait for ALLDONE (or LIMIT_S), print each run's key lines, tar DIR into $OUT
S=$1; end=$(( $(date +%s) + $2 ))
while [ $(date +%s) -lt $end ] && ! grep -q ALLDONE $S/status.txt 2>/dev/null; do sleep 3; done
cat $S/status.txt
for f in $S/tiny_*.out; do echo "== $f"; grep -h "^run_id\|val_bpb\|final_score\|Error\|error" $f | cut -c1-200 | tail -12; done
(cd $S && tar czf $OUT/$(basename $S).tgz . 2>/dev/null)
