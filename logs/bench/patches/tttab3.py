"""Is pre-quant TTT's step bound by the host? For each attention backend in TTTAB_BACKENDS times KERNELS=torch and
triton (this tree): the step as in tttab2.py (one 32,768-token chunk, blocks 0-1 and the embedding frozen, recurrence
on, clipping, fused AdamW), ms per step (alternating, three repetitions of 20 steps); then 5 profiled steps: the GPU's
kernel time per step against the step's wall time, and the host time per call of the custom ops.

    TTTAB_BACKENDS=flash_attn_4,sdpa python3 tttab3.py
"""
import os, sys, time
import torch
from torch.profiler import ProfilerActivity, profile
sys.path.insert(0, ".")
import train_gpt as tg
dev = torch.device("cuda")
h = tg.read_hyperparameters()
backends = [tg.attention_backend(b) for b in os.environ.get("TTTAB_BACKENDS", "sdpa").split(",")]
print(f"tttab3 device:{torch.cuda.get_device_name()} backends:{backends} kernels:{tg.kernels('triton')}", flush=True)
torch.manual_seed(0)
keys = [(b, k) for b in backends for k in ("torch", "triton")]
models = {key: tg.GPT(h, key[0], key[1]).to(dev) for key in keys}
first = models[keys[0]]
with torch.no_grad():
    for p in first.parameters():
        p.add_(0.02 * torch.randn_like(p))
for m in models.values():
    m.load_state_dict(first.state_dict())
g = torch.Generator(device=dev).manual_seed(1)
seqs = h.prequant_ttt_chunk_tokens // h.train_seq_len
tokens = torch.randint(0, h.vocab_size, (seqs * h.train_seq_len + 1,), device=dev, generator=g)
x = tokens[:-1].view(seqs, h.train_seq_len)
y = tokens[1:].view(seqs, h.train_seq_len)
run = {}
for key, m in models.items():
    m.looping = True
    params = tg.freeze_for_ttt(m, h.prequant_ttt_freeze_blocks, freeze_embedding=True)
    opt = torch.optim.AdamW(params, lr=1e-5, fused=True)
    comp = tg.maybe_compile(m, dev)

    def step(comp=comp, params=params, opt=opt):
        with tg.autocast_context(dev):
            loss = comp(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss
    run[key] = step
    t0 = time.perf_counter()
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    print(f"tttab3 {key[0]} kernels:{key[1]} warmup_s:{time.perf_counter() - t0:.1f}", flush=True)
res = {}
for rep in range(3):
    for key in keys:
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(20):
            run[key]()
        torch.cuda.synchronize()
        res.setdefault(key, []).append(1000 * (time.perf_counter() - t0) / 20)
for key, e in res.items():
    print(f"tttab3 {key[0]} kernels:{key[1]} ms_per_step:{' '.join(f'{v:.1f}' for v in e)} median:{sorted(e)[1]:.1f}",
          flush=True)
for key in keys:
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        for _ in range(5):
            run[key]()
        torch.cuda.synchronize()
        wall = 1000 * (time.perf_counter() - t0) / 5
    ev = prof.key_averages()
    gpu = sum(e.self_device_time_total for e in ev) / 1000 / 5
    ops = " ".join(f"{e.key.split('::')[-1]}:{e.count // 5}x{e.cpu_time_total / e.count:.0f}us"
                   for e in ev if e.key.startswith("train_gpt::"))
    print(f"tttab3 {key[0]} kernels:{key[1]} profiled_wall_ms:{wall:.1f} gpu_kernel_ms:{gpu:.1f} ops {ops}", flush=True)
    if key == keys[1]:
        print(ev.table(sort_by="self_cpu_time_total", row_limit=25), flush=True)
    if key == keys[-1]:
        for sort in ("self_device_time_total", "self_cuda_time_total"):
            try:
                print(ev.table(sort_by=sort, row_limit=30), flush=True)
                break
            except Exception as e:
                print(f"tttab3 table sort:{sort} failed: {e}", flush=True)
