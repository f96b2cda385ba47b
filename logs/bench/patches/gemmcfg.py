"""fused_gemm_kernel's launch configurations per use, at scoring's and training's shapes: tile (BM x BN, BK = 64, one
query head per 64 columns), warps, stages, and CTAs per SM (the persistent grid is CTAS x SMs, or one CTA per tile
when CTAS = 0). The committed configuration is 128 x 256, 8 warps, 3 stages, 1 CTA per SM. Each result is compared
with the committed configuration's output. CUDA-event medians of 20.

    python3 gemmcfg.py            # from the repository root, on a GPU
"""
import statistics, sys
import torch
sys.path.insert(0, ".")
import train_gpt as tg
import triton

dev = torch.device("cuda")
run = tg.fused_gemm()
kern = dict(zip(run.__code__.co_freevars, run.__closure__))["fused_gemm_kernel"].cell_contents
sms = torch.cuda.get_device_properties(dev).multi_processor_count
triton.set_allocator(lambda size, align, stream: torch.empty(size, dtype=torch.int8, device=dev))
g = torch.Generator(device=dev).manual_seed(0)
rnd = lambda *s, scale=1.0: (torch.randn(*s, device=dev, generator=g) * scale).bfloat16()
S, D, F, R = 256 * 2048, 512, 2048, 16
cos, sin = tg.rotary_cos_sin(2048, R, 10000.0, 2048, dev)
cs, sn = tg.rope_tables(cos, sin, 64, torch.bfloat16)
x, xt, dy = rnd(S, D), rnd(98304, D), rnd(98304, D)
w1, w2, wq, wk, wo = rnd(F, D, scale=D ** -0.5), rnd(D, F, scale=F ** -0.5), rnd(D, D, scale=D ** -0.5), \
    rnd(256, D, scale=D ** -0.5), rnd(D, D, scale=D ** -0.5)
y, v, hh = rnd(S, D), rnd(S, 256), rnd(98304, F)
gq = (torch.rand(D, device=dev, generator=g) + 0.5).bfloat16()
# name: (MODE, a, b, h, B_T, tables, G)
USES = {
    "mlp_act_scoring": (1, x, w1, None, True, None, 1),
    "q_rope_scoring": (3, x, wq, None, True, (cs, sn, gq), 1),
    "k_rope_scoring": (3, x, wk, None, True, (cs, sn, gq[:256]), 1),
    "xsa_proj_scoring": (4, y, wo, v, True, None, 2),
    "mlp_up_training": (2, xt, w1, None, True, None, 1),
    "mlp_dh_training": (0, dy, w2, hh, False, None, 1),
}


def timeit(fn, reps=20):
    fn(); torch.cuda.synchronize()
    out = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record(); fn(); b.record(); torch.cuda.synchronize()
        out.append(a.elapsed_time(b) * 1000)
    return statistics.median(out)


def launch(use, BM, BN, warps, stages, ctas, GM=8):
    mode, a, b, h, b_t, tables, G = USES[use]
    M, K = a.shape
    N = b.size(0) if b_t else b.size(1)
    o = a.new_empty(M, N)
    o2 = a.new_empty(M, N) if mode == 2 else o
    c, s_, gg = tables or (o, o, o)
    tiles = triton.cdiv(M, BM) * triton.cdiv(N, BN)
    grid = tiles if ctas == 0 else min(ctas * sms, tiles)
    f = lambda: kern[(grid,)](a, b, o if h is None else h, o, o2, c, s_, gg, M, N, K, c.size(0), G, MODE=mode, B_T=b_t,
                              R=R, BM=BM, BN=BN, BK=64, GROUP_M=GM, SMS=grid, num_warps=warps, num_stages=stages)
    return f, o


print(f"gemmcfg device:{torch.cuda.get_device_name()} triton:{triton.__version__} sms:{sms}", flush=True)
CFGS = ((128, 256, 8, 3, 1), (128, 256, 8, 4, 1), (128, 256, 8, 3, 0), (128, 128, 4, 3, 2), (128, 128, 4, 4, 2),
        (128, 128, 8, 4, 2), (128, 128, 8, 3, 1), (128, 128, 4, 4, 0), (64, 256, 4, 4, 2), (256, 128, 8, 3, 1))
for use in USES:
    ref = None
    for cfg in CFGS:
        tag = f"gemmcfg use:{use} BM:{cfg[0]} BN:{cfg[1]} warps:{cfg[2]} stages:{cfg[3]} ctas_per_sm:{cfg[4]}"
        try:
            f, o = launch(use, *cfg)
            us = timeit(f)
            if ref is None:
                ref, base = o.clone(), us
            diff = (o.float() - ref.float()).abs().max().item()
            print(f"{tag} us:{us:.1f} vs_committed:{us / base:.3f} max_diff:{diff:.3g}", flush=True)
        except Exception as e:
            print(f"{tag} failed:{type(e).__name__}:{str(e)[:80]}", flush=True)
    mode, a, b, h, b_t, tables, G = USES[use]
    bb = b.T if b_t else b
    print(f"gemmcfg use:{use} cublas_product_us:{timeit(lambda: a @ bb):.1f}", flush=True)
