"""Micro-benchmark of causal grouped-KV attention at the training shape (not a test; CUDA only).

    python tools/bench_attention.py [--batch 48] [--seq 2048] [--heads 8] [--kv-heads 4] [--head-dim 64]

Times forward+backward of every way this machine can compute train_gpt's attention: PyTorch SDPA with
`enable_gqa` (its own backend choice, then each backend forced), SDPA on K/V expanded to all query heads
(default choice and each backend forced), FlexAttention (compiled, causal block mask, `enable_gqa`),
FlashAttention 3 when importable, and train_gpt's own attention (`train_gpt.causal_attention` on (B, T, H, D)
tensors, as the model calls it) with SDPA and with the backend train_gpt picks when that is FlashAttention 3 or 4:
for FlashAttention 4 its custom ops, the grouped forward and the backward per member of the query-head groups.
Every variant accumulates into leaf gradients, which the model's attention does not. Each result is checked
against an fp32 reference (relative error of the output and of dq) and timed with CUDA events (median of --reps)
and by its kernels' total time per call (torch.profiler).
One `key:value` line per variant; variants a backend cannot run print `unsupported` with the reason's first line.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import train_gpt as tg  # noqa: E402

BACKENDS = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
            "cudnn": SDPBackend.CUDNN_ATTENTION}


def sdpa(q, k, v, expand: bool):
    """q: (B, H, T, D), k/v: (B, Hkv, T, D) -> (B, H, T, D)."""
    if expand:
        g = q.size(1) // k.size(1)
        k, v = k.repeat_interleave(g, dim=1), v.repeat_interleave(g, dim=1)
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)


def fa3(q, k, v):
    from flash_attn_interface import flash_attn_func

    out = flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal=True)
    return (out[0] if isinstance(out, tuple) else out).transpose(1, 2)


@functools.cache
def flex_attention_fn(T: int):
    """Compiled FlexAttention with a causal block mask; grouped heads inside the kernel (no expanded K/V)."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    mask = create_block_mask(lambda b, h, qi, ki: qi >= ki, None, None, T, T, device="cuda")
    fn = torch.compile(flex_attention, dynamic=False)
    return lambda q, k, v: fn(q, k, v, block_mask=mask, enable_gqa=True)


def median_ms(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def kernel_ms(fn, reps: int) -> float:
    """Mean GPU kernel time per call (torch.profiler): wall time can be the host's, FlashAttention 4's Python
    launcher costs more than its kernels at this shape in eager mode, where the model's compiled step hides it."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
    cuda = torch.autograd.DeviceType.CUDA
    return sum(e.self_device_time_total for e in prof.key_averages() if e.device_type == cuda) / 1000 / reps


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=48)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--reps", type=int, default=20)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_attention: CUDA is required", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    B, T, H, Hkv, D = args.batch, args.seq, args.heads, args.kv_heads, args.head_dim
    mk = lambda h: torch.randn(B, h, T, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)  # noqa: E731
    q, k, v = mk(H), mk(Hkv), mk(Hkv)
    grad = torch.randn(B, H, T, D, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():  # fp32 reference on the first 2 sequences (keeps the math backend's memory small)
        qr, kr, vr = (t[:2].float().requires_grad_() for t in (q, k, v))
    with torch.enable_grad():
        ref = sdpa(qr, kr, vr, expand=True)
        ref.backward(grad[:2].float())
    flops = 4 * B * H * T * T * D / 2 * 3.5  # causal QK^T and PV forward (2 matmuls), backward 2.5x forward
    # train_gpt's path takes (B, T, H, D) leaves; step() transposes its output and gradient back for the checks
    qt, kt, vt = (t.detach().transpose(1, 2).contiguous().requires_grad_() for t in (q, k, v))
    variants = [("sdpa_gqa_default", lambda: sdpa(q, k, v, False), None)]
    variants += [(f"sdpa_gqa_{n}", lambda: sdpa(q, k, v, False), b) for n, b in BACKENDS.items()]
    variants += [("sdpa_expand_default", lambda: sdpa(q, k, v, True), None)]
    variants += [(f"sdpa_expand_{n}", lambda: sdpa(q, k, v, True), b) for n, b in BACKENDS.items()]
    variants += [("flex_gqa_compiled", lambda: flex_attention_fn(T)(q, k, v), None)]
    try:
        import flash_attn_interface  # noqa: F401

        variants.append(("flash_attn_3", lambda: fa3(q, k, v), None))
    except ImportError:
        print("flash_attn_3: not importable")
    backends = ["sdpa"] + [b for b in [tg.attention_backend()] if b != "sdpa"]
    variants += [(f"train_gpt_{b}", functools.partial(tg.causal_attention, qt, kt, vt, b), "bthd") for b in backends]
    print(f"shape B:{B} T:{T} H:{H} Hkv:{Hkv} D:{D} torch:{torch.__version__} "
          f"device:{torch.cuda.get_device_name()}")
    grad_t = grad.transpose(1, 2).contiguous()
    for name, fn, backend in variants:
        bthd = backend == "bthd"

        def step(backend=backend, fn=fn, bthd=bthd):
            with sdpa_kernel([backend]) if backend not in (None, "bthd") else contextlib.nullcontext():
                out = fn()
                out.backward(grad_t if bthd else grad)
            return out.transpose(1, 2) if bthd else out

        try:
            q.grad = qt.grad = None
            out = step()
            dq = qt.grad.transpose(1, 2) if bthd else q.grad
            err = ((out[:2].float() - ref).norm() / ref.norm()).item()
            derr = ((dq[:2].float() - qr.grad).norm() / qr.grad.norm()).item()
            step()
            ms = median_ms(step, args.reps)
            kms = kernel_ms(step, args.reps)
        except RuntimeError as e:
            print(f"{name}: unsupported ({str(e).strip().splitlines()[0][:160]})")
            continue
        peak = torch.cuda.max_memory_allocated() // 2**20
        print(f"{name}: fwd_bwd_ms:{ms:.2f} kernel_ms:{kms:.2f} tflops:{flops / ms / 1e9:.0f} rel_err_out:{err:.1e} "
              f"rel_err_dq:{derr:.1e} peak_mib:{peak}")
        torch.cuda.reset_peak_memory_stats()
    return 0


if __name__ == "__main__":
    sys.exit(main())
