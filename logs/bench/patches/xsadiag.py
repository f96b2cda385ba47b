"""Where the XSA projection's extra time goes (call XR: 890 us against cuBLAS's 457 for y w^T at M = 524,288): one
persistent kernel, fused_gemm's tiles (128 x 256, BK 64, 8 warps, 3 stages, the epilogue in two column halves),
four operand paths:
  0 plain     a from TMA straight into the product (the cuBLAS-like path)
  1 regs      a loaded, widened to fp32 and rounded back in registers (the register round trip, no XSA math)
  2 sums      as plain, plus XSA's two row sums per head, stored as the coefficient (M, K / 64) (the math, no
              register operand)
  3 xsa       the committed operand: y - (y.v / max(v.v, 1e-24)) v in registers (fused_gemm's MODE 4)
  4 scaled    a times 1.25 in registers (a register operand the compiler cannot fold away, as it may variant 1's)
  5 coef      y - c v in registers with the coefficients c (M, K / 64) given: XSA without its row sums
Variants 4 and 5 were added after call QD3 (variant 1 within 10 us of plain, variant 3 at 945 us).
CUDA-event medians of 20, alternated three times. On the CPU, TRITON_INTERPRET=1 checks the results at small M (fp16,
as Triton's interpreter computes bf16 dots wrongly).

    python3 xsadiag.py                          # from the repository root, on a GPU
    TRITON_INTERPRET=1 python3 xsadiag.py       # the check alone, on the CPU
"""
import os, statistics
import torch
import triton
import triton.language as tl

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


