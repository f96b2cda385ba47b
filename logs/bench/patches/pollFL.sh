#!/usr/bin/env bash
# pollFL.sh DIR LIMIT_S: waits for run_FL.sh's ALLDONE (at most LIMIT_S), prints the key lines, tars DIR into $OUT.
S=$1; end=$(( $(date +%s) + $2 ))
while [ $(date +%s) -lt $end ] && ! grep -q ALLDONE $S/status.txt 2>/dev/null; do sleep 5; done
cat $S/status.txt 2>/dev/null
cat $S/nllab.txt $S/attnfwd.txt 2>/dev/null | grep -h "^nllab\|^attnfwd" | cut -c1-200
tail -n 2 $S/tests_*.txt 2>/dev/null
grep -h "attention:\|val_bpb\|Total submission\|stopping_early\|tok/s\|warmup_done\|eval_phase\|peak\|prequant_ttt_time" \
  $S/check/*.txt 2>/dev/null | cut -c1-220 | tail -30
(cd $S && tar czf /tmp/$(basename $S).tgz --exclude='*.pt' --exclude='*.ptz' . 2>/dev/null; mv /tmp/$(basename $S).tgz $OUT/)
