"""Whether the q/k epilogue's rotary swap gets cheaper with each head's rotated pairs in adjacent columns (call QD:
the committed rotation adds 134 us to q's 586 and 92 us to k's 370). q and k may share any order of a head's 64
dims: q.k is the same sum. With c_q's and c_k's rows reordered per head as d0, d8, d1, d9, ..., d7, d15, d16, ...,
d63 (R = 16) the swap exchanges columns 2i and 2i+1, and the tables are rope_tables' columns in that order.
  0 store     the product rounded and stored, nothing else (as qkdiag's)
  2 rope      fused_gemm's MODE 3 as committed: half-split swap, epilogue in two column halves
  4 pair      adjacent-pair swap (reordered rows and tables), two column halves
  5 whole     adjacent-pair swap, the whole (128, 256) tile in one epilogue
CUDA-event medians of 20, alternated three times; q (N = 512) and k (N = 256), M = 524,288. Checks: variant 2 equals
fused_gemm MODE 3; variants 4 and 5, put back in the committed order, against variant 2 (share of equal elements,
largest difference) and against PyTorch's form. On the CPU, TRITON_INTERPRET=1 runs the checks alone at small M.

    python3 logs/bench/patches/qkpair.py                          # on a GPU
    TRITON_INTERPRET=1 python3 logs/bench/patches/qkpair.py       # the checks alone, on the CPU
"""
import os, statistics, sys
import torch
import torch.nn.functional as F
import triton
import triton.language as tl

sys.path.insert(0, ".")
import train_gpt as tg  # noqa: E402

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


