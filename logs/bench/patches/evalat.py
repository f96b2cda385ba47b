"""The sliding evaluation's scoring graph compiled with several Inductor option sets, same train_gpt.py, same
weights: compile time, the template (tem) kernels Inductor chose, then the time over 4,096 windows at each of
EVALAT_ROWS windows per call (default 256), alternately, three repetitions; mean NLL compared.

    EVALAT="default gemm_autotune" EVALAT_ROWS="256 512" python3 evalat.py PATH/train_gpt.py
"""
import importlib.util, os, re, sys, time
import torch
from torch._inductor.utils import run_and_get_code
torch._dynamo.config.cache_size_limit = 64
dev = torch.device("cuda")
spec = importlib.util.spec_from_file_location("tg", sys.argv[1])
tg = sys.modules["tg"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tg)
VARIANTS = {
    "default": None,
    "gemm_autotune": {"max_autotune_gemm": True},
    "gemm_autotune_tma": {"max_autotune_gemm": True, "triton.enable_persistent_tma_matmul": True},
    "triton_only_tma": {"max_autotune_gemm": True, "max_autotune_gemm_backends": "TRITON",
                        "triton.enable_persistent_tma_matmul": True},
    "gemm_autotune_noprologue": {"max_autotune_gemm": True, "prologue_fusion": False},
    "gemm_autotune_tma_noprologue": {"max_autotune_gemm": True, "prologue_fusion": False,
                                     "triton.enable_persistent_tma_matmul": True},
    "triton_only_tma_noprologue": {"max_autotune_gemm": True, "max_autotune_gemm_backends": "TRITON",
                                   "prologue_fusion": False, "triton.enable_persistent_tma_matmul": True},
}
names = (os.environ.get("EVALAT") or " ".join(VARIANTS)).split()
h = tg.read_hyperparameters()
d = tg.Dist(rank=0, world_size=1, local_rank=0, device=dev, is_main=True, grad_accum_steps=8)
torch.manual_seed(0)
model = tg.GPT(h).to(dev)
with torch.no_grad():
    for p in model.parameters():
        p.add_(0.02 * torch.randn_like(p))
model.looping = True
torch.backends.cuda.matmul.allow_tf32 = True
nt = 4200 * h.eval_stride + h.eval_seq_len + 1
tokens = torch.randint(0, h.vocab_size, (nt,), device=dev, dtype=torch.int32)
val = tg.ValData(tokens=tokens, luts=None, sidecar=torch.ones_like(tokens))
plan = tg.window_plan(nt - 1, h.eval_seq_len, h.eval_stride)[1:4097]
nll, res = {}, {}
for n in names:
    tg_opts = VARIANTS[n]
    nll[n] = tg.maybe_compile(model.token_nll, dev) if tg_opts is None else torch.compile(
        model.token_nll, dynamic=False, options=tg_opts)
for rows in [int(r) for r in os.environ.get("EVALAT_ROWS", "256").split()]:
    h.val_batch_tokens = rows * h.eval_seq_len
    torch.cuda.reset_peak_memory_stats()
    for n in names:
        t0 = time.perf_counter()
        _, codes = run_and_get_code(tg.score_windows, h, nll[n], val, plan[:rows], h.eval_stride, d)
        torch.cuda.synchronize()
        src = "\n".join(codes)
        kernels = set(re.findall(r"def (triton_\w+)\(", src))
        tem = sorted(k for k in kernels if "tem" in k)
        print(f"evalat rows:{rows} variant:{n} compile_s:{time.perf_counter() - t0:.1f} kernels:{len(kernels)} "
              f"templates:{len(tem)} extern_mm:{len(re.findall(r'extern_kernels.(?:add|b)?mm', src))} {' '.join(tem)}",
              flush=True)
    for rep in range(3):
        for n in names:
            t0 = time.perf_counter()
            st = tg.score_windows(h, nll[n], val, plan, h.eval_stride, d)
            torch.cuda.synchronize()
            res.setdefault((rows, n), []).append(1000 * (time.perf_counter() - t0))
            res[("nll", rows, n)] = (st[0] / st[1]).item()
    for n in names:
        e = res[(rows, n)]
        print(f"evalat rows:{rows} variant:{n} eval_ms:{' '.join(f'{v:.0f}' for v in e)} median:{sorted(e)[1]:.0f} "
              f"mean_nll:{res[('nll', rows, n)]:.8f} peak_mib:{torch.cuda.max_memory_allocated() >> 20}", flush=True)
