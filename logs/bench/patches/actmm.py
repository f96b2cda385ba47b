"""The MLP's products with the activation (or its derivative) in a Triton epilogue, against cuBLAS + Inductor's
element-wise pass (GPU experiment, call AM).

    python actmm.py [--modes bwd,fwd_eval,fwd_train,plain] [--quick]

train_gpt's MLP is proj(leaky_relu(fc(x), 0.5)^2); act(h) = leaky_relu(h, 0.5)^2, act'(h) = 2h (h > 0), h/2 else.
Modes (M rows, K = 512, N = 2048):
  bwd        dH = act'(h) * bf16(dy @ W2)          M = 98,304 (one training micro-batch)
  fwd_eval   a  = act(bf16(x @ W1^T))              M = 524,288 (256 scoring windows)
  fwd_train  h  = bf16(x @ W1^T), a = act(h)       M = 98,304
  plain      h  = bf16(x @ W1^T)                   M = 98,304 (the kernel's product alone, against cuBLAS)
The reference is torch.compile of the same formula (Inductor default: a cuBLAS product and a pointwise kernel).
The product is rounded to bf16 before the epilogue, as the reference's cuBLAS output is.
Each kernel variant is timed with triton.testing.do_bench (median), checked against the reference
(||out - ref|| / ||ref||) and against float64. Prints one line per variant and a table last.
"""
import argparse
import itertools
import sys

import torch
import torch.nn.functional as F
import triton
import triton.language as tl


def act(h):
    return F.leaky_relu(h, 0.5).square()


def act_grad(dA, h):
    return dA * torch.where(h > 0, 2 * h, 0.5 * h)


