#!/usr/bin/env bash
# pollPL.sh DIR SECONDS: waits for run_PL.sh's ALLDONE (at most SECONDS), then copies its logs to $OUT and prints them.
S=$1; for i in $(seq $(( $2 / 5 ))); do grep -q ALLDONE $S/status.txt 2>/dev/null && break; sleep 5; done
cp $S/status.txt $S/prepare.log $OUT/ 2>/dev/null
cp $S/check/gpu1_pipeline.txt $OUT/pipeline.txt 2>/dev/null; cp $S/check/gpu1_pipeline.out $OUT/pipeline.out 2>/dev/null
cat $S/status.txt
grep -hE "tok/s|prequant_ttt|sliding|final|submission|eval_phase|peak" $S/check/gpu1_pipeline.txt 2>/dev/null | tail -25
