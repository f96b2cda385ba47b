#!/usr/bin/env bash
# pollFT.sh DIR LIMIT_S: wait for DIR/status.txt to say ALLDONE (or LIMIT_S), print the key lines, tar DIR into $OUT
S=$1; end=$(( $(date +%s) + $2 ))
while [ $(date +%s) -lt $end ] && ! grep -q ALLDONE $S/status.txt 2>/dev/null; do sleep 5; done
cat $S/status.txt 2>/dev/null; tail -3 $S/smi.csv 2>/dev/null
grep -h "^tttab2" $S/tttab2.txt 2>/dev/null | cut -c1-220
for f in $S/bench_*.txt; do echo "== $f"; grep -h "^bench\|^train \|sliding_eval\|memory\|Error" $f 2>/dev/null | cut -c1-200; done
grep -h "prequant_ttt\|attention:\|val_bpb\|Total submission\|stopping_early\|tok/s\|warmup_done\|eval_phase\|_ms:" $S/check/*.txt 2>/dev/null | cut -c1-220 | tail -40
(cd $S && tar czf $OUT/$(basename $S).tgz --exclude='*.pt' --exclude='*.ptz' . 2>/dev/null)
