"""Sliding-evaluation time of score_windows with the window table built through pinned memory (new) against
torch.tensor(..., device=cuda) (old, synchronising), same compiled model, alternating A/B, at two batch sizes."""
import inspect, os, sys, time
import torch
sys.path.insert(0, os.getcwd())
import train_gpt as tg

h = tg.read_hyperparameters()
dev = torch.device("cuda")
d = tg.Dist(rank=0, world_size=1, local_rank=0, device=dev, is_main=True, grad_accum_steps=8)
torch.manual_seed(0)
model = tg.GPT(h).to(dev)
model.looping = True
nll_fn = tg.maybe_compile(model.token_nll, dev)
n = 4200 * h.eval_stride + h.eval_seq_len + 1
tokens = torch.randint(0, h.vocab_size, (n,), device=dev, dtype=torch.int32)
val = tg.ValData(tokens=tokens, luts=None, sidecar=torch.ones_like(tokens))
plan = tg.window_plan(n - 1, h.eval_seq_len, h.eval_stride)[1:4097]
src = inspect.getsource(tg.score_windows)
new_line = "w = torch.tensor(chunk, pin_memory=tokens.is_cuda).to(tokens.device, non_blocking=True)"
assert new_line in src
ns = dict(vars(tg))
exec(src.replace(new_line, "w = torch.tensor(chunk, device=tokens.device)"), ns)
variants = {"old": ns["score_windows"], "new": tg.score_windows}
for vbt in (65536, 524288):  # rows per call: 32 (what each of 8 ranks gets at the default) and 256 (1 GPU default)
    h.val_batch_tokens = vbt
    rows = tg.eval_rows(h, d, h.eval_stride)
    res = {}
    for name, fn in variants.items():
        fn(h, nll_fn, val, plan[:rows * 4], h.eval_stride, d)  # compile / warm
    tg.synchronize(dev)
    for rep in range(3):
        for name, fn in variants.items():
            t0 = time.perf_counter()
            stats = fn(h, nll_fn, val, plan, h.eval_stride, d)
            tg.synchronize(dev)
            res.setdefault(name, []).append(1000 * (time.perf_counter() - t0))
            res.setdefault(name + "_stats", stats.tolist())
    for name in variants:
        t = sorted(res[name])
        print(f"evalsync rows:{rows} windows:{len(plan)} variant:{name} ms:{' '.join(f'{x:.0f}' for x in res[name])} "
              f"median_ms:{t[len(t) // 2]:.0f}")
    print(f"evalsync rows:{rows} same_sums:{res['old_stats'] == res['new_stats']}")
