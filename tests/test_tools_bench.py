"""tools/bench.py runs train_gpt's real step and sliding evaluation and prints its figures."""
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TINY = dict(VOCAB_SIZE="64", NUM_LAYERS="4", MODEL_DIM="64", NUM_HEADS="2", NUM_KV_HEADS="1", LOOP_START="1",
            LOOP_END="2", PARALLEL_RESIDUAL_START="3", XSA_LAST_N="4", TRAIN_SEQ_LEN="64", EVAL_SEQ_LEN="64",
            EVAL_STRIDE="16", TRAIN_BATCH_TOKENS="4096", VAL_BATCH_TOKENS="4096", RUN_ID="bench_test")


def test_bench_prints_train_and_eval_figures(tmp_path):
    """Both recurrence modes get a positive tokens/s, and the sliding evaluation times the asked windows."""
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")} | TINY
    out = subprocess.run([sys.executable, str(ROOT / "tools" / "bench.py"), "--steps", "2", "--warmup", "1",
                          "--windows", "40"], env=env, cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    rates = {int(m[1]): float(m[2]) for m in re.finditer(r"train recurrence:(\d) step_ms:\S+ tok/s:(\d+)", out)}
    assert set(rates) == {0, 1} and all(r > 0 for r in rates.values())
    assert re.search(r"sliding_eval windows:40 stride:16 time_ms:\d+", out)
    assert (tmp_path / "logs" / "bench_bench_test.txt").read_text() == out
