"""Sliding-evaluation time of token_nll with the final block on the scored positions only (new) against slicing the
whole sequence's hidden states (old), same compiled model (weights perturbed from their init, recurrence on),
alternating A/B, at 32 and 256 windows per call."""
import os, sys, time
import torch
sys.path.insert(0, os.getcwd())
import train_gpt as tg

h = tg.read_hyperparameters()
dev = torch.device("cuda")
d = tg.Dist(rank=0, world_size=1, local_rank=0, device=dev, is_main=True, grad_accum_steps=8)
torch.manual_seed(0)
model = tg.GPT(h).to(dev)
with torch.no_grad():
    for p in model.parameters():
        p.add_(0.02 * torch.randn_like(p))
model.looping = True
variants = {"old": tg.maybe_compile(lambda idx, y, last: model.nll(model.hidden(idx)[:, -last:], y[:, -last:]), dev),
            "new": tg.maybe_compile(model.token_nll, dev)}
n = 4200 * h.eval_stride + h.eval_seq_len + 1
tokens = torch.randint(0, h.vocab_size, (n,), device=dev, dtype=torch.int32)
val = tg.ValData(tokens=tokens, luts=None, sidecar=torch.ones_like(tokens))
plan = tg.window_plan(n - 1, h.eval_seq_len, h.eval_stride)[1:4097]
for vbt in (65536, 524288):  # rows per call: 32 (each of 8 ranks at the default) and 256 (1 GPU)
    h.val_batch_tokens = vbt
    rows = tg.eval_rows(h, d, h.eval_stride)
    res = {}
    for name, fn in variants.items():
        tg.score_windows(h, fn, val, plan[: rows * 4], h.eval_stride, d)  # compile / warm
    tg.synchronize(dev)
    for rep in range(3):
        for name, fn in variants.items():
            t0 = time.perf_counter()
            stats = tg.score_windows(h, fn, val, plan, h.eval_stride, d)
            tg.synchronize(dev)
            res.setdefault(name, []).append(1000 * (time.perf_counter() - t0))
            res.setdefault(name + "_stats", stats.tolist())
    for name in variants:
        t = sorted(res[name])
        print(f"evaltail rows:{rows} windows:{len(plan)} variant:{name} ms:{' '.join(f'{x:.0f}' for x in res[name])} "
              f"median_ms:{t[1]:.0f} mean_nll:{res[name + '_stats'][0] / res[name + '_stats'][1]:.8f}")
