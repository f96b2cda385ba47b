"""train_gpt.py versions in one process, same weights: sliding-evaluation time over 4,096 windows at 256 and at
32 windows per call (one GPU's batch, and each of 8 ranks'), alternately, three repetitions; mean NLL compared.
Also counts the Inductor kernels of each version's scoring graph whose names show an embedding gather.

    python3 evalab.py NAME=PATH NAME=PATH ...     # the first version's perturbed weights are loaded into the others
"""
import importlib.util, os, re, sys, time
import torch
from torch._inductor.utils import run_and_get_code
dev = torch.device("cuda")
ROWS = [int(r) for r in os.environ.get("EVALAB_ROWS", "256 32").split()]
mods = {}
for arg in sys.argv[1:]:
    name, path = arg.split("=", 1)
    spec = importlib.util.spec_from_file_location(f"tg_{name}", path)
    mods[name] = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mods[name])
names = list(mods)
ref = mods[names[0]]
h = ref.read_hyperparameters()
d = ref.Dist(rank=0, world_size=1, local_rank=0, device=dev, is_main=True, grad_accum_steps=8)
torch.manual_seed(0)
models = {n: m.GPT(h).to(dev) for n, m in mods.items()}
with torch.no_grad():
    for p in models[names[0]].parameters():
        p.add_(0.02 * torch.randn_like(p))
for n in names[1:]:
    models[n].load_state_dict(models[names[0]].state_dict())
for mdl in models.values():
    mdl.looping = True
nt = 4200 * h.eval_stride + h.eval_seq_len + 1
tokens = torch.randint(0, h.vocab_size, (nt,), device=dev, dtype=torch.int32)
val = ref.ValData(tokens=tokens, luts=None, sidecar=torch.ones_like(tokens))
plan = ref.window_plan(nt - 1, h.eval_seq_len, h.eval_stride)[1:4097]
for rows in ROWS:
    h.val_batch_tokens = rows * h.eval_seq_len
    nll = {n: mods[n].maybe_compile(models[n].token_nll, dev) for n in names}
    res = {}
    for n in names:
        _, codes = run_and_get_code(mods[n].score_windows, h, nll[n], val, plan[:rows], h.eval_stride, d)
        kernels = set(re.findall(r"def (triton_\w+)\(", "\n".join(codes)))
        emb = sorted(k for k in kernels if "embedding" in k)
        print(f"evalab rows:{rows} variant:{n} kernels:{len(kernels)} with_embedding:{len(emb)} {' '.join(emb)}")
    torch.cuda.synchronize()
    for rep in range(3):
        for n in names:
            t0 = time.perf_counter()
            st = mods[n].score_windows(h, nll[n], val, plan, h.eval_stride, d)
            torch.cuda.synchronize()
            res.setdefault(n, []).append(1000 * (time.perf_counter() - t0))
            res[("nll", n)] = (st[0] / st[1]).item()
    for n in names:
        e = res[n]
        print(f"evalab rows:{rows} variant:{n} eval_ms:{' '.join(f'{v:.0f}' for v in e)} median:{sorted(e)[1]:.0f} "
              f"mean_nll:{res[('nll', n)]:.8f}", flush=True)