@triton.jit
def _tile(tile_id, num_pid_m, num_pid_n, GROUP_M: tl.constexpr):
    group = GROUP_M * num_pid_n
    first_m = (tile_id // group) * GROUP_M
    size_m = min(num_pid_m - first_m, GROUP_M)
    return first_m + (tile_id % group) % size_m, (tile_id % group) // size_m


@triton.jit
def _epilogue(acc, h, MODE: tl.constexpr):
    x = acc.to(tl.bfloat16).to(tl.float32)
    if MODE == 1:
        hh = h.to(tl.float32)
        return x * tl.where(hh > 0, 2.0 * hh, 0.5 * hh)
    elif MODE == 2 or MODE == 3:
        lr = tl.where(x > 0, x, 0.5 * x)
        return lr * lr
    else:
        return x


@triton.jit
def mm_desc(a_ptr, b_ptr, h_ptr, o_ptr, o2_ptr, M, N, K,
            BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr, NUM_SMS: tl.constexpr,
            MODE: tl.constexpr, B_TRANS: tl.constexpr, WS: tl.constexpr, FLAT: tl.constexpr, SUB: tl.constexpr):
    """Persistent, TMA descriptors. a (M, K); b (K, N), or (N, K) when B_TRANS; h, o, o2 (M, N); all row-major."""
    a_d = tl.make_tensor_descriptor(a_ptr, [M, K], [K, 1], [BM, BK])
    if B_TRANS:
        b_d = tl.make_tensor_descriptor(b_ptr, [N, K], [K, 1], [BN, BK])
    else:
        b_d = tl.make_tensor_descriptor(b_ptr, [K, N], [N, 1], [BK, BN])
    o_d = tl.make_tensor_descriptor(o_ptr, [M, N], [N, 1], [BM, BN // SUB])
    h_d = tl.make_tensor_descriptor(h_ptr, [M, N], [N, 1], [BM, BN // SUB])
    o2_d = tl.make_tensor_descriptor(o2_ptr, [M, N], [N, 1], [BM, BN // SUB])
    num_pid_m = tl.cdiv(M, BM)
    num_pid_n = tl.cdiv(N, BN)
    k_tiles = tl.cdiv(K, BK)
    for tile_id in tl.range(tl.program_id(0), num_pid_m * num_pid_n, NUM_SMS, flatten=FLAT, warp_specialize=WS):
        pid_m, pid_n = _tile(tile_id, num_pid_m, num_pid_n, GROUP_M)
        om, on = pid_m * BM, pid_n * BN
        acc = tl.zeros((BM, BN), dtype=tl.float32)
        for ki in range(k_tiles):
            a = a_d.load([om, ki * BK])
            if B_TRANS:
                b = b_d.load([on, ki * BK]).T
            else:
                b = b_d.load([ki * BK, on])
            acc = tl.dot(a, b, acc)
        if SUB == 2:
            acc3 = tl.reshape(acc, (BM, 2, BN // 2))
            acc3 = tl.permute(acc3, (0, 2, 1))
            acc0, acc1 = tl.split(acc3)
            h0 = h_d.load([om, on]) if MODE == 1 else acc0
            h1 = h_d.load([om, on + BN // 2]) if MODE == 1 else acc1
            if MODE == 3:
                o2_d.store([om, on], acc0.to(tl.bfloat16))
                o2_d.store([om, on + BN // 2], acc1.to(tl.bfloat16))
            o_d.store([om, on], _epilogue(acc0, h0, MODE).to(tl.bfloat16))
            o_d.store([om, on + BN // 2], _epilogue(acc1, h1, MODE).to(tl.bfloat16))
        else:
            h = h_d.load([om, on]) if MODE == 1 else acc
            if MODE == 3:
                o2_d.store([om, on], acc.to(tl.bfloat16))
            o_d.store([om, on], _epilogue(acc, h, MODE).to(tl.bfloat16))


@triton.jit
def mm_ptr(a_ptr, b_ptr, h_ptr, o_ptr, o2_ptr, M, N, K, sbk, sbn,
           BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr, MODE: tl.constexpr,
           STAGES: tl.constexpr):
    """One tile per program, pointer loads (cp.async pipelining). b is read as b[k, n] = b_ptr[k*sbk + n*sbn]."""
    num_pid_m = tl.cdiv(M, BM)
    num_pid_n = tl.cdiv(N, BN)
    pid_m, pid_n = _tile(tl.program_id(0), num_pid_m, num_pid_n, GROUP_M)
    rm = pid_m * BM + tl.arange(0, BM)
    rn = pid_n * BN + tl.arange(0, BN)
    rk = tl.arange(0, BK)
    a_p = a_ptr + rm[:, None].to(tl.int64) * K + rk[None, :]
    b_p = b_ptr + rk[:, None] * sbk + rn[None, :] * sbn
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for _ in tl.range(0, K, BK, num_stages=STAGES):
        acc = tl.dot(tl.load(a_p), tl.load(b_p), acc)
        a_p += BK
        b_p += BK * sbk
    off = rm[:, None].to(tl.int64) * N + rn[None, :]
    h = tl.load(h_ptr + off) if MODE == 1 else acc
    if MODE == 3:
        tl.store(o2_ptr + off, acc.to(tl.bfloat16))
    tl.store(o_ptr + off, _epilogue(acc, h, MODE).to(tl.bfloat16))


MODE_ID = {"plain": 0, "bwd": 1, "fwd_eval": 2, "fwd_train": 3}


def run_desc(cfg, mode, a, b, h, b_trans):
    BM, BN, BK, GM, warps, stages, ws, flat, sub = cfg
    M, K = a.shape
    N = b.shape[0] if b_trans else b.shape[1]
    o = torch.empty(M, N, device=a.device, dtype=torch.bfloat16)
    o2 = torch.empty_like(o) if mode == "fwd_train" else o
    nsm = torch.cuda.get_device_properties(a.device).multi_processor_count
    tiles = triton.cdiv(M, BM) * triton.cdiv(N, BN)
    mm_desc[(min(nsm, tiles),)](a, b, h if h is not None else o, o, o2, M, N, K, BM=BM, BN=BN, BK=BK, GROUP_M=GM,
                                NUM_SMS=nsm, MODE=MODE_ID[mode], B_TRANS=b_trans, WS=ws, FLAT=flat, SUB=sub,
                                num_warps=warps, num_stages=stages)
    return (o2, o) if mode == "fwd_train" else o


def run_ptr(cfg, mode, a, b, h, b_trans):
    BM, BN, BK, GM, warps, stages = cfg
    M, K = a.shape
    if b_trans:  # b is (N, K): b[k, n] at n*K + k
        N, sbk, sbn = b.shape[0], 1, K
    else:
        N, sbk, sbn = b.shape[1], b.shape[1], 1
    o = torch.empty(M, N, device=a.device, dtype=torch.bfloat16)
    o2 = torch.empty_like(o) if mode == "fwd_train" else o
    grid = (triton.cdiv(M, BM) * triton.cdiv(N, BN),)
    mm_ptr[grid](a, b, h if h is not None else o, o, o2, M, N, K, sbk, sbn, BM=BM, BN=BN, BK=BK, GROUP_M=GM,
                 MODE=MODE_ID[mode], STAGES=stages, num_warps=warps, num_stages=stages)
    return (o2, o) if mode == "fwd_train" else o


def relerr(x, ref):
    x, ref = x.double(), ref.double()
    return ((x - ref).norm() / ref.norm()).item()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--modes", default="bwd,fwd_eval,fwd_train,plain")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    dev = torch.device("cuda")
    triton.set_allocator(lambda size, align, stream: torch.empty(size, dtype=torch.int8, device=dev))
    print("device", torch.cuda.get_device_name(), "torch", torch.__version__, "triton", triton.__version__, flush=True)
    D, Hd = 512, 2048
    g = torch.Generator(device=dev).manual_seed(0)
    w1 = (torch.randn(Hd, D, device=dev, generator=g) / D**0.5).bfloat16()
    w2 = (torch.randn(D, Hd, device=dev, generator=g) / Hd**0.5).bfloat16()
    table = []
    bench = lambda fn: triton.testing.do_bench(fn, warmup=50, rep=300, return_mode="median") * 1000
    for mode in args.modes.split(","):
        M = 524288 if mode == "fwd_eval" else 98304
        x = torch.randn(M, D, device=dev, generator=g).bfloat16()
        if mode == "bwd":
            a_in, b_in, b_trans = torch.randn(M, D, device=dev, generator=g).bfloat16() * 0.01, w2, False
            h = torch.randn(M, Hd, device=dev, generator=g).bfloat16()
            ref_fn = torch.compile(lambda dy, w, h: act_grad(dy @ w, h))
            ref_call = lambda: ref_fn(a_in, b_in, h)
            mm_only = lambda: a_in @ b_in
            f64 = lambda: act_grad((a_in.double() @ b_in.double()), h.double())
        else:
            a_in, b_in, b_trans, h = x, w1, True, None
            if mode == "fwd_eval":
                ref_fn = torch.compile(lambda x, w: act(F.linear(x, w)))
                f64 = lambda: act(a_in.double() @ b_in.double().T)
            elif mode == "fwd_train":
                ref_fn = torch.compile(lambda x, w: (lambda hh: (hh, act(hh)))(F.linear(x, w)))
                f64 = lambda: (a_in.double() @ b_in.double().T, act(a_in.double() @ b_in.double().T))
            else:
                ref_fn = torch.compile(lambda x, w: F.linear(x, w))
                f64 = lambda: a_in.double() @ b_in.double().T
            ref_call = lambda: ref_fn(a_in, b_in)
            mm_only = lambda: F.linear(a_in, b_in)
        with torch.no_grad():
            ref = ref_call()
            t_ref, t_mm = bench(ref_call), bench(mm_only)
            exact = f64()
        last = lambda o: o[-1] if isinstance(o, tuple) else o
        e_ref = relerr(last(ref), last(exact))
        print(f"{mode} M={M} reference_us={t_ref:.1f} cublas_mm_us={t_mm:.1f} ref_err_f64={e_ref:.2e}", flush=True)
        table.append((mode, "reference (Inductor: cuBLAS + pointwise)", t_ref, e_ref, 0.0))
        table.append((mode, "cuBLAS product alone", t_mm, float("nan"), float("nan")))
        desc_cfgs = [(128, 256, 64, 8, 8, 3, False, False, 1), (128, 256, 64, 8, 8, 3, False, False, 2),
                     (128, 256, 64, 8, 8, 4, False, False, 2), (128, 128, 64, 8, 8, 4, False, False, 1),
                     (128, 128, 64, 8, 4, 4, False, False, 1), (128, 256, 64, 8, 8, 3, True, True, 2),
                     (128, 128, 64, 8, 4, 4, True, True, 1), (128, 256, 64, 8, 8, 3, False, True, 2),
                     (128, 128, 64, 8, 8, 4, True, True, 1)]
        ptr_cfgs = [(128, 256, 64, 8, 8, 3), (128, 128, 64, 8, 4, 4), (128, 128, 64, 8, 8, 4),
                    (256, 128, 64, 8, 8, 3), (128, 256, 64, 8, 8, 4)]
        if args.quick:
            desc_cfgs, ptr_cfgs = desc_cfgs[:2], ptr_cfgs[:1]
        for kind, cfgs, runner in (("desc", desc_cfgs, run_desc), ("ptr", ptr_cfgs, run_ptr)):
            for cfg in cfgs:
                name = f"{kind} " + "/".join(str(int(c)) for c in cfg)
                try:
                    call = lambda: runner(cfg, mode, a_in, b_in, h, b_trans)
                    with torch.no_grad():
                        out = call()
                        torch.cuda.synchronize()
                        if isinstance(out, tuple):
                            e_h = relerr(out[0], ref[0])
                        out_last = last(out)
                        e_vs_ref = relerr(out_last, last(ref))
                        e64 = relerr(out_last, last(exact))
                        ok = bool(torch.isfinite(out_last).all()) and e64 < 2 * e_ref + 1e-3
                        t = bench(call)
                    extra = f" h_err_vs_ref={e_h:.2e}" if isinstance(out, tuple) else ""
                    print(f"{mode} {name} us={t:.1f} err_vs_ref={e_vs_ref:.2e} err_f64={e64:.2e} ok={ok}{extra}",
                          flush=True)
                    table.append((mode, name, t, e64, e_vs_ref))
                except Exception as ex:
                    print(f"{mode} {name} FAILED {type(ex).__name__}: {str(ex)[:300]}", flush=True)
        del x, a_in, h
        torch.cuda.empty_cache()
    print("\n| mode | variant (BM/BN/BK/GROUP_M/warps/stages[/ws/flatten/subtile]) | us | err vs f64 | err vs ref |")
    print("|---|---|---|---|---|")
    for mode, name, t, e, er in table:
        print(f"| {mode} | {name} | {t:.1f} | {e:.2e} | {er:.2e} |")


if __name__ == "__main__":
    sys.exit(main())
