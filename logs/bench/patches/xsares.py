"""xsa_res at scoring's shape (M = 256 windows x 2,048 rows, y (M, 512), v (M, 256), w (512, 512)): the committed
kernel's launch configuration against others, and against the split forms (fused_gemm's MODE 4 then PyTorch's
residual and norm; and a MODE 4 copy with the residual in its epilogue, then the norm). CUDA-event medians of 20.

    python3 xsares.py            # from the repository root, on a GPU
"""
import statistics, sys
import torch
import torch.nn.functional as F
sys.path.insert(0, ".")
import train_gpt as tg
import triton
import triton.language as tl

dev = torch.device("cuda")
run = tg.fused_gemm()
cells = dict(zip(run.__code__.co_freevars, run.__closure__))
xsa_res_kernel, fused_gemm_kernel = cells["xsa_res_kernel"].cell_contents, cells["fused_gemm_kernel"].cell_contents
sms = torch.cuda.get_device_properties(dev).multi_processor_count
triton.set_allocator(lambda size, align, stream: torch.empty(size, dtype=torch.int8, device=dev))
M, K, N, G, LN = 256 * 2048, 512, 512, 2, 1 / 3 ** 0.5
g = torch.Generator(device=dev).manual_seed(0)
y = torch.randn(M, K, device=dev, generator=g).bfloat16()
v = torch.randn(M, K // G, device=dev, generator=g).bfloat16()
w = (torch.randn(N, K, device=dev, generator=g) / K ** 0.5).bfloat16()
x = torch.randn(M, N, device=dev, generator=g).bfloat16()
s = (torch.rand(N, device=dev, generator=g) + 0.5).bfloat16()


def timeit(fn, reps=20):
    fn(); torch.cuda.synchronize()
    out = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record(); fn(); b.record(); torch.cuda.synchronize()
        out.append(a.elapsed_time(b) * 1000)
    return statistics.median(out)


o_ref, n_ref = run(5, y, w, v, b_t=True, groups=G, res=(x, s, LN))


def res_cfg(BM, BK, warps, stages):
    o, n = torch.empty_like(x), torch.empty_like(x)
    def f():
        xsa_res_kernel[(min(sms, triton.cdiv(M, BM)),)](y, v, w, x, s, o, n, M, K, G, LN, BM=BM, BN=N // 2, BK=BK,
                                                         SMS=sms, num_warps=warps, num_stages=stages)
    us = timeit(f)
    return us, (o.float() - o_ref.float()).abs().max().item(), (n.float() - n_ref.float()).abs().max().item()


print(f"xsares device:{torch.cuda.get_device_name()} M:{M} triton:{triton.__version__}", flush=True)
for cfg in ((64, 64, 8, 2), (64, 32, 8, 2), (64, 32, 8, 3), (64, 32, 8, 4), (64, 64, 8, 1), (64, 128, 8, 1),
            (64, 64, 16, 2), (64, 32, 16, 3), (64, 32, 16, 4), (64, 16, 8, 6), (32, 64, 4, 3), (32, 64, 8, 3)):
    try:
        us, do, dn = res_cfg(*cfg)
        print(f"xsares kernel:xsa_res BM:{cfg[0]} BK:{cfg[1]} warps:{cfg[2]} stages:{cfg[3]} us:{us:.1f} "
              f"max_diff_o:{do:.3g} max_diff_n:{dn:.3g}", flush=True)
    except Exception as e:  # out of shared memory or registers
        print(f"xsares kernel:xsa_res BM:{cfg[0]} BK:{cfg[1]} warps:{cfg[2]} stages:{cfg[3]} failed:{type(e).__name__}",
              flush=True)


@triton.jit
def proj_res_kernel(a_ptr, b_ptr, h_ptr, x_ptr, s_ptr, o_ptr, M, N, K, G, BM: tl.constexpr, BN: tl.constexpr,
                    BK: tl.constexpr, GROUP_M: tl.constexpr, SMS: tl.constexpr):
    """fused_gemm MODE 4 (XSA in the operand load, b (N, K)) with o = x + s * c in the epilogue."""
    dt = o_ptr.dtype.element_ty
    a_d = tl.make_tensor_descriptor(a_ptr, [M, K], [K, 1], [BM, BK])
    b_d = tl.make_tensor_descriptor(b_ptr, [N, K], [K, 1], [BN, BK])
    o_d = tl.make_tensor_descriptor(o_ptr, [M, N], [N, 1], [BM, BN // 2])
    x_d = tl.make_tensor_descriptor(x_ptr, [M, N], [N, 1], [BM, BN // 2])
    v_d = tl.make_tensor_descriptor(h_ptr, [M, K // G], [K // G, 1], [BM, BK])
    tiles_m, tiles_n = tl.cdiv(M, BM), tl.cdiv(N, BN)
    for tile in tl.range(tl.program_id(0), tiles_m * tiles_n, SMS, flatten=True):
        first = tile // (GROUP_M * tiles_n) * GROUP_M
        rows = min(tiles_m - first, GROUP_M)
        om, on = (first + tile % (GROUP_M * tiles_n) % rows) * BM, tile % (GROUP_M * tiles_n) // rows * BN
        acc = tl.zeros((BM, BN), dtype=tl.float32)
        for k in range(tl.cdiv(K, BK)):
            b = b_d.load([on, k * BK]).T
            yy, vv = a_d.load([om, k * BK]).to(tl.float32), v_d.load([om, k // G * BK]).to(tl.float32)
            a = (yy - (tl.sum(yy * vv, 1) / tl.maximum(tl.sum(vv * vv, 1), 1e-24))[:, None] * vv).to(dt)
            acc = tl.dot(a, b, acc)
        c0, c1 = tl.split(tl.permute(tl.reshape(acc, (BM, 2, BN // 2)), (0, 2, 1)))
        for j in tl.static_range(2):
            c = (c0 if j == 0 else c1).to(dt).to(tl.float32)
            col = on + j * BN // 2 + tl.arange(0, BN // 2)
            r = x_d.load([om, on + j * BN // 2]).to(tl.float32) + tl.load(s_ptr + col).to(tl.float32)[None, :] * c
            o_d.store([om, on + j * BN // 2], r.to(dt))


norm = torch.compile(lambda o: F.rms_norm(o, (N,)) * LN)
resnorm = torch.compile(lambda x, a: (lambda o: (o, F.rms_norm(o, (N,)) * LN))(x + s * a))
mode4 = lambda: run(4, y, w, v, b_t=True, groups=G)
a4 = mode4()
o2 = torch.empty_like(x)
for BM, BN, warps, stages in ((128, 256, 8, 3), (128, 128, 8, 4), (64, 256, 8, 3)):
    def pr():
        proj_res_kernel[(min(sms, triton.cdiv(M, BM) * triton.cdiv(N, BN)),)](
            y, w, v, x, s, o2, M, N, K, G, BM=BM, BN=BN, BK=64, GROUP_M=8, SMS=sms, num_warps=warps, num_stages=stages)
    try:
        us = timeit(pr)
        print(f"xsares kernel:proj_res BM:{BM} BN:{BN} warps:{warps} stages:{stages} us:{us:.1f} "
              f"max_diff_o:{(o2.float() - o_ref.float()).abs().max().item():.3g}", flush=True)
    except Exception as e:
        print(f"xsares kernel:proj_res BM:{BM} BN:{BN} failed:{type(e).__name__}", flush=True)
print(f"xsares kernel:norm_only us:{timeit(lambda: norm(o2)):.1f} max_diff_n:"
      f"{(norm(o_ref).float() - n_ref.float()).abs().max().item():.3g}", flush=True)
print(f"xsares kernel:mode4 us:{timeit(mode4):.1f}", flush=True)
print(f"xsares kernel:residual_norm_compiled us:{timeit(lambda: resnorm(x, a4)):.1f}", flush=True)
print(f"xsares kernel:cublas_y_wT us:{timeit(lambda: y @ w.T):.1f}", flush=True)
print(f"xsares kernel:copy_x us:{timeit(lambda: x.clone()):.1f} (bytes {2 * x.numel() * 2 / 1e9:.2f} GB)", flush=True)
