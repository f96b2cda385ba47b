"""End to end: train_gpt.main() on the tiny dataset, on the CPU, checked through its log."""
from __future__ import annotations

import math
import re

import pytest

import tinydata
import train_gpt as tg

TINY_RUN = dict(
    DATA_DIR="data", VOCAB_SIZE="64", NUM_LAYERS="4", MODEL_DIM="64", NUM_HEADS="2", NUM_KV_HEADS="1",
    LOOP_START="1", LOOP_END="2", PARALLEL_RESIDUAL_START="3", XSA_LAST_N="4", TRAIN_SEQ_LEN="64",
    EVAL_SEQ_LEN="64", EVAL_STRIDE="16", TRAIN_BATCH_TOKENS="4096", ITERATIONS="30", MAX_WALLCLOCK_SECONDS="0",
    WARMUP_STEPS="2", TRAIN_LOG_EVERY="5", VAL_BATCH_TOKENS="4096", RUN_ID="e2e",
    # Keep the post-training stages short on the CPU (defaults: 256 calibration batches, 21 TTT epochs over
    # 32K-token chunks, which the 7K-token tiny validation set would not even fill once).
    GPTQ_CALIBRATION_BATCHES="4", PREQUANT_TTT_EPOCHS="2", PREQUANT_TTT_CHUNK_TOKENS="1024",
)
NUM = r"([-+0-9.eE]+|nan|inf)"


def test_main_trains_and_evaluates_tiny_run(clean_env, tmp_path):
    """main() trains (loss falls), turns recurrence on, and logs finite pre-quant and sliding-window BPB."""
    tinydata.make_dataset(tmp_path / "data")
    clean_env.chdir(tmp_path)
    for k, v in TINY_RUN.items():
        clean_env.setenv(k, v)
    tg.main()
    text = (tmp_path / "logs" / "e2e.txt").read_text()

    losses = {int(s): float(v) for s, v in re.findall(rf"^(\d+)/30 train_loss: {NUM}", text, re.M)}
    assert {1, 5, 30} <= set(losses), text
    assert all(math.isfinite(v) for v in losses.values())
    assert losses[1] > 3.5  # about ln(64) = 4.16 at the start
    assert losses[30] < losses[1] - 1.5, losses

    assert re.search(r"^recurrence:on step:\d+ .*layers:0,1,2,1,2,1,2,3$", text, re.M), text

    pre = re.findall(rf"^pre-quantization post-ema val_loss:{NUM} val_bpb:{NUM}", text, re.M)
    assert len(pre) == 1, text
    loss, bpb = map(float, pre[0])
    assert math.isfinite(loss) and math.isfinite(bpb)
    assert 0 < loss < 2.5 and 0 < bpb < 2.5  # trained, well below the uniform 4.16 nats

    sliding = re.findall(rf"^(?:unquantized|quantized)_sliding_window val_loss:{NUM} val_bpb:{NUM}", text, re.M)
    assert sliding, text
    for s_loss, s_bpb in sliding:
        assert math.isfinite(float(s_loss)) and math.isfinite(float(s_bpb))
        assert 0 < float(s_bpb) < 2.5


def test_docstring_tiny_command_runs(clean_env, tmp_path):
    """The tiny CPU command of train_gpt's docstring, as written (only DATA_DIR moved), runs to a final score."""
    doc = tg.__doc__.split("Tiny CPU run", 1)[1].replace("\\\n", " ")
    make, run = [line.strip() for line in doc.splitlines()[1:3]]
    assert "tinydata.make_dataset('/tmp/tiny')" in make and run.endswith("python train_gpt.py"), doc
    env = dict(item.split("=", 1) for item in run.split()[:-2])
    assert env.pop("DATA_DIR") == "/tmp/tiny"
    tinydata.make_dataset(tmp_path / "tiny")
    clean_env.chdir(tmp_path)
    for k, v in {**env, "DATA_DIR": str(tmp_path / "tiny"), "RUN_ID": "doc"}.items():
        clean_env.setenv(k, v)
    tg.main()
    text = (tmp_path / "logs" / "doc.txt").read_text()
    assert re.search(rf"^final_score source:quantized_sliding_window val_bpb:{NUM} model:prequant_ttt "
                     r"leaderboard_valid:0$", text, re.M), text


def test_env_is_clean_after_e2e():
    """monkeypatch restored the environment: no tiny-run variable leaks into later tests."""
    import os

    assert os.environ.get("RUN_ID") != "e2e" and os.environ.get("DATA_DIR") != "data"
    assert tg.read_hyperparameters().vocab_size == int(os.environ.get("VOCAB_SIZE", 8192))
