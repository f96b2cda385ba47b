"""Two CPU processes on gloo run the real training path and end with identical weights on both ranks."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

TINY = dict(VOCAB_SIZE="64", NUM_LAYERS="4", MODEL_DIM="64", NUM_HEADS="2", NUM_KV_HEADS="1", LOOP_START="1",
            LOOP_END="2", PARALLEL_RESIDUAL_START="3", XSA_LAST_N="4", TRAIN_SEQ_LEN="64", EVAL_SEQ_LEN="64",
            EVAL_STRIDE="32", TRAIN_BATCH_TOKENS="4096", VAL_BATCH_TOKENS="4096", ITERATIONS="1000",
            MAX_WALLCLOCK_SECONDS="3", GPTQ_RESERVE_SECONDS="1", WARMUP_STEPS="1", TRAIN_LOG_EVERY="5",
            VAL_LOSS_EVERY="0", PREQUANT_TTT_EPOCHS="1", PREQUANT_TTT_CHUNK_TOKENS="1024", TTT_ENABLED="1",
            TTT_CHUNK_TOKENS="1024", GPTQ_CALIBRATION_BATCHES="4", RUN_ID="two_ranks", OMP_NUM_THREADS="1")


def test_two_ranks_agree_and_finish(tiny_data, tmp_path):
    """Muon sharding, gradient sync and the agreed clock keep ranks identical; the run stops on the wallclock cap
    and ends with the reloaded artifact scored."""
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env |= TINY | {"DATA_DIR": str(tiny_data)}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          str(ROOT / "train_gpt.py")], env=env, cwd=tmp_path, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    log = (tmp_path / "logs" / "two_ranks.txt").read_text()
    assert "world_size:2 grad_accum_steps:4" in log
    assert "stopping_early: wallclock_cap" in log and "ranks_agree:1" in log
    assert "quantized_ttt val_loss:" in log and "final_score source:quantized_ttt" in log
