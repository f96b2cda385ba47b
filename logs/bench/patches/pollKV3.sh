#!/usr/bin/env bash
# pollKV3.sh DIR LIMIT_S: wait for DIR/status.txt to say ALLDONE (or LIMIT_S), print the key lines, tar DIR into $OUT
S=$1; end=$(( $(date +%s) + $2 ))
while [ $(date +%s) -lt $end ] && ! grep -q ALLDONE $S/status.txt 2>/dev/null; do sleep 5; done
cat $S/status.txt 2>/dev/null
grep -h "^evalab2" $S/evalab2.txt 2>/dev/null | cut -c1-250; tail -3 $S/evalab2.txt | cut -c1-300
grep -h "attention:\|val_bpb\|Total submission\|stopping_early\|step:.*train_time\|tok/s\|warmup_done\|eval_phase\|_ms:" $S/check/*.txt 2>/dev/null | cut -c1-220 | tail -40
(cd $S && tar czf $OUT/$(basename $S).tgz --exclude='*.pt' --exclude='*.ptz' . 2>/dev/null)
