"""Pre-quant TTT's step (compiled forward and backward on one 32,768-token chunk, blocks 0-1 and the embedding frozen,
recurrence on, gradient clipping, fused AdamW) for each attention backend named in TTTAB_BACKENDS (comma-separated)
times KERNELS=torch and triton, this tree. Perturbed weights, the same for all; alternating, three repetitions of
20 steps each; ms per step.

    TTTAB_BACKENDS=flash_attn_4,sdpa python3 tttab2.py
"""
import os, sys, time
import torch
sys.path.insert(0, ".")
import train_gpt as tg
dev = torch.device("cuda")
h = tg.read_hyperparameters()
backends = [tg.attention_backend(b) for b in os.environ.get("TTTAB_BACKENDS", "sdpa").split(",")]
print(f"tttab2 device:{torch.cuda.get_device_name()} backends:{backends} kernels:{tg.kernels('triton')}", flush=True)
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
run, losses = {}, {}
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
    losses[key] = [step().item() for _ in range(3)]
    torch.cuda.synchronize()
    print(f"tttab2 {key[0]} kernels:{key[1]} warmup_s:{time.perf_counter() - t0:.1f} "
          f"losses:{' '.join(f'{v:.6f}' for v in losses[key])}", flush=True)
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
    print(f"tttab2 {key[0]} kernels:{key[1]} ms_per_step:{' '.join(f'{v:.1f}' for v in e)} median:{sorted(e)[1]:.1f}",
          flush=True)
