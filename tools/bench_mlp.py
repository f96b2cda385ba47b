"""Benchmark of a candidate fused MLP against train_gpt.py's MLP at the training shape (GPU; not a test).

    python tools/bench_mlp.py [--tokens 98304] [--dim 512] [--mult 4] [--iters 20]

train_gpt's MLP is proj(leaky_relu(fc(x), 0.5)²). Compiled, it runs as cuBLAS products plus two element-wise
passes over the (tokens, 2048) hidden activation (forward: h -> a; backward: dA, h -> dH), which on H100 take
about 660 µs per micro-batch and layer at memory bandwidth (NOTES.md, issue 6). The candidate never writes `a`
nor `dA`:

    forward   h  = x · W1ᵀ                 (cuBLAS)
              y  = act(h) · W2ᵀ            (Triton: the activation is applied to each loaded tile of h)
    backward  dH = (dy · W2) ⊙ act'(h)     (Triton: the derivative is applied in the product's epilogue)
              dW2 = (act(h)ᵀ · dy)ᵀ        (Triton, split over the token dimension)
              dW1 = dHᵀ · x,  dx = dH · W1 (cuBLAS)

with act(h) = leaky_relu(h, 0.5)² and act'(h) = 2h for h > 0, h/2 otherwise. Rounding follows the compiled
reference: act(h) is rounded to bf16 once before its product, dy · W2 is rounded to bf16 before the derivative.

Prints, for the reference (torch.compile of train_gpt.MLP's formula) and the candidate (eager, and compiled
around the autograd.Function): µs per forward and per forward+backward, the largest relative error of y, dx, dW1
and dW2 against an fp32 computation from the same bf16 inputs, and the saving per optimizer step projected from
the forward+backward difference (× layer applications × micro-batches; arithmetic, not a measurement); and
each Triton product against the cuBLAS product it replaces, to tell the products' speed from the fusion's gain.
`fwd_bwd_extra_mib` is the memory one forward+backward allocates beyond its inputs (saved activations included).
Needs Triton to start. --tokens and --dim must be multiples of 256 (the kernels have no edge masks). The kernels
run on CPU tensors too under TRITON_INTERPRET=1 (slowly: use --tokens 256 or 512), which checks the math where
there is no GPU and prints only the error lines; the interpreter truncates fp32 -> bf16 casts instead of rounding
them, so its errors are about twice the GPU's (and with numpy 2.4 its bf16 products are wrong: see
tests/test_tools_bench_mlp.py, which checks values and gradients on a CUDA GPU only).
"""
from __future__ import annotations

import argparse
import os

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
CONFIGS = [triton.Config({"BM": 128, "BN": 128, "BK": 32}, num_warps=4, num_stages=2)] if INTERPRET else [
    triton.Config({"BM": bm, "BN": bn, "BK": 64}, num_warps=w, num_stages=s)
    for bm, bn, w, s in ((128, 256, 8, 3), (256, 128, 8, 3), (128, 128, 4, 4), (128, 128, 8, 4), (64, 256, 4, 4))
]


@triton.jit
def _act(h):
    """leaky_relu(h, 0.5)² in fp32."""
    r = tl.where(h > 0, h, 0.5 * h)
    return r * r


@triton.jit
def _tile(pid, M, N, BM: tl.constexpr, BN: tl.constexpr, GROUP_M: tl.constexpr):
    """Grouped tile order, so that consecutive programs share row panels in L2."""
    num_m, num_n = M // BM, N // BN
    per_group = GROUP_M * num_n
    first_m = (pid // per_group) * GROUP_M
    size_m = min(num_m - first_m, GROUP_M)
    return first_m + (pid % per_group) % size_m, (pid % per_group) // size_m


@triton.autotune(configs=CONFIGS, key=["M", "N", "K_SPLIT"])
@triton.jit
def act_mm_kernel(a_ptr, b_ptr, c_ptr, M, N, K_SPLIT, sam, sak, sbk, sbn, scs, scm, scn,
                  DOT_F32: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    """C[s] = act(A[:, ks]) · B[ks, :] for the s-th slice ks of the K dimension (program axis 1)."""
    pid_m, pid_n = _tile(tl.program_id(0), M, N, BM, BN, 8)
    k0 = tl.program_id(1) * K_SPLIT
    rm = tl.max_contiguous(tl.multiple_of(pid_m * BM + tl.arange(0, BM), BM), BM)
    rn = tl.max_contiguous(tl.multiple_of(pid_n * BN + tl.arange(0, BN), BN), BN)
    rk = k0 + tl.arange(0, BK)
    a_ptrs = a_ptr + rm[:, None] * sam + rk[None, :] * sak
    b_ptrs = b_ptr + rk[:, None] * sbk + rn[None, :] * sbn
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for _ in range(0, K_SPLIT, BK):
        a, b = _act(tl.load(a_ptrs).to(tl.float32)).to(tl.bfloat16), tl.load(b_ptrs)
        if DOT_F32:  # the CPU interpreter cannot multiply bf16; products of bf16 values are exact in fp32
            a, b = a.to(tl.float32), b.to(tl.float32)
        acc = tl.dot(a, b, acc)
        a_ptrs += BK * sak
        b_ptrs += BK * sbk
    c_ptrs = c_ptr + tl.program_id(1) * scs + rm[:, None] * scm + rn[None, :] * scn
    tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty))


