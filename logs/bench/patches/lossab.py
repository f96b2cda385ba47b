"""Loss kernels of train_gpt's SoftcappedNLL in several versions (each a train_gpt.py file), compiled alone at the
training shape (98,304 tokens x 8,192 logits, bf16), timed alternately, with their errors against float64.

    python lossab.py NAME=PATH [NAME=PATH ...]
"""
import importlib.util, sys, time
import torch

dev = torch.device("cuda")
mods = {}
for arg in sys.argv[1:]:
    name, path = arg.split("=", 1)
    spec = importlib.util.spec_from_file_location(f"tg_{name}", path)
    mods[name] = sys.modules[spec.name] = importlib.util.module_from_spec(spec)  # dynamo looks modules up by name
    spec.loader.exec_module(mods[name])
N, V, cap = 98304, 8192, 30.0
gen = torch.Generator(device=dev).manual_seed(0)
# Logits of a partly trained model: mostly a few units, a tail far past the cap.
z0 = (torch.randn(N, V, device=dev, generator=gen) * 3 + torch.randn(N, 1, device=dev, generator=gen) * 2)
z0[:, :64] *= 12
z0 = z0.bfloat16()
t = torch.randint(0, V, (N,), device=dev, generator=gen)
rows = slice(0, 512)
zr = z0[rows].double().requires_grad_()
s = cap * torch.tanh(zr / cap)
ref = torch.nn.functional.cross_entropy(s, t[rows], reduction="none")
ref.sum().backward()
ref_grad = zr.grad

fns = {}
for name, m in mods.items():
    fns[name] = (torch.compile(lambda z, t, m=m: m.SoftcappedNLL.apply(z, t, cap).sum(), dynamic=False),
                 torch.compile(lambda z, t, m=m: m.SoftcappedNLL.apply(z, t, cap), dynamic=False))


def step(name, train: bool):
    if train:
        z = z0.detach().requires_grad_()
        fns[name][0](z, t).backward()
        return z.grad
    with torch.no_grad():
        return fns[name][1](z0, t)


for name in mods:  # compile, warm; errors against float64 on the first 512 rows
    z = z0[rows].detach().requires_grad_()
    out = fns[name][1](z0, t)[rows]
    zz = z0.detach().requires_grad_()
    fns[name][0](zz, t).backward()
    print(f"lossab variant:{name} max_abs_err_loss:{(out.double() - ref).abs().max().item():.3e} "
          f"max_abs_err_grad:{(zz.grad[rows].double() - ref_grad).abs().max().item():.3e}")
res = {}
for rep in range(3):
    for name in mods:
        for train in (True, False):
            for _ in range(3):
                step(name, train)
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(20):
                step(name, train)
            torch.cuda.synchronize()
            res.setdefault((name, train), []).append(1e6 * (time.perf_counter() - t0) / 20)
for (name, train), us in res.items():
    print(f"lossab variant:{name} pass:{'forward+backward' if train else 'forward_no_grad'} "
          f"us_per_call:{' '.join(f'{u:.0f}' for u in us)} median:{sorted(us)[1]:.0f}")
