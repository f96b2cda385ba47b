"""fused_gemm modes 4 and 5 of two trees on the same inputs: equal bit for bit?"""
import importlib.util, sys, torch
dev = "cpu" if len(sys.argv) > 1 and sys.argv[1] == "cpu" else "cuda"
dt = torch.float16 if dev == "cpu" else torch.bfloat16
def load(path, name):
    spec = importlib.util.spec_from_file_location(name, path); m = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(m); return m
new, old = load("train_gpt.py", "tg_new"), load(".exp/base_505488f.py", "tg_old")
g = torch.Generator(device=dev).manual_seed(0)
M = 256 if dev == "cpu" else 65536
y = torch.randn(M, 512, device=dev, generator=g).to(dt); v = torch.randn(M, 256, device=dev, generator=g).to(dt)
w = (torch.randn(512, 512, device=dev, generator=g) / 20).to(dt)
x = torch.randn(M, 512, device=dev, generator=g).to(dt); s = torch.rand(512, device=dev, generator=g).to(dt)
for m in (new, old):
    r = m.fused_gemm()
    m.out = (r(4, y, w, v, b_t=True, groups=2),) + r(5, y, w, v, b_t=True, groups=2, res=(x, s, 0.5))
print("xsaeq device:", dev, "equal:", [torch.equal(a, b) for a, b in zip(new.out, old.out)])
