"""Whether Triton 3.6 warp-specialises fused_gemm_kernel's persistent loop on Hopper (tl.range(..., warp_specialize=
True), so that a tile's epilogue overlaps the next tile's loads): the kernel's source from train_gpt.py with that
flag, timed against the committed kernel for scoring's act(x W1^T) and q rope at M = 524,288. CUDA-event medians.

    python3 gemmws.py            # from the repository root, on a GPU
"""
import importlib.util, re, statistics, sys, textwrap
import torch
sys.path.insert(0, ".")
import train_gpt as tg
import triton

src = open("train_gpt.py").read()
body = re.search(r"    @triton\.jit\n    def fused_gemm_kernel.*?(?=\n    @triton\.jit)", src, re.S)[0]
body = textwrap.dedent(body).replace("flatten=True)", "flatten=True, warp_specialize=True)")
open("/tmp/ws_kernel.py", "w").write("import triton\nimport triton.language as tl\n\n" + body + "\n")
spec = importlib.util.spec_from_file_location("ws_kernel", "/tmp/ws_kernel.py")
ws = importlib.util.module_from_spec(spec); spec.loader.exec_module(ws)
dev = torch.device("cuda")
run = tg.fused_gemm()
kern = dict(zip(run.__code__.co_freevars, run.__closure__))["fused_gemm_kernel"].cell_contents
sms = torch.cuda.get_device_properties(dev).multi_processor_count
triton.set_allocator(lambda size, align, stream: torch.empty(size, dtype=torch.int8, device=dev))
g = torch.Generator(device=dev).manual_seed(0)
S, D, F = 256 * 2048, 512, 2048
x = torch.randn(S, D, device=dev, generator=g).bfloat16()
w1 = (torch.randn(F, D, device=dev, generator=g) / D ** 0.5).bfloat16()
wq = (torch.randn(D, D, device=dev, generator=g) / D ** 0.5).bfloat16()
cos, sin = tg.rotary_cos_sin(2048, 16, 10000.0, 2048, dev)
cs, sn = tg.rope_tables(cos, sin, 64, torch.bfloat16)
gq = torch.ones(D, device=dev, dtype=torch.bfloat16)


def timeit(fn, reps=20):
    fn(); torch.cuda.synchronize()
    out = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record(); fn(); b.record(); torch.cuda.synchronize()
        out.append(a.elapsed_time(b) * 1000)
    return statistics.median(out)


print(f"gemmws device:{torch.cuda.get_device_name()} triton:{triton.__version__}", flush=True)
for name, mode, w, tables in (("mlp_act", 1, w1, None), ("q_rope", 3, wq, (cs, sn, gq))):
    N = w.size(0)
    grid = min(sms, triton.cdiv(S, 128) * triton.cdiv(N, 256))
    outs = {}
    for label, k in (("committed", kern), ("warp_specialize", ws.fused_gemm_kernel)):
        for stages in (3, 4):
            o = x.new_empty(S, N)
            c, s_, gg = tables or (o, o, o)
            f = lambda: k[(grid,)](x, w, o, o, o, c, s_, gg, S, N, D, 2048, 1, MODE=mode, B_T=True, R=16, BM=128,
                                   BN=256, BK=64, GROUP_M=8, SMS=grid, num_warps=8, num_stages=stages)
            try:
                us = timeit(f)
                outs[(label, stages)] = o
                diff = (o.float() - outs[("committed", 3)].float()).abs().max().item()
                print(f"gemmws use:{name} kernel:{label} stages:{stages} us:{us:.1f} max_diff:{diff:.3g}", flush=True)
            except Exception as e:
                print(f"gemmws use:{name} kernel:{label} stages:{stages} failed:{type(e).__name__}:{str(e)[:120]}",
                      flush=True)
