#!/usr/bin/env bash
# Not run yet (stop 24 ran out of device time): apply LR_flash2_last_rows.patch to the working tree first.
# 1xH100, SDPA only: the final block's last-rows attention through PyTorch's FlashAttention 2 op (working tree)
# against last_rows_attention's materialised fp32 scores (6679620, `git show 6679620:train_gpt.py >
# .exp/base_6679620.py`, carried). tools/bench.py --steps 0 --windows 4096 for each tree in its own process (two
# rounds, alternated), nllab.py's NLLs of both trees, and the patch's GPU test.
S=$OUT; export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,clocks.max.sm,power.limit --format=csv,noheader > $S/gpu.txt
mkdir -p /tmp/wn /tmp/wb && cp -r train_gpt.py tools data /tmp/wn/ && cp -r tools data /tmp/wb/ \
  && cp .exp/base_6679620.py /tmp/wb/train_gpt.py
ab() { for t in wb wn; do
  (cd /tmp/$t && TORCHINDUCTOR_CACHE_DIR=/tmp/ind_$t timeout 100 python3 tools/bench.py --steps 0 --windows 4096) \
    > $S/bench_${t}_$1.txt 2>&1
  echo "bench tree:$t round:$1 rc=$? $(grep -h '^sliding_eval' $S/bench_${t}_$1.txt)" | tee -a $S/status.txt
done; }
ab 1
for t in base:.exp/base_6679620.py new:train_gpt.py; do
  timeout 100 python3 logs/bench/patches/nllab.py ${t#*:} /tmp/nll_${t%%:*}.pt >> $S/nllab.txt 2>&1
done
python3 logs/bench/patches/nllab.py --compare /tmp/nll_base.pt /tmp/nll_new.pt >> $S/nllab.txt 2>&1; cat $S/nllab.txt
timeout 60 python3 -m pytest -q -p no:cacheprovider tests/test_train_model.py -k "last_rows" > $S/tests.txt 2>&1
tail -n 2 $S/tests.txt
ab 2
