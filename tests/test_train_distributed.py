"""Two CPU processes on gloo run the real training path and end with identical weights on both ranks; the test
harness retries such runs only after gloo's abort at exit (conftest.run_torchrun, spawn_ranks)."""
import os
import re
import sys
from pathlib import Path

import pytest
import torch

from conftest import child_env, run_torchrun, spawn_ranks

ROOT = Path(__file__).resolve().parent.parent

TINY = dict(VOCAB_SIZE="64", NUM_LAYERS="4", MODEL_DIM="64", NUM_HEADS="2", NUM_KV_HEADS="1", LOOP_START="1",
            LOOP_END="2", PARALLEL_RESIDUAL_START="3", XSA_LAST_N="4", TRAIN_SEQ_LEN="64", EVAL_SEQ_LEN="64",
            EVAL_STRIDE="32", TRAIN_BATCH_TOKENS="4096", VAL_BATCH_TOKENS="4096", ITERATIONS="1000",
            MAX_WALLCLOCK_SECONDS="3", GPTQ_RESERVE_SECONDS="1", WARMUP_STEPS="1", TRAIN_LOG_EVERY="5",
            VAL_LOSS_EVERY="0", PREQUANT_TTT_EPOCHS="1", PREQUANT_TTT_CHUNK_TOKENS="1024", TTT_ENABLED="1",
            TTT_CHUNK_TOKENS="1024", GPTQ_CALIBRATION_BATCHES="4", RUN_ID="two_ranks", OMP_NUM_THREADS="1")


def run_two_ranks(tmp_path, tiny_data, *script: str, **env) -> None:
    """torchrun of `script` on two gloo ranks in tmp_path, at the tiny configuration overridden by `env`; on the CPU
    even where a GPU is (two ranks need two). Run once more, with a fresh log, only after an abort at exit that
    followed the final score (conftest.run_torchrun)."""
    env = TINY | {"DATA_DIR": str(tiny_data), "CUDA_VISIBLE_DEVICES": ""} | env
    log = tmp_path / "logs" / f"{env['RUN_ID']}.txt"
    run = run_torchrun([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *script],
                       lambda _: log.exists() and re.search(r"^final_score ", log.read_text(), re.M) is not None,
                       log.unlink, env=child_env(**env), cwd=tmp_path, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]


def test_two_ranks_agree_and_finish(tiny_data, tmp_path):
    """Muon sharding, gradient sync and the agreed clock keep ranks identical; the run stops on the wallclock cap
    and ends with the reloaded artifact scored."""
    run_two_ranks(tmp_path, tiny_data, str(ROOT / "train_gpt.py"))
    log = (tmp_path / "logs" / "two_ranks.txt").read_text()
    assert "world_size:2 grad_accum_steps:4" in log
    assert "stopping_early: wallclock_cap" in log and "ranks_agree:1" in log
    assert "quantized_ttt val_loss:" in log and "final_score source:quantized_ttt" in log


DELAYED = """
import os, sys, time
sys.path.insert(0, sys.argv[1])
import train_gpt as tg
original = tg.warm_up_eval_graphs
def slow_on_rank_1(*args, **kwargs):  # a rank that ends its compile warm-up 3 s after the other
    original(*args, **kwargs)
    if os.environ["RANK"] == "1":
        time.sleep(3)
tg.warm_up_eval_graphs = slow_on_rank_1
tg.main()
"""


