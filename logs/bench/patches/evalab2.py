"""Scoring with FlashAttention 4 everywhere (D) against E (cuDNN SDPA for the forward-only full-row attention, FA4 for
the final block's last rows), two train_gpt.py files in one process, same perturbed weights, recurrence on: sliding
evaluation over 4,096 windows at 256 and 32 windows per call, alternately, three repetitions; mean NLL compared.

    python3 evalab2.py D=PATH E=PATH      # FA4's ops are registered once, by the first file
"""
import importlib.util, os, sys, time
import torch
dev = torch.device("cuda")
mods = {}
for i, arg in enumerate(sys.argv[1:]):
    name, path = arg.split("=", 1)
    spec = importlib.util.spec_from_file_location(f"tg_{name}", path)
    mods[name] = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mods[name])
    if i:
        mods[name].flash_attn_4 = lambda: None  # the ops of the first file serve every file
names = list(mods)
ref = mods[names[0]]
h = ref.read_hyperparameters()
d = ref.Dist(rank=0, world_size=1, local_rank=0, device=dev, is_main=True, grad_accum_steps=8)
backends = {n: m.attention_backend() for n, m in mods.items()}
print(f"evalab2 device:{torch.cuda.get_device_name()} backends:{backends}", flush=True)
torch.manual_seed(0)
models = {n: m.GPT(h, backends[n]).to(dev) for n, m in mods.items()}
with torch.no_grad():
    for p in models[names[0]].parameters():
        p.add_(0.02 * torch.randn_like(p))
for n in names[1:]:
    models[n].load_state_dict(models[names[0]].state_dict())
for mdl in models.values():
    mdl.looping = True
nt = 4200 * h.eval_stride + h.eval_seq_len + 1
tokens = torch.randint(0, h.vocab_size, (nt,), device=dev, dtype=torch.int32, generator=torch.Generator(device=dev).manual_seed(1))
val = ref.ValData(tokens=tokens, luts=None, sidecar=torch.ones_like(tokens))
plan = ref.window_plan(nt - 1, h.eval_seq_len, h.eval_stride)[1:4097]
for rows in (256, 32):
    h.val_batch_tokens = rows * h.eval_seq_len
    nll = {n: mods[n].maybe_compile(models[n].token_nll, dev) for n in names}
    res = {}
    for n in names:
        mods[n].score_windows(h, nll[n], val, plan[:rows], h.eval_stride, d)
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
        print(f"evalab2 rows:{rows} variant:{n} eval_ms:{' '.join(f'{v:.0f}' for v in e)} median:{sorted(e)[1]:.0f} "
              f"mean_nll:{res[('nll', n)]:.8f}", flush=True)
