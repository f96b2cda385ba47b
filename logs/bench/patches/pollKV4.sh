#!/usr/bin/env bash
# pollKV4.sh DIR LIMIT_S: wait for ALLDONE (or LIMIT_S), print the results, tar DIR into $OUT
S=$1; end=$(( $(date +%s) + $2 ))
while [ $(date +%s) -lt $end ] && ! grep -q ALLDONE $S/status.txt 2>/dev/null; do sleep 3; done
cat $S/status.txt $S/bench_attention.txt 2>/dev/null | grep -v Warning | cut -c1-250 | tail -30
(cd $S && tar czf $OUT/$(basename $S).tgz . 2>/dev/null)
