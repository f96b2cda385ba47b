"""Shared fixtures for the train_gpt.py tests (CPU, float32, tiny shapes)."""
from __future__ import annotations

import inspect
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "tests"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import train_gpt as tg  # noqa: E402

# Every environment variable train_gpt reads: the hyperparameters (parsed from read_hyperparameters' source,
# so new ones are picked up automatically) and the torchrun variables.
HPARAM_ENV = sorted(set(re.findall(r'_env\(\w+, "(\w+)"', inspect.getsource(tg.read_hyperparameters))))
DIST_ENV = ["WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"]
RETIRED_ENV = ["MLP_KERNEL"]  # old names that read_hyperparameters refuses

# A tiny configuration of the real model: 4 layers (1-2 looped), width 64, 2 query heads sharing 1 KV head.
TINY = dict(vocab_size=64, num_layers=4, model_dim=64, num_heads=2, num_kv_heads=1, loop_start=1, loop_end=2,
            parallel_residual_start=3, xsa_last_n=4, train_seq_len=32, eval_seq_len=32, eval_stride=8,
            train_batch_tokens=2048, val_batch_tokens=2048, iterations=10, max_wallclock_seconds=0.0,
            warmup_steps=0)


def child_env(**extra: str) -> dict[str, str]:
    """For a subprocess: the ambient environment without train_gpt's variables (as clean_env), plus `extra`."""
    return {k: v for k, v in os.environ.items() if k not in HPARAM_ENV + DIST_ENV + RETIRED_ENV} | extra


EXIT_ABORT = "terminate called without an active exception"


def run_torchrun(cmd: list[str], finished, reset=lambda: None, **kwargs) -> subprocess.CompletedProcess:
    """subprocess.run(cmd) of a two-rank gloo torchrun, output captured as text; run once more (after `reset()`) only
    when a rank aborted with EXIT_ABORT after `finished(run)` held, i.e. after the run's last collective. That is
    gloo's teardown race at exit, which train_gpt's barrier before destroy_process_group made rare but not impossible
    (twice in stop 23's CI runs, a torchrun test and a spawned one; never in a bare gloo program, 300 runs)."""
    for attempt in range(2):
        run = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
        if run.returncode == 0 or attempt or EXIT_ABORT not in run.stderr or not finished(run):
            return run
        reset()


def spawn_ranks(target, world_size: int, root: Path, timeout: float = 120) -> list[Path]:
    """target(rank, world_size, attempt_dir) in `world_size` spawned processes (gloo ranks), each writing
    attempt_dir/rank{rank}.pt as its last work before its teardown; returns those files. Run once more, in a fresh
    directory, only when a rank died of SIGABRT after every rank had written its file: gloo's teardown race at exit
    (as in run_torchrun)."""
    ctx = torch.multiprocessing.get_context("spawn")
    for attempt in range(2):
        out_dir = root / f"attempt{attempt}"
        out_dir.mkdir(parents=True)
        procs = [ctx.Process(target=target, args=(r, world_size, str(out_dir))) for r in range(world_size)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout)
            if p.is_alive():
                p.kill()
                p.join()
        codes, outs = [p.exitcode for p in procs], [out_dir / f"rank{r}.pt" for r in range(world_size)]
        if codes == [0] * world_size:
            return outs
        if attempt or any(c not in (0, -signal.SIGABRT) for c in codes) or not all(o.exists() for o in outs):
            break
    raise AssertionError(f"spawned ranks' exit codes: {codes}")


@pytest.fixture
def clean_env(monkeypatch):
    """Removes every variable train_gpt reads, so the ambient environment cannot leak into a test."""
    for name in HPARAM_ENV + DIST_ENV + RETIRED_ENV:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.fixture
def tiny_h(clean_env):
    """Factory: validated hyperparameters = defaults, overridden by TINY, overridden by keyword arguments."""

    def make(**overrides):
        h = tg.read_hyperparameters()
        vars(h).update({**TINY, **overrides})
        tg.validate_hyperparameters(h)
        return h

    return make


@pytest.fixture
def tiny_model(tiny_h):
    """Factory: a float32 CPU GPT with every weight perturbed (the zero-init projections would block gradients)."""

    def make(seed: int = 0, **overrides):
        torch.manual_seed(seed)
        model = tg.GPT(tiny_h(**overrides))
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p))
        return model

    return make


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """tests/tinydata.py dataset (vocab 64, 2 train shards, val shard + byte sidecar), built once. Read-only."""
    import tinydata

    return tinydata.make_dataset(tmp_path_factory.mktemp("tinydata"))


@pytest.fixture(scope="session")
def tiny_sp(tiny_data):
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_file=str(tiny_data / "tokenizers" / "fineweb_64_bpe.model"))


@pytest.fixture
def queue_gpu_work():
    """Factory: queues about 0.1-0.3 s of matmuls on the GPU and returns an event recorded after them, so a test
    can see whether a call waited for them (the event is then complete) or returned at once."""

    def queue() -> torch.cuda.Event:
        a = torch.randn(4096, 4096, device="cuda")
        torch.cuda.synchronize()
        for _ in range(100):
            a = a @ a / 64.0
        queued = torch.cuda.Event()
        queued.record()
        return queued

    return queue
