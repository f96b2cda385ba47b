"""Microbenchmark 2: FlashAttention 4's backward at the training shape (48 x 2048, 8 query / 4 KV heads, hdim 64):
grouped (dK, dV in fp32 atomics + conversion passes), K/V expanded to the query heads, and per group member (query
heads i, i+G, ... as strided views against all KV heads, dK/dV summed after). Errors against an fp32 reference;
train_gpt's op (argv[1] on sys.path) against the grouped kernel. CUDA events, median of 20."""
import statistics, sys
import torch
import torch.nn.functional as F
from flash_attn.cute import interface as fi
sys.path.insert(0, sys.argv[1])
import train_gpt as tg

dev = torch.device("cuda")
print("kvxab2 device:", torch.cuda.get_device_name(), "torch", torch.__version__, flush=True)


def med_ms(fn, reps=20, warm=3):
    for _ in range(warm):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record(); fn(); b.record(); torch.cuda.synchronize(); ts.append(a.elapsed_time(b))
    return statistics.median(ts)


def make(B, T=2048, H=8, Hkv=4, D=64, seed=0):
    g = torch.Generator(device=dev).manual_seed(seed)
    return [torch.randn(B, T, h, D, device=dev, dtype=torch.bfloat16, generator=g) for h in (H, Hkv, Hkv, H)]


def expand(t, g):
    return t[:, :, :, None].expand(-1, -1, -1, g, -1).flatten(2, 3).contiguous()


def bwd_gqa(q, k, v, o, do, lse):
    return fi._flash_attn_bwd(q, k, v, o, do, lse, causal=True)[:3]


def bwd_mha(q, k, v, o, do, lse):
    g = q.size(2) // k.size(2)
    dq, dk, dv = fi._flash_attn_bwd(q, expand(k, g), expand(v, g), o, do, lse, causal=True)[:3]
    return dq, dk.unflatten(2, (-1, g)).sum(3), dv.unflatten(2, (-1, g)).sum(3)


def bwd_split_parts(q, k, v, o, do, lse):
    g = q.size(2) // k.size(2)
    dq, dk, dv = torch.empty_like(q), k.new_empty(g, *k.shape), v.new_empty(g, *v.shape)
    for i in range(g):
        h = slice(i, None, g)
        r = fi._flash_attn_bwd(q[:, :, h], k, v, o[:, :, h], do[:, :, h], lse[:, h], causal=True, dq=dq[:, :, h],
                               dk=dk[i], dv=dv[i])
        assert r[0].data_ptr() == dq[:, :, h].data_ptr() and r[1].data_ptr() == dk[i].data_ptr()
    return dq, dk, dv


def bwd_split(*a):
    dq, dk, dv = bwd_split_parts(*a)
    return dq, dk.sum(0), dv.sum(0)


q, k, v, do = make(2)
qf, kf, vf = (t.float().requires_grad_() for t in (q, k, v))
ref = F.scaled_dot_product_attention(qf.transpose(1, 2), kf.transpose(1, 2), vf.transpose(1, 2), is_causal=True,
                                     enable_gqa=True).transpose(1, 2)
ref.backward(do.float())
o, lse = fi._flash_attn_fwd(q, k, v, causal=True, return_lse=True, pack_gqa=True)[:2]
rel = lambda a, b: ((a.float() - b.float()).norm() / b.float().norm()).item()
res = {}
for name, fn in (("gqa", bwd_gqa), ("mha", bwd_mha), ("split", bwd_split)):
    res[name] = fn(q, k, v, o, do, lse)
    print(f"kvxab2 err_vs_fp32 {name} " + " ".join(f"{n}_rel_l2:{rel(a, b):.3e}" for n, a, b in
                                                   zip(("dq", "dk", "dv"), res[name], (qf.grad, kf.grad, vf.grad))), flush=True)
print("kvxab2 split_vs_gqa " + " ".join(f"{n}_rel_l2:{rel(a, b):.3e}" for n, a, b in
                                         zip(("dq", "dk", "dv"), res["split"], res["gqa"])), flush=True)
tg.flash_attn_4()
qa, ka, va = (t.clone().requires_grad_() for t in (q, k, v))
y = tg.causal_attention(qa, ka, va, "flash_attn_4")
y.backward(do)
print(f"kvxab2 train_gpt_op out_vs_fa4:{rel(y, o):.3e} " + " ".join(
    f"{n}_vs_gqa:{rel(a, b):.3e}" for n, a, b in zip(("dq", "dk", "dv"), (qa.grad, ka.grad, va.grad), res["gqa"])),
      flush=True)

q, k, v, do = make(48)
o, lse = fi._flash_attn_fwd(q, k, v, causal=True, return_lse=True, pack_gqa=True)[:2]
kx, vx = expand(k, 2), expand(v, 2)
for rep in range(2):
    times = {"bwd_gqa": med_ms(lambda: bwd_gqa(q, k, v, o, do, lse)),
             "bwd_mha_kernels": med_ms(lambda: fi._flash_attn_bwd(q, kx, vx, o, do, lse, causal=True)),
             "bwd_split_kernels": med_ms(lambda: bwd_split_parts(q, k, v, o, do, lse))}
    print(f"kvxab2 B48 rep{rep} " + " ".join(f"{n}_ms:{t:.3f}" for n, t in times.items()), flush=True)
print("kvxab2 done", flush=True)
