"""Forward attention kernels at scoring's shapes (1 GPU, bf16), CUDA-event medians of 10 after 3 warm-up calls.

    python3 attnfwd.py

Full rows: q, k, v of 256 windows x 2,048 positions, 8 query heads, 4 KV heads, 64 dims, causal; SDPA's own choice
(what train_gpt runs), each SDPA backend forced, cuDNN with K/V expanded to the query heads beforehand (and the
expansion's own time), and PyTorch's FlashAttention 2 op called directly. Last rows: the final block's 64 query
rows against 2,048 keys; train_gpt's last_rows_attention (fp32 scores) against the FlashAttention 2 op (end-aligned
causal). Each line gives the largest difference from the reference output (SDPA's choice; last_rows_attention)."""
import statistics
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, ".")
import train_gpt as tg  # noqa: E402

B, T, H, HKV, D, N = 256, 2048, 8, 4, 64, 64
dev = torch.device("cuda")
g = torch.Generator(device=dev).manual_seed(0)
q, k, v = (torch.randn(B, h, T, D, device=dev, dtype=torch.bfloat16, generator=g) for h in (H, HKV, HKV))


def timed(fn):
    for _ in range(3):
        out = fn()
    ms = []
    for _ in range(10):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        ms.append(a.elapsed_time(b))
    return statistics.median(ms), out


def report(name, fn, ref=None):
    try:
        ms, out = timed(fn)
    except RuntimeError as e:
        print(f"attnfwd {name} unavailable: {str(e).splitlines()[0][:150]}", flush=True)
        return None
    diff = "" if ref is None else f" max_abs_diff:{(out.float() - ref.float()).abs().max().item():.3e}"
    print(f"attnfwd {name} us:{1000 * ms:.0f}{diff}", flush=True)
    return out


print(f"attnfwd device:{torch.cuda.get_device_name()} torch:{torch.__version__} B:{B} T:{T} H:{H} Hkv:{HKV} D:{D}")
sdpa = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)  # noqa: E731
ref = report("full sdpa_choice", sdpa)
for name, be in (("cudnn", SDPBackend.CUDNN_ATTENTION), ("flash", SDPBackend.FLASH_ATTENTION),
                 ("efficient", SDPBackend.EFFICIENT_ATTENTION)):
    def forced(be=be):
        with sdpa_kernel(be):
            return sdpa()
    report(f"full sdpa_{name}", forced, ref)
ke, ve = k.repeat_interleave(H // HKV, 1), v.repeat_interleave(H // HKV, 1)


def expanded():
    with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
        return F.scaled_dot_product_attention(q, ke, ve, is_causal=True)


report("full cudnn_pre_expanded_kv", expanded, ref)
report("full expand_kv_only", lambda: (k.repeat_interleave(H // HKV, 1), v.repeat_interleave(H // HKV, 1))[0])
report("full aten_flash_op", lambda: torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, 0.0, True)[0], ref)
ql = q[:, :, T - N :].transpose(1, 2).contiguous()  # (B, N, H, D) as the model's
kt, vt = k.transpose(1, 2), v.transpose(1, 2)
lref = report("last_rows last_rows_attention", lambda: tg.last_rows_attention(ql, kt, vt))
report("last_rows aten_flash_op", lambda: torch.ops.aten._scaled_dot_product_flash_attention(
    ql.transpose(1, 2), k, v, 0.0, True)[0].transpose(1, 2), lref)
