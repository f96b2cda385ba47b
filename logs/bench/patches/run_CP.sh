#!/usr/bin/env bash
# 1xH100, SDPA only: the scoring graph with one view of each block's input for q and k (working tree) against
# 6821f39 (a view per custom op: Inductor stored the normed input three times per block). nllab.py: the trees'
# scoring NLLs at random weights, bit for bit; tools/bench.py --steps 0 --windows 4096 for each tree in its own
# process, two rounds alternated; dupstores.py on each tree's generated scoring code.
# Call CP2 (run_CP.sh CP2): the working tree also takes v from the same view (dupstores found block 0's kernel still
# writing its input three times in CP); cand1 = CP's tree (.exp/cand1_x2qk.py) in the first round; the generated
# code of each tree comes back.
S=$OUT; export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,clocks.max.sm,power.limit --format=csv,noheader > $S/gpu.txt
for t in base:.exp/base_6821f39.py new:train_gpt.py; do
  timeout 150 python3 logs/bench/patches/nllab.py ${t#*:} /tmp/nll_${t%%:*}.pt >> $S/nllab.txt 2>&1
done
python3 logs/bench/patches/nllab.py --compare /tmp/nll_base.pt /tmp/nll_new.pt >> $S/nllab.txt 2>&1
mkdir -p /tmp/wn /tmp/wb && cp -r train_gpt.py tools data /tmp/wn/ && cp -r tools data /tmp/wb/ \
  && cp .exp/base_6821f39.py /tmp/wb/train_gpt.py
[ "$1" = CP2 ] && mkdir -p /tmp/w1 && cp -r tools data /tmp/w1/ && cp .exp/cand1_x2qk.py /tmp/w1/train_gpt.py
for r in 1 2; do for t in wb wn $([ "$1" = CP2 ] && [ $r = 1 ] && echo w1); do
  (cd /tmp/$t && TORCHINDUCTOR_CACHE_DIR=/tmp/ind_$t timeout 150 python3 tools/bench.py --steps 0 --windows 4096) \
    > $S/bench_${t}_$r.txt 2>&1
  echo "bench tree:$t round:$r rc=$? $(grep -h '^sliding_eval' $S/bench_${t}_$r.txt)" >> $S/status.txt
done; done
for t in wb wn $([ "$1" = CP2 ] && echo w1); do
  [ "$1" = CP2 ] && mkdir -p $S/code_$t && cp $(grep -rl "async_compile" /tmp/ind_$t --include=*.py) $S/code_$t/
  python3 logs/bench/patches/dupstores.py $(grep -rl "async_compile" /tmp/ind_$t --include=*.py) > $S/dupstores_$t.txt 2>&1
done
cat $S/status.txt $S/nllab.txt; for f in $S/dupstores_*.txt; do tail -n 1 $f; done
# at most 8 files come back from a call: everything in one archive
cd $S && tar czf all.tgz --exclude=all.tgz . && find . -mindepth 1 ! -name all.tgz -delete