@triton.autotune(configs=CONFIGS, key=["M", "N", "K"])
@triton.jit
def mm_dact_kernel(a_ptr, b_ptr, h_ptr, c_ptr, M, N, K, sam, sak, sbk, sbn, shm, shn, scm, scn,
                   DOT_F32: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    """C = bf16(A · B) ⊙ act'(H), act'(h) = 2h (h > 0) or h/2."""
    pid_m, pid_n = _tile(tl.program_id(0), M, N, BM, BN, 8)
    rm = tl.max_contiguous(tl.multiple_of(pid_m * BM + tl.arange(0, BM), BM), BM)
    rn = tl.max_contiguous(tl.multiple_of(pid_n * BN + tl.arange(0, BN), BN), BN)
    rk = tl.arange(0, BK)
    a_ptrs = a_ptr + rm[:, None] * sam + rk[None, :] * sak
    b_ptrs = b_ptr + rk[:, None] * sbk + rn[None, :] * sbn
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for _ in range(0, K, BK):
        a, b = tl.load(a_ptrs), tl.load(b_ptrs)
        if DOT_F32:
            a, b = a.to(tl.float32), b.to(tl.float32)
        acc = tl.dot(a, b, acc)
        a_ptrs += BK * sak
        b_ptrs += BK * sbk
    h = tl.load(h_ptr + rm[:, None] * shm + rn[None, :] * shn).to(tl.float32)
    g = acc.to(tl.bfloat16).to(tl.float32) * tl.where(h > 0, 2.0 * h, 0.5 * h)
    tl.store(c_ptr + rm[:, None] * scm + rn[None, :] * scn, g.to(c_ptr.dtype.element_ty))


def _check_even(M: int, N: int, K: int) -> None:
    if M % 256 or N % 256 or K % 64:
        raise ValueError(f"fused MLP products need M, N multiples of 256 and K of 64, got M={M} N={N} K={K}")


def act_mm(a: torch.Tensor, b: torch.Tensor, split_k: int = 1) -> torch.Tensor:
    """act(a) · b for bf16 a (M, K), b (K, N); split_k > 1 sums fp32 partial products over K slices."""
    (M, K), N = a.shape, b.shape[1]
    _check_even(M, N, K)
    if K % (64 * split_k):
        raise ValueError(f"K={K} does not split into {split_k} slices of whole 64-blocks")
    out = torch.empty((split_k, M, N), device=a.device, dtype=torch.float32 if split_k > 1 else a.dtype)
    grid = lambda meta: ((M // meta["BM"]) * (N // meta["BN"]), split_k)  # noqa: E731
    act_mm_kernel[grid](a, b, out, M, N, K // split_k, a.stride(0), a.stride(1), b.stride(0), b.stride(1),
                        out.stride(0), out.stride(1), out.stride(2), DOT_F32=INTERPRET)
    return out[0] if split_k == 1 else out.sum(0).to(a.dtype)


def mm_dact(a: torch.Tensor, b: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """bf16(a · b) ⊙ act'(h) for a (M, K), b (K, N), h (M, N)."""
    (M, K), N = a.shape, b.shape[1]
    _check_even(M, N, K)
    out = torch.empty((M, N), device=a.device, dtype=a.dtype)
    grid = lambda meta: ((M // meta["BM"]) * (N // meta["BN"]),)  # noqa: E731
    mm_dact_kernel[grid](a, b, h, out, M, N, K, a.stride(0), a.stride(1), b.stride(0), b.stride(1),
                         h.stride(0), h.stride(1), out.stride(0), out.stride(1), DOT_F32=INTERPRET)
    return out


class FusedMLP(torch.autograd.Function):
    """y = act(x · W1ᵀ) · W2ᵀ for bf16 x (M, D), W1 (H, D), W2 (D, H); saves x and h, never act(h)."""

    @staticmethod
    def forward(ctx, x, w1, w2):
        h = x @ w1.t()
        ctx.save_for_backward(x, w1, w2, h)
        return act_mm(h, w2.t())

    @staticmethod
    def backward(ctx, dy):
        x, w1, w2, h = ctx.saved_tensors
        dy = dy.contiguous()
        dh = mm_dact(dy, w2, h)
        # dW2ᵀ has only (H/128)·(D/128) = 64 tiles of 128² at the training shape: split the token dimension so
        # that about two programs per SM run, and sum the fp32 partial products.
        split = max(1, min(16, 2 * torch.cuda.get_device_properties(dy.device).multi_processor_count
                           // max(1, (w2.shape[1] // 128) * (w2.shape[0] // 128)))) if dy.is_cuda else 2
        while h.shape[0] % (64 * split):
            split -= 1
        dw2 = act_mm(h.t(), dy, split).t()
        return dh @ w1, dh.t() @ x, dw2


def reference_mlp(x, w1, w2):
    """train_gpt.MLP.forward's formula on bf16 operands."""
    return F.linear(F.leaky_relu(F.linear(x, w1), negative_slope=0.5).square(), w2)


def fp32_grads(x, w1, w2, dy):
    xs = [t.detach().float().requires_grad_() for t in (x, w1, w2)]
    y = reference_mlp(*xs)
    y.backward(dy.float())
    return [y.detach()] + [t.grad for t in xs]


def max_rel_err(got, want) -> float:
    return ((got.float() - want).abs().max() / want.abs().max().clamp_min(1e-30)).item()


def run(fn, x, w1, w2, dy, backward: bool):
    for t in (x, w1, w2):
        t.grad = None
    y = fn(x, w1, w2)
    if backward:
        y.backward(dy)
    return y


def time_call_us(fn, iters: int) -> float:
    """µs per call of fn() on the GPU, after 3 untimed calls."""
    for _ in range(3):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return 1000 * start.elapsed_time(end) / iters


def product_times(x, w1, w2, dy, iters: int) -> None:
    """Each Triton product against the cuBLAS product it replaces (without the activation pass it also saves)."""
    with torch.no_grad():
        h = x @ w1.t()
        a = F.leaky_relu(h, negative_slope=0.5).square()
        split = 4  # what FusedMLP.backward picks on a 132-SM H100 at the training shape
        pairs = {
            "down_fwd act(h)·W2ᵀ": (lambda: act_mm(h, w2.t()), lambda: a @ w2.t()),
            "grad_h (dy·W2)⊙act'(h)": (lambda: mm_dact(dy, w2, h), lambda: dy @ w2),
            "grad_W2ᵀ act(h)ᵀ·dy": (lambda: act_mm(h.t(), dy, split), lambda: a.t() @ dy),
        }
        for name, (triton_fn, cublas_fn) in pairs.items():
            t, c = time_call_us(triton_fn, iters), time_call_us(cublas_fn, iters)
            print(f"product {name} triton_us:{t:.1f} cublas_us:{c:.1f} ratio:{t / c:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=98304, help="rows per product: one micro-batch (48 x 2048)")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--mult", type=int, default=4)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--calls-per-step", type=int, default=88, help="MLP calls per optimizer step (11 layers x 8)")
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() and not INTERPRET else "cpu")
    if device.type == "cpu" and not INTERPRET:
        raise SystemExit("bench_mlp.py needs a CUDA device (or TRITON_INTERPRET=1 with small --tokens)")
    g = torch.Generator(device="cpu").manual_seed(0)
    M, D, H = args.tokens, args.dim, args.mult * args.dim
    mk = lambda *s, scale=1.0: (torch.randn(*s, generator=g) * scale).to(device, torch.bfloat16)  # noqa: E731
    x, w1, w2 = mk(M, D), mk(H, D, scale=D ** -0.5), mk(D, H, scale=H ** -0.5)
    dy = mk(M, D, scale=1e-2)
    x.requires_grad_(), w1.requires_grad_(), w2.requires_grad_()
    want = fp32_grads(x, w1, w2, dy)
    impls = {"reference": torch.compile(reference_mlp) if device.type == "cuda" else reference_mlp,
             "fused_eager": FusedMLP.apply}
    if device.type == "cuda":
        impls["fused_compiled"] = torch.compile(lambda x, w1, w2: FusedMLP.apply(x, w1, w2))
    print(f"bench_mlp device:{torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu (interpreter)'} "
          f"torch:{torch.__version__} triton:{triton.__version__} tokens:{M} dim:{D} hidden:{H}")
    results = {}
    for name, fn in impls.items():
        try:
            y = run(fn, x, w1, w2, dy, backward=True)
            errs = [max_rel_err(t, w) for t, w in zip((y, x.grad, w1.grad, w2.grad), want)]
        except Exception as e:  # a candidate that fails is reported, not fatal
            print(f"mlp impl:{name} error:{type(e).__name__}: {str(e).splitlines()[0][:200]}")
            continue
        line = f"mlp impl:{name} rel_err y:{errs[0]:.2e} dx:{errs[1]:.2e} dw1:{errs[2]:.2e} dw2:{errs[3]:.2e}"
        if device.type == "cuda":
            fwd = time_call_us(lambda: run(fn, x, w1, w2, dy, backward=False), args.iters)
            both = time_call_us(lambda: run(fn, x, w1, w2, dy, backward=True), args.iters)
            for t in (x, w1, w2):
                t.grad = None
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            run(fn, x, w1, w2, dy, backward=True)
            extra = (torch.cuda.max_memory_allocated() - base) / 2**20
            results[name] = both
            line += f" fwd_us:{fwd:.1f} fwd_bwd_us:{both:.1f} fwd_bwd_extra_mib:{extra:.0f}"
        print(line)
    if device.type == "cuda":
        product_times(x, w1, w2, dy, args.iters)
    ref = results.get("reference")
    for name, us in results.items():
        if name != "reference" and ref:
            print(f"projection impl:{name} saving_us_per_call:{ref - us:.1f} "
                  f"saving_ms_per_step:{(ref - us) * args.calls_per_step / 1000:.1f} (x{args.calls_per_step} calls)")


if __name__ == "__main__":
    main()
