"""MLP at the training and scoring shapes, compiled under several Inductor configurations (GPU experiment).

    python mlpat.py [--tokens 98304] [--eval-tokens 524288] [--iters 20] [--configs default,mag,mag_tma]

train_gpt's MLP is proj(leaky_relu(fc(x), 0.5)^2). With cuBLAS products the activation runs as separate
element-wise passes at memory bandwidth; Inductor fuses it only into its own Triton matmul templates. This compiles
the same formula (bf16 operands) per configuration and prints, per configuration: the first call's time
(compilation and autotuning), us per forward+backward at the training shape, us per forward without gradients at
the scoring shape, the largest difference of y / dx / dW1 / dW2 from the default configuration relative to the
largest value, and the kernels of one profiled forward+backward and one scoring forward (name and us).
"""
import argparse
import time

import torch
import torch.nn.functional as F

CONFIGS = {
    "default": {},
    "mag": {"max_autotune_gemm": True},
    "mag_tma": {"max_autotune_gemm": True, "triton.enable_persistent_tma_matmul": True},
    "mag_tma_store": {"max_autotune_gemm": True, "triton.enable_persistent_tma_matmul": True,
                      "triton.enable_template_tma_store": True},
    "mag_tma_triton": {"max_autotune_gemm": True, "triton.enable_persistent_tma_matmul": True,
                       "max_autotune_gemm_backends": "TRITON"},
}


def mlp(x, w1, w2):
    return F.linear(F.leaky_relu(F.linear(x, w1), negative_slope=0.5).square(), w2)


def bench(fn, iters):
    times = []
    for _ in range(3):
        torch.cuda.synchronize()
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(iters):
            fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b) * 1000 / iters)
    return sorted(times)[1]


def kernels(fn):
    fn()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    out = []
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            out.append((e.name[:110], e.device_time if hasattr(e, "device_time") else e.cuda_time))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=98304)
    ap.add_argument("--eval-tokens", type=int, default=524288)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--configs", default="default,mag,mag_tma,mag_tma_store,mag_tma_triton")
    args = ap.parse_args()
    dev = torch.device("cuda")
    g = torch.Generator(device=dev).manual_seed(0)
    D, Hd = args.dim, 4 * args.dim
    x = torch.randn(args.tokens, D, device=dev, generator=g).bfloat16()
    xe = torch.randn(args.eval_tokens, D, device=dev, generator=g).bfloat16()
    w1 = (torch.randn(Hd, D, device=dev, generator=g) / D**0.5).bfloat16()
    w2 = (torch.randn(D, Hd, device=dev, generator=g) / Hd**0.5).bfloat16()
    dy = torch.randn(args.tokens, D, device=dev, generator=g).bfloat16()
    ref = None
    for name in args.configs.split(","):
        torch._dynamo.reset()
        f = torch.compile(mlp, dynamic=False, options=dict(CONFIGS[name]))
        xs, w1s, w2s = (t.detach().clone().requires_grad_(True) for t in (x, w1, w2))

        def train():
            for t in (xs, w1s, w2s):
                t.grad = None
            f(xs, w1s, w2s).backward(dy)

        def score():
            with torch.no_grad():
                return f(xe, w1, w2)

        t0 = time.perf_counter()
        train()
        torch.cuda.synchronize()
        t1 = time.perf_counter()
        ye = score()
        torch.cuda.synchronize()
        t2 = time.perf_counter()
        print(f"mlpat config:{name} first_train_s:{t1 - t0:.1f} first_score_s:{t2 - t1:.1f}", flush=True)
        with torch.no_grad():
            y = f(xs, w1s, w2s)
        vals = [y.float(), xs.grad.float(), w1s.grad.float(), w2s.grad.float(), ye.float()]
        if ref is None:
            ref = vals
        diffs = " ".join(f"{k}:{((a - b).abs().max() / b.abs().max()).item():.2e}"
                         for k, a, b in zip(("y", "dx", "dW1", "dW2", "y_eval"), vals, ref))
        tt = bench(train, args.iters)
        ts = bench(score, max(args.iters // 4, 3))
        print(f"mlpat config:{name} train_fwd_bwd_us:{tt:.1f} score_fwd_us:{ts:.1f} rel_diff_vs_default {diffs}",
              flush=True)
        for label, fn in (("train", train), ("score", score)):
            for kname, us in kernels(fn):
                print(f"mlpat_kernel config:{name} {label} us:{us:.1f} {kname}")


if __name__ == "__main__":
    main()
