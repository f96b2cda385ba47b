#!/usr/bin/env bash
# pollTS.sh DIR LIMIT_S: wait for DIR/status.txt to say ALLDONE (or LIMIT_S), print the key lines, tar DIR into $OUT
S=$1; end=$(( $(date +%s) + $2 ))
while [ $(date +%s) -lt $end ] && ! grep -q ALLDONE $S/status.txt 2>/dev/null; do sleep 5; done
cat $S/status.txt 2>/dev/null; tail -3 $S/smi.csv 2>/dev/null
grep -h "^tttab3" $S/tttab3.txt 2>/dev/null | cut -c1-400
for c in check check_base; do echo "== $c"; grep -h "attention:\|^throughput\|prequant_ttt epoch\|prequant_ttt_time\|quantized_sliding\|Total submission\|eval_phase\|Error" $S/$c/*.txt 2>/dev/null | cut -c1-220; done
(cd $S && tar czf $OUT/$(basename $S).tgz --exclude='*.pt' --exclude='*.ptz' . 2>/dev/null)