@triton.jit
def qk_pair_kernel(a_ptr, b_ptr, o_ptr, cs_ptr, sn_ptr, g_ptr, M, N, K, P, VARIANT: tl.constexpr, R: tl.constexpr,
                   BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr, SMS: tl.constexpr):
    dt = o_ptr.dtype.element_ty
    EN: tl.constexpr = BN if VARIANT == 5 else BN // 2  # epilogue width
    a_d = tl.make_tensor_descriptor(a_ptr, [M, K], [K, 1], [BM, BK])
    b_d = tl.make_tensor_descriptor(b_ptr, [N, K], [K, 1], [BN, BK])
    o_d = tl.make_tensor_descriptor(o_ptr, [M, N], [N, 1], [BM, EN])
    tiles_m, tiles_n = tl.cdiv(M, BM), tl.cdiv(N, BN)
    for tile in tl.range(tl.program_id(0), tiles_m * tiles_n, SMS, flatten=True):
        first = tile // (GROUP_M * tiles_n) * GROUP_M
        rows = min(tiles_m - first, GROUP_M)
        om, on = (first + tile % (GROUP_M * tiles_n) % rows) * BM, tile % (GROUP_M * tiles_n) // rows * BN
        acc = tl.zeros((BM, BN), dtype=tl.float32)
        for k in range(tl.cdiv(K, BK)):
            acc = tl.dot(a_d.load([om, k * BK]), b_d.load([on, k * BK]).T, acc)
        if VARIANT == 5:
            c0, c1 = acc, acc
        else:
            c0, c1 = tl.split(tl.permute(tl.reshape(acc, (BM, 2, BN // 2)), (0, 2, 1)))
        for j in tl.static_range(1 if VARIANT == 5 else 2):
            c = (c0 if j == 0 else c1).to(dt).to(tl.float32)
            if VARIANT >= 2:
                x = tl.reshape(c, (BM, EN // 64, 64))
                x = (x * tl.rsqrt(tl.sum(x * x, 2) / 64 + 1.1920928955078125e-07)[:, :, None]).to(dt)
                x = x.to(tl.float32)
                if VARIANT == 2:
                    xa, xb = tl.split(tl.permute(tl.reshape(x, (BM, EN // 64, 64 // R, 2, R // 2)), (0, 1, 2, 4, 3)))
                    sw = tl.reshape(tl.permute(tl.join(xb, xa), (0, 1, 2, 4, 3)), (BM, EN // 64, 64))
                else:
                    xa, xb = tl.split(tl.reshape(x, (BM, EN // 2, 2)))
                    sw = tl.reshape(tl.join(xb, xa), (BM, EN // 64, 64))
                t = ((om + tl.arange(0, BM)) % P)[:, None] * 64 + tl.arange(0, 64)[None, :]
                cs, sn = tl.load(cs_ptr + t).to(tl.float32), tl.load(sn_ptr + t).to(tl.float32)
                c = tl.reshape(x * cs[:, None, :] + sw * sn[:, None, :], (BM, EN))
                col = on + j * EN + tl.arange(0, EN)
                c = c * tl.load(g_ptr + col, mask=col < N, other=0).to(tl.float32)[None, :]
            o_d.store([om, on + j * EN], c.to(dt))


def launch(variant, x, w, o, tables, sms, R):
    M, K = x.shape
    N = w.size(0)
    cs, sn, g = tables
    grid = min(sms, triton.cdiv(M, 128) * triton.cdiv(N, 256))
    qk_pair_kernel[(grid,)](x, w, o, cs, sn, g, M, N, K, cs.size(0), VARIANT=variant, R=R, BM=128, BN=256, BK=64,
                            GROUP_M=8, SMS=grid, num_warps=8, num_stages=3)


def pair_order(R: int) -> torch.Tensor:
    """A head's 64 dims with rotated pair (i, i + R/2) at columns 2i, 2i + 1: new column j holds old column p[j]."""
    p = [d for i in range(R // 2) for d in (i, i + R // 2)] + list(range(R, 64))
    return torch.tensor(p)


def reference(x, w, cos, sin, g, P):
    """PyTorch's scoring form of q or k: rms_norm per 64-column head, apply_partial_rotary at position m % P, gain."""
    M = x.size(0)
    q = F.rms_norm((x.float() @ w.float().T).to(x.dtype).view(M, -1, 64), (64,))
    pos = torch.arange(M, device=x.device) % P
    q = tg.apply_partial_rotary(q.view(1, M, -1, 64), cos[pos], sin[pos]).view(M, -1)
    return (q * g).float()


def main():
    dev = torch.device("cpu" if INTERPRET else "cuda")
    dtype = torch.float16 if INTERPRET else torch.bfloat16
    R, P = 16, (256 if INTERPRET else 2048)
    M, K = (512 if INTERPRET else 256 * 2048), 512
    gen = torch.Generator(device=dev).manual_seed(0)
    cos, sin = tg.rotary_cos_sin(P, R, 10000.0, P, dev)
    cs, sn = tg.rope_tables(cos, sin, 64, dtype)
    p = pair_order(R).to(dev)
    cs_p, sn_p = cs[:, p].contiguous(), sn[:, p].contiguous()
    x = torch.randn(M, K, device=dev, generator=gen).to(dtype)
    sms = 4 if INTERPRET else torch.cuda.get_device_properties(dev).multi_processor_count
    triton.set_allocator(lambda size, align, stream: torch.empty(size, dtype=torch.int8, device=dev))
    times = {}
    for name, N in (("q", 512), ("k", 256)):
        w = (torch.randn(N, K, device=dev, generator=gen) / K ** 0.5).to(dtype)
        g = (torch.rand(N, device=dev, generator=gen) + 0.5).to(dtype)
        heads = N // 64
        cols = (torch.arange(heads, device=dev)[:, None] * 64 + p[None, :]).reshape(-1)  # new col j <- old cols[j]
        w_p, g_p = w[cols].contiguous(), g[cols].contiguous()
        o = torch.empty(M, N, device=dev, dtype=dtype)
        ref = reference(x, w, cos, sin, g, P)
        launch(2, x, w, o, (cs, sn, g), sms, R)
        o2 = o.clone()
        err = ((o2.float() - ref).abs().max() / ref.abs().max()).item()
        print(f"qkpair check use:{name} variant:2 rel_err:{err:.2e}", flush=True)
        assert err < 2e-2, (name, err)
        if not INTERPRET:
            same = torch.equal(o2, tg.fused_gemm()(3, x, w, b_t=True, tables=(cs, sn, g), rope=R))
            print(f"qkpair check use:{name} variant 2 equals fused_gemm MODE 3:{int(same)}", flush=True)
        for variant in (4, 5):
            launch(variant, x, w_p, o, (cs_p, sn_p, g_p), sms, R)
            back = torch.empty_like(o)
            back[:, cols] = o
            err = ((back.float() - ref).abs().max() / ref.abs().max()).item()
            eq = (back == o2).float().mean().item()
            diff = (back.float() - o2.float()).abs().max().item()
            print(f"qkpair check use:{name} variant:{variant} rel_err:{err:.2e} equal_to_committed:{eq:.6f} "
                  f"max_diff:{diff:.3e}", flush=True)
            assert err < 2e-2, (name, variant, err)
        if INTERPRET:
            continue
        for _ in range(3):
            for variant, args in ((0, (w, (cs, sn, g))), (2, (w, (cs, sn, g))), (4, (w_p, (cs_p, sn_p, g_p))),
                                  (5, (w_p, (cs_p, sn_p, g_p)))):
                f = lambda: launch(variant, x, args[0], o, args[1], sms, R)
                f(); torch.cuda.synchronize()
                for _ in range(20):
                    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    a.record(); f(); b.record(); torch.cuda.synchronize()
                    times.setdefault((name, variant), []).append(a.elapsed_time(b) * 1000)
    names = {0: "store", 2: "rope", 4: "pair", 5: "whole"}
    if times:
        print(f"qkpair device:{torch.cuda.get_device_name()} triton:{triton.__version__} M:{M}", flush=True)
    for (name, variant), ts in times.items():
        print(f"qkpair use:{name} variant:{names[variant]} us_median:{statistics.median(ts):.1f} us_min:{min(ts):.1f}",
              flush=True)


if __name__ == "__main__":
    main()
