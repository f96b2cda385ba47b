"""Microbenchmark: FlashAttention-4 (custom op) against train_gpt's SDPA (cuDNN) attention at the record's shapes.
Prints max differences of outputs and gradients, and median ms (CUDA events) of forward and forward+backward."""
import statistics, sys, time
import torch
import torch.nn.functional as F
sys.path.insert(0, sys.argv[1]); sys.path.insert(0, sys.argv[2])
import train_gpt as tg
import fa4op

dev = torch.device("cuda")
print("fa4ab device:", torch.cuda.get_device_name(), "torch", torch.__version__, flush=True)


def med_ms(fn, reps=20, warm=3):
    for _ in range(warm):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record(); fn(); b.record(); torch.cuda.synchronize(); ts.append(a.elapsed_time(b))
    return statistics.median(ts)


def make(B, Tq, T, H=8, Hkv=4, D=64, grad=False):
    g = torch.Generator(device=dev).manual_seed(0)
    q = torch.randn(B, Tq, H, D, device=dev, dtype=torch.bfloat16, generator=g)
    k = torch.randn(B, T, Hkv, D, device=dev, dtype=torch.bfloat16, generator=g)
    v = torch.randn(B, T, Hkv, D, device=dev, dtype=torch.bfloat16, generator=g)
    return [t.requires_grad_(grad) for t in (q, k, v)]


def sdpa(q, k, v):
    return tg.causal_attention(q, k, v, "sdpa")


t0 = time.time()
q, k, v = make(4, 2048, 2048, grad=True)
for name, fn in (("sdpa", sdpa), ("fa4", fa4op.attention)):
    out = fn(q, k, v); go = torch.randn_like(out); out.backward(go)
    res = (out.detach().float(), q.grad.float(), k.grad.float(), v.grad.float()); q.grad = k.grad = v.grad = None
    if name == "sdpa":
        ref = res
    else:
        for n, a, b in zip(("out", "dq", "dk", "dv"), res, ref):
            print(f"fa4ab diff {n} max_abs:{(a - b).abs().max().item():.3e} ref_max:{b.abs().max().item():.3e} "
                  f"rel_l2:{((a - b).norm() / b.norm()).item():.3e}", flush=True)
print(f"fa4ab first_calls_s:{time.time() - t0:.1f}", flush=True)
qs, ks, vs = make(4, 64, 2048)
a, b = sdpa(qs, ks, vs).float(), fa4op.attention(qs, ks, vs).float()
print(f"fa4ab diff last_rows max_abs:{(a - b).abs().max().item():.3e} rel_l2:{((a - b).norm() / b.norm()).item():.3e}")

cf = torch.compile(lambda q, k, v: fa4op.attention(q, k, v).float().square().sum(), fullgraph=True)
q, k, v = make(4, 2048, 2048, grad=True)
cf(q, k, v).backward()
print("fa4ab compiled_fullgraph_ok grad_norm_q:", q.grad.float().norm().item(), flush=True)

for label, (B, Tq, T, grad) in {"train_fwd_bwd B48": (48, 2048, 2048, True), "eval_fwd B256": (256, 2048, 2048, False),
                                 "eval_last64 B256": (256, 64, 2048, False)}.items():
    q, k, v = make(B, Tq, T, grad=grad)
    go = torch.randn(B, Tq, 8, 64, device=dev, dtype=torch.bfloat16)
    for name, fn in (("sdpa", sdpa), ("fa4", fa4op.attention)):
        if grad:
            fwd = med_ms(lambda: fn(q, k, v))
            both = med_ms(lambda: fn(q, k, v).backward(go))
            print(f"fa4ab {label} {name} fwd_ms:{fwd:.3f} fwd_bwd_ms:{both:.3f}", flush=True)
        else:
            with torch.no_grad():
                print(f"fa4ab {label} {name} fwd_ms:{med_ms(lambda: fn(q, k, v)):.3f}", flush=True)
    del q, k, v
