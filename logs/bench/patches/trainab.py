"""train_gpt.py versions in one process, same weights and batch: forward+backward time of 8 training micro-batches
(48 x 2048 tokens, the 1-GPU step's share) without and with recurrence, alternately, three repetitions; the loss
and the gradient norm compared.

    python3 trainab.py NAME=PATH NAME=PATH ...     # the first version's perturbed weights are loaded into the others
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
h = mods[names[0]].read_hyperparameters()
torch.manual_seed(0)
models = {n: m.GPT(h).to(dev) for n, m in mods.items()}
with torch.no_grad():
    for p in models[names[0]].parameters():
        p.add_(0.02 * torch.randn_like(p))
for n in names[1:]:
    models[n].load_state_dict(models[names[0]].state_dict())
fwd = {n: mods[n].maybe_compile(models[n], dev) for n in names}
x = torch.randint(0, h.vocab_size, (48, h.train_seq_len), device=dev)
y = torch.randint(0, h.vocab_size, (48, h.train_seq_len), device=dev)
for looping in (False, True):
    res = {}
    for n in names:
        models[n].looping = looping
        for _ in range(2):
            models[n].zero_grad(set_to_none=True)
            with torch.autocast("cuda", torch.bfloat16):
                loss = fwd[n](x, y)
            loss.backward()
        res[("loss", n)] = loss.item()
        res[("gnorm", n)] = sum(p.grad.float().norm() ** 2 for p in models[n].parameters() if p.grad is not None).sqrt().item()
        models[n].zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    for rep in range(3):
        for n in names:
            torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            for _ in range(8):
                with torch.autocast("cuda", torch.bfloat16):
                    fwd[n](x, y).backward()
            torch.cuda.synchronize()
            res.setdefault(n, []).append(1000 * (time.perf_counter() - t0))
            res[("peak", n)] = torch.cuda.max_memory_allocated() // 2**20
            models[n].zero_grad(set_to_none=True)
    for n in names:
        t = res[n]
        print(f"trainab recurrence:{int(looping)} variant:{n} ms_8_microbatches:{' '.join(f'{v:.1f}' for v in t)} "
              f"median:{sorted(t)[1]:.1f} loss:{res[('loss', n)]:.6f} grad_norm:{res[('gnorm', n)]:.6f} "
              f"peak_mib:{res[('peak', n)]}", flush=True)