@triton.jit
def xsa_diag_kernel(a_ptr, b_ptr, v_ptr, o_ptr, c_ptr, M, N, K, G, VARIANT: tl.constexpr, BM: tl.constexpr,
                    BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr, SMS: tl.constexpr):
    dt = o_ptr.dtype.element_ty
    a_d = tl.make_tensor_descriptor(a_ptr, [M, K], [K, 1], [BM, BK])
    b_d = tl.make_tensor_descriptor(b_ptr, [N, K], [K, 1], [BN, BK])
    v_d = tl.make_tensor_descriptor(v_ptr, [M, K // G], [K // G, 1], [BM, BK])
    o_d = tl.make_tensor_descriptor(o_ptr, [M, N], [N, 1], [BM, BN // 2])
    tiles_m, tiles_n = tl.cdiv(M, BM), tl.cdiv(N, BN)
    for tile in tl.range(tl.program_id(0), tiles_m * tiles_n, SMS, flatten=True):
        first = tile // (GROUP_M * tiles_n) * GROUP_M
        rows = min(tiles_m - first, GROUP_M)
        om, on = (first + tile % (GROUP_M * tiles_n) % rows) * BM, tile % (GROUP_M * tiles_n) // rows * BN
        acc = tl.zeros((BM, BN), dtype=tl.float32)
        for k in range(tl.cdiv(K, BK)):
            b = b_d.load([on, k * BK]).T
            a = a_d.load([om, k * BK])
            if VARIANT == 1:
                a = a.to(tl.float32).to(dt)
            if VARIANT == 2:
                y, v = a.to(tl.float32), v_d.load([om, k // G * BK]).to(tl.float32)
                coef = tl.sum(y * v, 1) / tl.maximum(tl.sum(v * v, 1), 1e-24)
                tl.store(c_ptr + (om + tl.arange(0, BM)) * (K // BK) + k, coef)  # both column tiles: the same values
            if VARIANT == 4:
                a = (a.to(tl.float32) * 1.25).to(dt)
            if VARIANT == 5:
                y, v = a.to(tl.float32), v_d.load([om, k // G * BK]).to(tl.float32)
                a = (y - tl.load(c_ptr + (om + tl.arange(0, BM)) * (K // BK) + k)[:, None] * v).to(dt)
            if VARIANT == 3:
                y, v = a.to(tl.float32), v_d.load([om, k // G * BK]).to(tl.float32)
                a = (y - (tl.sum(y * v, 1) / tl.maximum(tl.sum(v * v, 1), 1e-24))[:, None] * v).to(dt)
            acc = tl.dot(a, b, acc)
        c0, c1 = tl.split(tl.permute(tl.reshape(acc, (BM, 2, BN // 2)), (0, 2, 1)))  # stored in halves, as
        o_d.store([om, on], c0.to(dt))  # fused_gemm: a whole (128, 256) tile's buffer leaves variant 3 out of
        o_d.store([om, on + BN // 2], c1.to(dt))  # shared memory (call QD2)


def launch(variant, y, w, v, o, coef, sms):
    M, K = y.shape
    N = w.size(0)
    grid = min(sms, triton.cdiv(M, 128) * triton.cdiv(N, 256))
    xsa_diag_kernel[(grid,)](y, w, v, o, coef, M, N, K, K // v.size(1), VARIANT=variant, BM=128, BN=256, BK=64,
                             GROUP_M=8, SMS=grid, num_warps=8, num_stages=3)


def reference(y, v, w):
    M, K = y.shape
    G = K // v.size(1)
    yg = y.float().view(M, -1, G, 64)
    ve = v.float().view(M, -1, 1, 64).expand_as(yg)
    coef = (yg * ve).sum(-1) / (ve * ve).sum(-1).clamp_min(1e-24)
    return ((yg - coef[..., None] * ve).view(M, K).to(y.dtype).float() @ w.float().T), coef.view(M, -1)


def main():
    dev = torch.device("cpu" if INTERPRET else "cuda")
    dtype = torch.float16 if INTERPRET else torch.bfloat16
    M, K, N = (256 if INTERPRET else 256 * 2048), 512, 512
    g = torch.Generator(device=dev).manual_seed(0)
    y = torch.randn(M, K, device=dev, generator=g).to(dtype)
    v = torch.randn(M, K // 2, device=dev, generator=g).to(dtype)
    w = (torch.randn(N, K, device=dev, generator=g) / K ** 0.5).to(dtype)
    o, coef = torch.empty(M, N, device=dev, dtype=dtype), torch.zeros(M, K // 64, device=dev)
    sms = 4 if INTERPRET else torch.cuda.get_device_properties(dev).multi_processor_count
    triton.set_allocator(lambda size, align, stream: torch.empty(size, dtype=torch.int8, device=dev))
    ref, ref_coef = reference(y, v, w)
    plain = y.float() @ w.float().T
    for variant, want in ((0, plain), (1, plain), (2, plain), (3, ref), (4, 1.25 * plain), (5, ref)):
        launch(variant, y, w, v, o, ref_coef if variant == 5 else coef, sms)
        err = ((o.float() - want).abs().max() / want.abs().max()).item()
        print(f"xsadiag check variant:{variant} rel_err:{err:.2e}", flush=True)
        # call QD: on the GPU (Triton 3.6) variant 2's product came out wrong (2.7e-01) when one TMA tile fed both
        # the dot and the sums; it is timed all the same, as a bound, and its product is not used
        assert err < 1e-2 or (variant == 2 and not INTERPRET), (variant, err)
    cerr = ((coef - ref_coef).abs().max() / ref_coef.abs().max()).item()
    print(f"xsadiag check coefficients rel_err:{cerr:.2e}", flush=True)
    assert cerr < 1e-3 or not INTERPRET
    if INTERPRET:
        return
    times = {}
    for _ in range(3):
        for variant in range(6):
            f = lambda: launch(variant, y, w, v, o, ref_coef if variant == 5 else coef, sms)
            f(); torch.cuda.synchronize()
            for _ in range(20):
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record(); f(); b.record(); torch.cuda.synchronize()
                times.setdefault(variant, []).append(a.elapsed_time(b) * 1000)
        times.setdefault("cublas", [])
        for _ in range(20):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record(); y @ w.T; b.record(); torch.cuda.synchronize()
            times["cublas"].append(a.elapsed_time(b) * 1000)
    names = {0: "plain", 1: "regs", 2: "sums", 3: "xsa", 4: "scaled", 5: "coef", "cublas": "cublas"}
    print(f"xsadiag device:{torch.cuda.get_device_name()} triton:{triton.__version__} M:{M}", flush=True)
    for k, ts in times.items():
        print(f"xsadiag variant:{names[k]} us_median:{statistics.median(ts):.1f} us_min:{min(ts):.1f}", flush=True)


if __name__ == "__main__":
    main()
