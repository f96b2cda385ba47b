"""evalqk.py's sliding evaluation A/B for any number of train_gpt.py files (NAME=PATH; the first registers the custom
ops that all use): same perturbed weights, recurrence on, the Triton kernels in all, ATTENTION from the environment;
4,096 windows at 256 windows per call, alternately, three repetitions, mean NLL compared.

    python3 evalqk2.py NEW=train_gpt.py NOE=.exp/noE.py BASE=.exp/base_dade453.py            # call FQ (FlashAttention 4)
    python3 evalqk2.py RES=train_gpt.py PREV=.exp/prev_9c19ec0.py BASE=.exp/base_dade453.py  # call RS (SDPA)
"""
import importlib.util, sys, time
import torch
dev = torch.device("cuda")
mods = {}
for i, arg in enumerate(sys.argv[1:]):
    name, path = arg.split("=", 1)
    spec = importlib.util.spec_from_file_location(f"tg_{name}", path)
    mods[name] = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mods[name])
    if i:
        mods[name].flash_attn_4 = mods[name].mlp_ops = mods[name].kernel_ops = lambda: None  # the first file's ops
names = list(mods)
ref = mods[names[0]]
h = ref.read_hyperparameters()
d = ref.Dist(rank=0, world_size=1, local_rank=0, device=dev, is_main=True, grad_accum_steps=8)
backends = {n: m.attention_backend(h.attention) for n, m in mods.items()}
kernels = {n: getattr(m, "kernels", getattr(m, "mlp_kernel", None))("triton") for n, m in mods.items()}
print(f"evalqk device:{torch.cuda.get_device_name()} backends:{backends} kernels:{kernels}", flush=True)
torch.manual_seed(0)
models = {n: m.GPT(h, backends[n], kernels[n]).to(dev) for n, m in mods.items()}
with torch.no_grad():
    for p in models[names[0]].parameters():
        p.add_(0.02 * torch.randn_like(p))
for n in names[1:]:
    models[n].load_state_dict(models[names[0]].state_dict())
for mdl in models.values():
    mdl.looping = True
nt = 4200 * h.eval_stride + h.eval_seq_len + 1
tokens = torch.randint(0, h.vocab_size, (nt,), device=dev, dtype=torch.int32,
                       generator=torch.Generator(device=dev).manual_seed(1))
val = ref.ValData(tokens=tokens, luts=None, sidecar=torch.ones_like(tokens))
plan = ref.window_plan(nt - 1, h.eval_seq_len, h.eval_stride)[1:4097]
for rows in (256,):
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
        print(f"evalqk rows:{rows} variant:{n} eval_ms:{' '.join(f'{v:.0f}' for v in e)} median:{sorted(e)[1]:.0f} "
              f"mean_nll:{res[('nll', n)]:.8f} peak_mib:{torch.cuda.max_memory_allocated() // 2**20}", flush=True)
    torch._dynamo.reset()
    torch.cuda.reset_peak_memory_stats()
