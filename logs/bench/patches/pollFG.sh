#!/usr/bin/env bash
# pollFG.sh DIR LIMIT_S: wait for ALLDONE (or LIMIT_S), print the results, tar DIR into $OUT
S=$1; end=$(( $(date +%s) + $2 ))
while [ $(date +%s) -lt $end ] && ! grep -q ALLDONE $S/status.txt 2>/dev/null; do sleep 3; done
cat $S/status.txt $S/select.txt 2>/dev/null; grep -v Warning $S/tests.txt 2>/dev/null | tail -6
(cd $S && tar czf $OUT/$(basename $S).tgz . 2>/dev/null)
