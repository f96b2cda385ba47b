"""Two train_gpt.py versions in one process, same weights: sliding-evaluation time (4,096 windows, 256 per call)
and forward+backward time of training micro-batches (recurrence on), alternately; NLL and loss compared.

    python3 xsaab.py NAME=PATH NAME=PATH      # the first version's perturbed weights are loaded into the others
"""
import importlib.util, sys, time
import torch
dev = torch.device("cuda")
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
models = {}
for n, m in mods.items():
    models[n] = m.GPT(h).to(dev)
    if n != names[0]:
        models[n].load_state_dict(models[names[0]].state_dict())
    else:
        with torch.no_grad():
            for p in models[n].parameters():
                p.add_(0.02 * torch.randn_like(p))
for n in names[1:]:
    models[n].load_state_dict(models[names[0]].state_dict())
for mdl in models.values():
    mdl.looping = True
nll = {n: mods[n].maybe_compile(models[n].token_nll, dev) for n in names}
fwd = {n: mods[n].maybe_compile(models[n], dev) for n in names}
nt = 4200 * h.eval_stride + h.eval_seq_len + 1
tokens = torch.randint(0, h.vocab_size, (nt,), device=dev, dtype=torch.int32)
val = ref.ValData(tokens=tokens, luts=None, sidecar=torch.ones_like(tokens))
plan = ref.window_plan(nt - 1, h.eval_seq_len, h.eval_stride)[1:4097]
res = {}
for n in names:
    mods[n].score_windows(h, nll[n], val, plan[:512], h.eval_stride, d)
torch.cuda.synchronize()
for rep in range(3):
    for n in names:
        t0 = time.perf_counter()
        st = mods[n].score_windows(h, nll[n], val, plan, h.eval_stride, d)
        torch.cuda.synchronize()
        res.setdefault(("eval", n), []).append(1000 * (time.perf_counter() - t0))
        res[("nll", n)] = (st[0] / st[1]).item()
x = torch.randint(0, h.vocab_size, (48, h.train_seq_len), device=dev)
y = torch.randint(0, h.vocab_size, (48, h.train_seq_len), device=dev)
for n in names:
    for _ in range(2):
        with torch.autocast("cuda", torch.bfloat16):
            loss = fwd[n](x, y)
        loss.backward()
    res[("loss", n)] = loss.item()
    res[("gnorm", n)] = sum(p.grad.float().norm() ** 2 for p in models[n].parameters() if p.grad is not None).sqrt().item()
torch.cuda.synchronize()
for rep in range(3):
    for n in names:
        t0 = time.perf_counter()
        for _ in range(8):
            with torch.autocast("cuda", torch.bfloat16):
                fwd[n](x, y).backward()
        torch.cuda.synchronize()
        res.setdefault(("train", n), []).append(1000 * (time.perf_counter() - t0))
for n in names:
    e, t = res[("eval", n)], res[("train", n)]
    print(f"xsaab variant:{n} eval_ms:{' '.join(f'{v:.0f}' for v in e)} median:{sorted(e)[1]:.0f} "
          f"train_8_microbatches_ms:{' '.join(f'{v:.1f}' for v in t)} median:{sorted(t)[1]:.1f} "
          f"mean_nll:{res[('nll', n)]:.8f} loss:{res[('loss', n)]:.6f} grad_norm:{res[('gnorm', n)]:.6f}")
