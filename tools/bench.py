"""Throughput benchmark of train_gpt.py's own training step and sliding evaluation (not a test).

    python tools/bench.py [--steps 20] [--warmup 20] [--windows 4096] [--data-dir DIR] [--profile 3] [--ttt-chunks 20]
    torchrun --standalone --nproc_per_node=4 tools/bench.py          # per-GPU scaling

The model, optimizers, loader, step and evaluation are train_gpt's functions at the configuration the
environment gives (defaults: the record configuration; the same variables as train_gpt.py). It times
`--steps` optimizer steps without and then with recurrence, after `--warmup` untimed steps per mode (compile),
each with the training loop's per-step bookkeeping (the agreed clock and the EMA update), checks with several
ranks that every rank holds the same weights (`ranks_agree:`), reads peak memory, then times the sliding-window
evaluation (EVAL_STRIDE) of the first `--windows` windows. `--steps 0` skips the training and its compile: the
evaluation and TTT then run at the initial weights (zero output projections), so use it to compare two trees'
scoring speed, each in its own process (custom ops are registered once per process), not for absolute figures.
Without --data-dir it trains on synthetic uniform tokens (as SPEC §9's anchors) and scores synthetic
validation tokens with a one-byte-per-token sidecar. Prints a `key:value` table on rank 0, including the loss of
every timed step (`losses recurrence:…`), so that two versions run at one SEED on real text (--data-dir) can be
compared step by step. `--profile K` profiles K more steps per mode (CUDA only) and prints where the GPU time
goes: per category (matmul, attention, compiled/Triton kernels, other aten kernels, copies, communication) and
the top kernels, in ms per step; then the same for one more run of the sliding evaluation (`profile sliding_eval`,
ms per run). `--windows 0` skips the evaluation timing. `--ttt-chunks N` then times pre-quant TTT (train_gpt's
`prequant_ttt`, one epoch) on N validation chunks per rank, after one untimed chunk (compile); it runs last, as it
trains on them. Like train_gpt.py, it writes its lines to logs/bench_<RUN_ID>.txt under the working directory, so
run it from a scratch folder.
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
    tg.wait_for_ranks(device)  # as the trainer's clocks: a rank still busy from before is not timed on the others
    t0 = time.perf_counter()
    fn()
    tg.synchronize(device)
    return time.perf_counter() - t0


KERNEL_CATEGORIES = (  # first match wins; names as CUDA kernels are reported by the profiler
    ("attention", ("flash", "fmha", "attention", "cudnn")),
    ("matmul", ("gemm", "cutlass", "nvjet", "xmma", "cublas", "sm90_", "xsa_res")),  # with train_gpt's Triton products
    ("communication", ("nccl",)),
    ("compiled", ("triton",)),
    ("copy", ("memcpy", "memset")),
)


def kernel_category(name: str) -> str:
    low = name.lower()
    return next((cat for cat, keys in KERNEL_CATEGORIES if any(k in low for k in keys)), "other")


def kernel_times(prof) -> dict[str, tuple[float, int]]:
    """(total self device µs, launches) of each CUDA kernel/copy name in a finished torch.profiler run."""
    out: dict[str, tuple[float, int]] = {}
    for evt in prof.key_averages():
        if evt.device_type == torch.autograd.DeviceType.CUDA:
            us, n = out.get(evt.key, (0.0, 0))
            out[evt.key] = (us + evt.self_device_time_total, n + evt.count)
    return out


def kernel_gaps(prof) -> list[tuple[float, str, str]]:
    """(idle µs, kernel before, kernel after) for every gap between consecutive CUDA kernels/copies."""
    spans = sorted((e.time_range.start, e.time_range.end, e.name) for e in prof.events()
                   if e.device_type == torch.autograd.DeviceType.CUDA)
    out, end, before = [], None, ""
    for start, stop, name in spans:
        if end is not None and start > end:
            out.append((start - end, before, name))
        if end is None or stop >= end:
            end, before = stop, name
    return out


def gap_report(log, label: str, gaps: list[tuple[float, str, str]], steps: int, top: int = 8,
               unit: str = "step") -> None:
    """The GPU's idle time between kernels: total, and the largest gaps with their neighbours."""
    total = sum(g for g, _, _ in gaps)
    big = [g for g, _, _ in gaps if g >= 50]
    log(f"profile {label} idle_ms_per_{unit}:{total / 1000 / steps:.1f} "
        f"gaps_over_50us_per_{unit}:{len(big) / steps:.1f} their_ms_per_{unit}:{sum(big) / 1000 / steps:.1f}")
    for g, before, after in sorted(gaps, reverse=True)[:top]:
        log(f"profile {label} gap_us:{g:.0f} after:{before[:70]} before:{after[:70]}")


