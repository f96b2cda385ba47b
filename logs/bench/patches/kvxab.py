"""Microbenchmark: FlashAttention 4's backward with grouped KV heads (dK, dV added in fp32 atomics, then converted)
against the same backward on K, V expanded to the query heads (dK, dV written directly; the group sum after), at the
training shape (48 x 2048, 8 query / 4 KV heads, head dim 64). Also the forward in both forms, the errors of both
backward forms against an fp32 reference, and a few backward tile settings. Times: CUDA events, median of 20."""
import dataclasses, statistics, sys
import torch
import torch.nn.functional as F
from flash_attn.cute import interface as fi

dev = torch.device("cuda")
print("kvxab device:", torch.cuda.get_device_name(), "torch", torch.__version__, flush=True)


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
    q, k, v, do = (torch.randn(B, T, h, D, device=dev, dtype=torch.bfloat16, generator=g) for h in (H, Hkv, Hkv, H))
    return q, k, v, do


def expand(t, g):
    return t[:, :, :, None].expand(-1, -1, -1, g, -1).flatten(2, 3)


def fwd(q, k, v, pack=True):
    return fi._flash_attn_fwd(q, k, v, causal=True, return_lse=True, pack_gqa=pack)[:2]


def bwd_gqa(q, k, v, o, do, lse):
    return fi._flash_attn_bwd(q, k, v, o, do, lse, causal=True)[:3]


def bwd_mha(q, k, v, o, do, lse):
    g = q.size(2) // k.size(2)
    dq, dk, dv = fi._flash_attn_bwd(q, expand(k, g).contiguous(), expand(v, g).contiguous(), o, do, lse, causal=True)[:3]
    return dq, dk.unflatten(2, (-1, g)).sum(3), dv.unflatten(2, (-1, g)).sum(3)


# errors against an fp32 reference (small batch)
q, k, v, do = make(2)
qf, kf, vf = (t.float().requires_grad_() for t in (q, k, v))
ref = F.scaled_dot_product_attention(qf.transpose(1, 2), kf.transpose(1, 2), vf.transpose(1, 2), is_causal=True,
                                     enable_gqa=True).transpose(1, 2)
ref.backward(do.float())
o, lse = fwd(q, k, v)
for name, fn in (("gqa", bwd_gqa), ("mha", bwd_mha)):
    grads = fn(q, k, v, o, do, lse)
    print(f"kvxab err_vs_fp32 {name} " + " ".join(
        f"{n}_rel_l2:{((a.float() - b).norm() / b.norm()).item():.3e}" for n, a, b in zip(("dq", "dk", "dv"), grads,
                                                                                         (qf.grad, kf.grad, vf.grad))),
          flush=True)
ga, gb = bwd_gqa(q, k, v, o, do, lse), bwd_mha(q, k, v, o, do, lse)
print("kvxab mha_vs_gqa " + " ".join(f"{n}_rel_l2:{((a.float() - b.float()).norm() / b.float().norm()).item():.3e}"
                                     for n, a, b in zip(("dq", "dk", "dv"), gb, ga)), flush=True)

q, k, v, do = make(48)
kx, vx = expand(k, 2).contiguous(), expand(v, 2).contiguous()
o, lse = fwd(q, k, v)
res = {
    "fwd_gqa_pack": med_ms(lambda: fwd(q, k, v)),
    "fwd_gqa_nopack": med_ms(lambda: fwd(q, k, v, pack=False)),
    "fwd_mha": med_ms(lambda: fwd(q, kx, vx, pack=False)),
    "bwd_gqa": med_ms(lambda: bwd_gqa(q, k, v, o, do, lse)),
    "bwd_mha_kernels": med_ms(lambda: fi._flash_attn_bwd(q, kx, vx, o, do, lse, causal=True)),
    "bwd_mha_with_eager_expand_sum": med_ms(lambda: bwd_mha(q, k, v, o, do, lse)),
    "eager_expand_kv": med_ms(lambda: (expand(k, 2).contiguous(), expand(v, 2).contiguous())),
}
for n, t in res.items():
    print(f"kvxab B48 {n} ms:{t:.3f}", flush=True)

if sys.argv[1:] != ["sweep"]:
    print("kvxab done", flush=True)
    sys.exit(0)
default = fi._tile_size_bwd_sm90(64, 64, True, False)
print(f"kvxab default_bwd_cfg {default}", flush=True)
variants = {"n64": dict(n_block_size=64), "m64": dict(m_block_size=64), "PdS1": dict(num_stages_PdS=1),
            "NdKV1": dict(AtomLayoutNdKV=1), "MdQ1": dict(AtomLayoutMdQ=1), "SdP_noswap_M2": dict(SdP_swapAB=False,
                                                                                                AtomLayoutMSdP=2)}
orig = fi._tile_size_bwd_sm90
for name, change in variants.items():
    cfg = dataclasses.replace(default, **change)
    fi._tile_size_bwd_sm90 = lambda *a, **kw: cfg
    try:
        grads = fi._flash_attn_bwd(q, kx, vx, o, do, lse, causal=True)[:3]
        fi._tile_size_bwd_sm90 = orig
        base = fi._flash_attn_bwd(q, kx, vx, o, do, lse, causal=True)[:3]
        fi._tile_size_bwd_sm90 = lambda *a, **kw: cfg
        err = max(((a.float() - b.float()).norm() / b.float().norm()).item() for a, b in zip(grads, base))
        t_mha = med_ms(lambda: fi._flash_attn_bwd(q, kx, vx, o, do, lse, causal=True))
        t_gqa = med_ms(lambda: fi._flash_attn_bwd(q, k, v, o, do, lse, causal=True))
        print(f"kvxab bwd_cfg {name} mha_ms:{t_mha:.3f} gqa_ms:{t_gqa:.3f} rel_l2_vs_default:{err:.2e}", flush=True)
    except Exception as e:
        print(f"kvxab bwd_cfg {name} failed: {type(e).__name__}: {str(e)[:200]}", flush=True)
    fi._tile_size_bwd_sm90 = orig
print("kvxab done", flush=True)