def test_clocks_start_when_every_rank_is_ready(tiny_data, tmp_path):
    """A rank that finishes warming up late delays the start of the training clock and of a resumed run's
    evaluation clock instead of being counted on them: the first step and the first evaluation stay short."""
    (tmp_path / "delayed.py").write_text(DELAYED)
    env = dict(ITERATIONS="3", MAX_WALLCLOCK_SECONDS="0", TRAIN_LOG_EVERY="1", PREQUANT_TTT_ENABLED="0",
               TTT_ENABLED="0", SLIDING_WINDOW_ENABLED="0", RUN_ID="late_rank")
    for extra in ({}, {"RESUME_CHECKPOINT": "final_model.pt", "RUN_ID": "late_rank_resumed"}):
        run_two_ranks(tmp_path, tiny_data, "delayed.py", str(ROOT), **env | extra)
    log = (tmp_path / "logs" / "late_rank.txt").read_text()
    first_step = re.search(r"^1/3 train_loss: \S+ train_time: \S+ step_avg: ([\d.]+)ms", log, re.M)
    assert first_step and float(first_step.group(1)) < 2000, log
    resumed = (tmp_path / "logs" / "late_rank_resumed.txt").read_text()
    compiled = re.search(r"^eval_graphs_compiled time:(\d+)ms", resumed, re.M)
    first_eval = re.search(r"^pre-quantization post-ema val_loss:\S+ val_bpb:\S+ eval_time:(\d+)ms", resumed, re.M)
    assert compiled and int(compiled.group(1)) >= 3000, resumed  # the wait is counted before the clock
    assert first_eval and int(first_eval.group(1)) < 2000, resumed


FLAKY = """
import os, sys, time
from pathlib import Path
rank, log = os.environ["RANK"], Path("logs") / (os.environ["RUN_ID"] + ".txt")
Path(f"attempt_{rank}_{len(list(Path('.').glob(f'attempt_{rank}_*')))}").touch()
if rank == "0" and sys.argv[1] == "finished":
    log.parent.mkdir(exist_ok=True)
    log.write_text("final_score source:quantized val_bpb:1.0\\n")
if rank == "1" and not Path("attempt_1_1").exists():  # the first attempt's rank 1 aborts (after the log, if any)
    for _ in range(100):
        if log.exists() or sys.argv[1] != "finished":
            break
        time.sleep(0.1)
    sys.stderr.write("terminate called without an active exception\\n")
    sys.stderr.flush()
    os.abort()
"""


def test_two_rank_runs_are_retried_only_after_the_final_score(tiny_data, tmp_path):
    """An abort at exit after the final score is logged is run once more; one before it fails the test at once."""
    (tmp_path / "flaky.py").write_text(FLAKY)
    run_two_ranks(tmp_path, tiny_data, "flaky.py", "finished", RUN_ID="flaky")
    assert sorted(p.name for p in tmp_path.glob("attempt_*")) == ["attempt_0_0", "attempt_0_1", "attempt_1_0",
                                                                 "attempt_1_1"]
    other = tmp_path / "mid_run"
    other.mkdir()
    (other / "flaky.py").write_text(FLAKY)
    with pytest.raises(AssertionError, match="terminate called"):
        run_two_ranks(other, tiny_data, "flaky.py", "unfinished", RUN_ID="flaky")
    assert sorted(p.name for p in other.glob("attempt_1_*")) == ["attempt_1_0"]


def _aborting_rank(rank: int, world_size: int, out_dir: str) -> None:
    """A stand-in rank for spawn_ranks: in the first attempt rank 1 aborts, after its file under a "late" root and
    before it otherwise."""
    late, first = "late" in out_dir, out_dir.endswith("attempt0")
    if rank == 0 or late:
        torch.save(rank, os.path.join(out_dir, f"rank{rank}.pt"))
    if rank == 1 and first:
        os.abort()
    if rank == 1 and not late:
        torch.save(rank, os.path.join(out_dir, f"rank{rank}.pt"))


def test_spawned_ranks_are_retried_only_after_every_output(tmp_path):
    """An abort after every rank's output runs the ranks once more; one before a rank's output fails at once."""
    outs = spawn_ranks(_aborting_rank, 2, tmp_path / "late")
    assert [o.parent.name for o in outs] == ["attempt1", "attempt1"] and [torch.load(o) for o in outs] == [0, 1]
    with pytest.raises(AssertionError, match="exit codes: \\[0, -6\\]"):
        spawn_ranks(_aborting_rank, 2, tmp_path / "early")
    assert not (tmp_path / "early" / "attempt1").exists()