def profile_report(log, label: str, times: dict[str, tuple[float, int]], steps: int, wall_s: float,
                   top: int = 30, unit: str = "step") -> None:
    """GPU time per category and of the top kernels, per `unit` (`steps` of them profiled); lines start `profile LABEL`."""
    busy = sum(us for us, _ in times.values())
    cats: dict[str, float] = {}
    for name, (us, _) in times.items():
        cat = kernel_category(name)
        cats[cat] = cats.get(cat, 0.0) + us
    log(f"profile {label} {unit}s:{steps} wall_ms_per_{unit}:{1000 * wall_s / steps:.1f} "
        f"gpu_busy_ms_per_{unit}:{busy / 1000 / steps:.1f}")
    for cat, us in sorted(cats.items(), key=lambda kv: -kv[1]):
        log(f"profile {label} category:{cat} ms_per_{unit}:{us / 1000 / steps:.1f} share:{100 * us / busy:.1f}%")
    for name, (us, n) in sorted(times.items(), key=lambda kv: -kv[1][0])[:top]:
        log(f"profile {label} kernel_ms_per_{unit}:{us / 1000 / steps:.2f} "
            f"share:{100 * us / busy:.1f}% calls_per_{unit}:{n / steps:g} us_per_call:{us / n:.1f} "
            f"[{kernel_category(name)}] {name[:150]}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20, help="timed optimizer steps per mode (0: no training)")
    ap.add_argument("--warmup", type=int, default=20, help="untimed steps per mode before timing")
    ap.add_argument("--windows", type=int, default=4096, help="sliding-evaluation windows to time")
    ap.add_argument("--data-dir", type=Path, help="a DATA_DIR with train/val shards (default: synthetic tokens)")
    ap.add_argument("--profile", type=int, default=0, help="profile this many extra steps per mode (CUDA only)")
    ap.add_argument("--ttt-chunks", type=int, default=0, help="pre-quant TTT chunks per rank to time (last)")
    args = ap.parse_args(argv)
    h = tg.read_hyperparameters()
    d = tg.init_distributed()
    log = tg.Logger(f"bench_{h.run_id}", d.is_main)
    backend, kern = tg.attention_backend(h.attention), tg.kernels(h.kernels)
    tmp, need_ttt = None, ttt_tokens(h, d, args.ttt_chunks)
    if args.data_dir is not None:
        h.data_dir = str(args.data_dir)
    else:
        tmp = tempfile.TemporaryDirectory()
        n_val = max((args.windows + 2) * h.eval_stride + h.eval_seq_len, need_ttt) + 1
        synthetic_dataset(Path(tmp.name), h.vocab_size, max(4 * h.train_batch_tokens, 1 << 20), n_val, h.seed)
        h.data_dir = tmp.name
    files = tg.dataset_files(h.data_dir, h.vocab_size, "train")
    val_tokens = torch.cat([tg.load_data_shard(f) for f in tg.dataset_files(h.data_dir, h.vocab_size, "val")])
    if val_tokens.numel() - 1 < need_ttt:
        raise SystemExit(f"--ttt-chunks {args.ttt_chunks}: needs {need_ttt + 1} validation "
                         f"tokens ({args.ttt_chunks} chunks of {h.prequant_ttt_chunk_tokens} per rank, plus one), "
                         f"{h.data_dir} has {val_tokens.numel()}")
    val = tg.ValData(tokens=val_tokens.to(torch.int32).to(d.device), luts=None,
                     sidecar=torch.ones_like(val_tokens, dtype=torch.int32).to(d.device))
    torch.manual_seed(h.seed)
    model = tg.GPT(h, backend, kern).to(d.device)
    compiled, nll_fn = tg.maybe_compile(model, d.device), tg.maybe_compile(model.token_nll, d.device)
    optimizers = tg.build_optimizers(h, model, d)
    local_seqs = h.train_batch_tokens // (d.world_size * d.grad_accum_steps * h.train_seq_len)
    loader = tg.TrainLoader(files, h.train_seq_len, local_seqs, d.rank, d.world_size, h.seed, h.vocab_size, d.device)
    log(f"bench world_size:{d.world_size} device:{d.device} torch:{torch.__version__} attention:{backend} "
        f"kernels:{kern} batch_tokens:{h.train_batch_tokens} steps:{args.steps} warmup:{args.warmup}")
    clock, ema, t_start = tg.AgreedClock(d.device), tg.EMA(model), time.perf_counter()
    for looping in (False, True) if args.steps > 0 else ():  # --steps 0: scoring (and TTT) alone, at the init weights
        model.looping = looping
        losses = []

        def steps(n):
            for _ in range(n):
                clock.update(1000 * (time.perf_counter() - t_start))
                losses.append(tg.train_step(h, model, compiled, optimizers, loader, d, 0, 1.0))
                ema.update(0, h.ema_decay)

        steps(args.warmup)
        losses.clear()
        seconds = timed(d.device, lambda: steps(args.steps))
        tps = args.steps * h.train_batch_tokens / seconds
        log(f"train recurrence:{int(looping)} step_ms:{1000 * seconds / args.steps:.1f} tok/s:{tps:.0f} "
            f"tok/s_per_gpu:{tps / d.world_size:.0f}")
        log(f"losses recurrence:{int(looping)} " + " ".join(f"{v:.4f}" for v in torch.stack(losses).tolist()))
        if args.profile > 0 and d.device.type == "cuda":
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
                wall = timed(d.device, lambda: steps(args.profile))
            profile_report(log, f"recurrence:{int(looping)}", kernel_times(prof), args.profile, wall)
            gap_report(log, f"recurrence:{int(looping)}", kernel_gaps(prof), args.profile)
    if d.world_size > 1:  # the optimizers' collectives must leave every rank with the same weights
        log(f"ranks_agree:{int(tg.ranks_agree(list(model.parameters())))}")
    if d.device.type == "cuda":
        log(f"peak_memory_allocated_mib:{torch.cuda.max_memory_allocated() // 2**20} "
            f"alloc_retries:{torch.cuda.memory_stats().get('num_alloc_retries', 0)}")
    if args.windows > 0:
        model.looping = h.num_loops > 0
        plan = tg.window_plan(val.tokens.numel() - 1, h.eval_seq_len, h.eval_stride)[1 : args.windows + 1]
        mine = plan[d.rank :: d.world_size]
        tg.score_windows(h, nll_fn, val, mine[: max(1, len(mine) // 8)], h.eval_stride, d)  # compile
        seconds = timed(d.device, lambda: tg.score_windows(h, nll_fn, val, mine, h.eval_stride, d))
        log(f"sliding_eval windows:{len(plan)} stride:{h.eval_stride} time_ms:{1000 * seconds:.0f} "
            f"windows/s:{len(plan) / seconds:.0f} tok/s:{len(plan) * h.eval_seq_len / seconds:.0f}")
        if args.profile > 0 and d.device.type == "cuda":  # one more run over the same windows, profiled
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
                wall = timed(d.device, lambda: tg.score_windows(h, nll_fn, val, mine, h.eval_stride, d))
            profile_report(log, "sliding_eval", kernel_times(prof), 1, wall, unit="run")
            gap_report(log, "sliding_eval", kernel_gaps(prof), 1, unit="run")
    if args.ttt_chunks > 0:
        h.prequant_ttt_epochs = 1
        for n in (1, args.ttt_chunks):  # the first compiles the TTT graph
            chunks = tg.ValData(tokens=val.tokens[: ttt_tokens(h, d, n) + 1], sidecar=None, luts=None)
            seconds = timed(d.device, lambda: tg.prequant_ttt(h, model, compiled, chunks, d, log))
        log(f"prequant_ttt_bench chunks_per_rank:{args.ttt_chunks} chunk_tokens:{h.prequant_ttt_chunk_tokens} "
            f"ms_per_chunk:{1000 * seconds / args.ttt_chunks:.1f}")
    return finish(tmp)


def ttt_tokens(h, d, chunks_per_rank: int) -> int:
    """Validation tokens that give every rank `chunks_per_rank` pre-quant TTT chunks."""
    return chunks_per_rank * d.world_size * h.prequant_ttt_chunk_tokens


def finish(tmp) -> int:
    if tmp is not None:
        tmp.cleanup()
    tg.shut_down_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
