"""Where the q/k products' epilogue time goes (call GC: q 688-711 us, k 442 us, against cuBLAS's 462 / 307 for the
plain products at M = 524,288): fused_gemm's MODE 3 with its epilogue cut down, step by step, and one candidate.
  0 store     the product rounded and stored, nothing else
  1 norm      + the per-head rms norm
  2 rope      + the rotation by (T, 64) cos/sin tables gathered per element, and the gain: MODE 3 as committed
  3 tma       as rope, but the tables' (BM, 64) row blocks loaded once per tile through TMA descriptors (a row
              block is contiguous: BM divides the table length P and tiles start at multiples of BM)
CUDA-event medians of 20, alternated three times; q (N = 512) and k (N = 256). On the CPU, TRITON_INTERPRET=1 checks
variants 2 and 3 against PyTorch's forms (train_gpt's apply_partial_rotary) at small M (fp16).

    python3 qkdiag.py                          # from the repository root, on a GPU
    TRITON_INTERPRET=1 python3 qkdiag.py       # the check alone, on the CPU
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
def qk_diag_kernel(a_ptr, b_ptr, o_ptr, cs_ptr, sn_ptr, g_ptr, M, N, K, P, VARIANT: tl.constexpr, R: tl.constexpr,
                   BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr, SMS: tl.constexpr):
    dt = o_ptr.dtype.element_ty
    a_d = tl.make_tensor_descriptor(a_ptr, [M, K], [K, 1], [BM, BK])
    b_d = tl.make_tensor_descriptor(b_ptr, [N, K], [K, 1], [BN, BK])
    o_d = tl.make_tensor_descriptor(o_ptr, [M, N], [N, 1], [BM, BN // 2])
    cs_d = tl.make_tensor_descriptor(cs_ptr, [P, 64], [64, 1], [BM, 64])
    sn_d = tl.make_tensor_descriptor(sn_ptr, [P, 64], [64, 1], [BM, 64])
    tiles_m, tiles_n = tl.cdiv(M, BM), tl.cdiv(N, BN)
    for tile in tl.range(tl.program_id(0), tiles_m * tiles_n, SMS, flatten=True):
        first = tile // (GROUP_M * tiles_n) * GROUP_M
        rows = min(tiles_m - first, GROUP_M)
        om, on = (first + tile % (GROUP_M * tiles_n) % rows) * BM, tile % (GROUP_M * tiles_n) // rows * BN
        acc = tl.zeros((BM, BN), dtype=tl.float32)
        for k in range(tl.cdiv(K, BK)):
            acc = tl.dot(a_d.load([om, k * BK]), b_d.load([on, k * BK]).T, acc)
        if VARIANT == 3:
            cs_t, sn_t = cs_d.load([om % P, 0]).to(tl.float32), sn_d.load([om % P, 0]).to(tl.float32)
        c0, c1 = tl.split(tl.permute(tl.reshape(acc, (BM, 2, BN // 2)), (0, 2, 1)))
        for j in tl.static_range(2):
            c = (c0 if j == 0 else c1).to(dt).to(tl.float32)
            if VARIANT >= 1:
                x = tl.reshape(c, (BM, BN // 128, 64))
                x = (x * tl.rsqrt(tl.sum(x * x, 2) / 64 + 1.1920928955078125e-07)[:, :, None]).to(dt)
                x = x.to(tl.float32)
                c = tl.reshape(x, (BM, BN // 2))
                if VARIANT >= 2:
                    xa, xb = tl.split(tl.permute(tl.reshape(x, (BM, BN // 128, 64 // R, 2, R // 2)), (0, 1, 2, 4, 3)))
                    sw = tl.reshape(tl.permute(tl.join(xb, xa), (0, 1, 2, 4, 3)), (BM, BN // 128, 64))
                    if VARIANT == 2:
                        t = ((om + tl.arange(0, BM)) % P)[:, None] * 64 + tl.arange(0, 64)[None, :]
                        cs, sn = tl.load(cs_ptr + t).to(tl.float32), tl.load(sn_ptr + t).to(tl.float32)
                    else:
                        cs, sn = cs_t, sn_t
                    c = tl.reshape(x * cs[:, None, :] + sw * sn[:, None, :], (BM, BN // 2))
                    col = on + j * BN // 2 + tl.arange(0, BN // 2)
                    c = c * tl.load(g_ptr + col, mask=col < N, other=0).to(tl.float32)[None, :]
            o_d.store([om, on + j * BN // 2], c.to(dt))


def launch(variant, x, w, o, tables, sms, R):
    M, K = x.shape
    N = w.size(0)
    cs, sn, g = tables
    grid = min(sms, triton.cdiv(M, 128) * triton.cdiv(N, 256))
    qk_diag_kernel[(grid,)](x, w, o, cs, sn, g, M, N, K, cs.size(0), VARIANT=variant, R=R, BM=128, BN=256, BK=64,
                            GROUP_M=8, SMS=grid, num_warps=8, num_stages=3)


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
    x = torch.randn(M, K, device=dev, generator=gen).to(dtype)
    sms = 4 if INTERPRET else torch.cuda.get_device_properties(dev).multi_processor_count
    triton.set_allocator(lambda size, align, stream: torch.empty(size, dtype=torch.int8, device=dev))
    times = {}
    for name, N in (("q", 512), ("k", 256)):
        w = (torch.randn(N, K, device=dev, generator=gen) / K ** 0.5).to(dtype)
        g = (torch.rand(N, device=dev, generator=gen) + 0.5).to(dtype)
        o = torch.empty(M, N, device=dev, dtype=dtype)
        ref = reference(x, w, cos, sin, g, P)
        for variant in (2, 3):
            launch(variant, x, w, o, (cs, sn, g), sms, R)
            err = ((o.float() - ref).abs().max() / ref.abs().max()).item()
            print(f"qkdiag check use:{name} variant:{variant} rel_err:{err:.2e}", flush=True)
            assert err < 2e-2, (name, variant, err)
        if INTERPRET:
            continue
        launch(2, x, w, o, (cs, sn, g), sms, R)
        same = torch.equal(o, tg.fused_gemm()(3, x, w, b_t=True, tables=(cs, sn, g), rope=R))
        print(f"qkdiag check use:{name} variant 2 equals fused_gemm MODE 3:{int(same)}", flush=True)
        for _ in range(3):
            for variant in range(4):
                f = lambda: launch(variant, x, w, o, (cs, sn, g), sms, R)
                f(); torch.cuda.synchronize()
                for _ in range(20):
                    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    a.record(); f(); b.record(); torch.cuda.synchronize()
                    times.setdefault((name, variant), []).append(a.elapsed_time(b) * 1000)
    names = ("store", "norm", "rope", "tma")
    if times:
        print(f"qkdiag device:{torch.cuda.get_device_name()} triton:{triton.__version__} M:{M}", flush=True)
    for (name, variant), ts in times.items():
        print(f"qkdiag use:{name} variant:{names[variant]} us_median:{statistics.median(ts):.1f} us_min:{min(ts):.1f}",
              flush=True)


if __name__ == "__main__":
    main()
