"""Throughput benchmark of train_gpt.py's own training step and sliding evaluation (not a test).

    python tools/bench.py [--steps 20] [--warmup 20] [--windows 4096] [--data-dir DIR]
    torchrun --standalone --nproc_per_node=4 tools/bench.py          # per-GPU scaling

The model, optimizers, loader, step and evaluation are train_gpt's functions at the configuration the
environment gives (defaults: the record configuration; the same variables as train_gpt.py). It times
`--steps` optimizer steps without and then with recurrence, after `--warmup` untimed steps per mode (compile),
reads peak memory, then times the sliding-window evaluation (EVAL_STRIDE) of the first `--windows` windows.
Without --data-dir it trains on synthetic uniform tokens (as SPEC §9's anchors) and scores synthetic
validation tokens with a one-byte-per-token sidecar. Prints a `key:value` table on rank 0.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import train_gpt as tg  # noqa: E402
from data.shards import write_shard  # noqa: E402


def synthetic_dataset(root: Path, vocab_size: int, train_tokens: int, val_tokens: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    ds = root / "datasets" / f"fineweb10B_sp{vocab_size}"
    ds.mkdir(parents=True)
    for i in range(2):
        write_shard(ds / f"fineweb_train_{i:06d}.bin", rng.integers(0, vocab_size, train_tokens // 2))
    write_shard(ds / "fineweb_val_000000.bin", rng.integers(0, vocab_size, val_tokens))


def timed(device, fn) -> float:
    tg.synchronize(device)
    t0 = time.perf_counter()
    fn()
    tg.synchronize(device)
    return time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20, help="timed optimizer steps per mode")
    ap.add_argument("--warmup", type=int, default=20, help="untimed steps per mode before timing")
    ap.add_argument("--windows", type=int, default=4096, help="sliding-evaluation windows to time")
    ap.add_argument("--data-dir", type=Path, help="a DATA_DIR with train/val shards (default: synthetic tokens)")
    args = ap.parse_args(argv)
    h = tg.read_hyperparameters()
    d = tg.init_distributed()
    log = tg.Logger(f"bench_{h.run_id}", d.is_main)
    backend = tg.attention_backend()
    tmp = None
    if args.data_dir is None:
        tmp = tempfile.TemporaryDirectory()
        n_val = (args.windows + 2) * h.eval_stride + h.eval_seq_len + 1
        synthetic_dataset(Path(tmp.name), h.vocab_size, max(4 * h.train_batch_tokens, 1 << 20), n_val, h.seed)
        h.data_dir = tmp.name
    files = tg.dataset_files(h.data_dir, h.vocab_size, "train")
    val_tokens = torch.cat([tg.load_data_shard(f) for f in tg.dataset_files(h.data_dir, h.vocab_size, "val")])
    val = tg.ValData(tokens=val_tokens.to(torch.int32).to(d.device), luts=None,
                     sidecar=torch.ones_like(val_tokens, dtype=torch.int32).to(d.device))
    torch.manual_seed(h.seed)
    model = tg.GPT(h, backend).to(d.device)
    compiled, nll_fn = tg.maybe_compile(model, d.device), tg.maybe_compile(model.token_nll, d.device)
    optimizers = tg.build_optimizers(h, model, d)
    local_seqs = h.train_batch_tokens // (d.world_size * d.grad_accum_steps * h.train_seq_len)
    loader = tg.TrainLoader(files, h.train_seq_len, local_seqs, d.rank, d.world_size, h.seed, h.vocab_size, d.device)
    log(f"bench world_size:{d.world_size} device:{d.device} torch:{torch.__version__} attention:{backend} "
        f"batch_tokens:{h.train_batch_tokens} steps:{args.steps} warmup:{args.warmup}")
    for looping in (False, True):
        model.looping = looping

        def steps(n):
            for _ in range(n):
                tg.train_step(h, model, compiled, optimizers, loader, d, 0, 1.0)

        steps(args.warmup)
        seconds = timed(d.device, lambda: steps(args.steps))
        tps = args.steps * h.train_batch_tokens / seconds
        log(f"train recurrence:{int(looping)} step_ms:{1000 * seconds / args.steps:.1f} tok/s:{tps:.0f} "
            f"tok/s_per_gpu:{tps / d.world_size:.0f}")
    if d.device.type == "cuda":
        log(f"peak_memory_allocated_mib:{torch.cuda.max_memory_allocated() // 2**20}")
    model.looping = h.num_loops > 0
    plan = tg.window_plan(val.tokens.numel() - 1, h.eval_seq_len, h.eval_stride)[1 : args.windows + 1]
    mine = plan[d.rank :: d.world_size]
    tg.score_windows(h, nll_fn, val, mine[: max(1, len(mine) // 8)], h.eval_stride, d)  # compile
    seconds = timed(d.device, lambda: tg.score_windows(h, nll_fn, val, mine, h.eval_stride, d))
    log(f"sliding_eval windows:{len(plan)} stride:{h.eval_stride} time_ms:{1000 * seconds:.0f} "
        f"windows/s:{len(plan) / seconds:.0f} tok/s:{len(plan) * h.eval_seq_len / seconds:.0f}")
    if tmp is not None:
        tmp.cleanup()
    if tg.distributed():
        tg.dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
