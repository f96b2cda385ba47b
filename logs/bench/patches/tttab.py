"""Pre-quant TTT's step (compiled forward and backward on one 32,768-token chunk, blocks 0-1 and the embedding frozen,
recurrence on, gradient clipping, fused AdamW) with KERNELS=torch and triton, this tree, ATTENTION from the
environment; then a training micro-batch (48 sequences, nothing frozen, forward and backward) for comparison.
Perturbed weights, the same for both; alternating, three repetitions of 20 steps each; ms per step.

    python3 tttab.py
"""
import sys, time
import torch
sys.path.insert(0, ".")
import train_gpt as tg
dev = torch.device("cuda")
h = tg.read_hyperparameters()
backend = tg.attention_backend(h.attention)
print(f"tttab device:{torch.cuda.get_device_name()} attention:{backend} kernels:{tg.kernels('triton')}", flush=True)
torch.manual_seed(0)
models = {k: tg.GPT(h, backend, k).to(dev) for k in ("torch", "triton")}
with torch.no_grad():
    for p in models["torch"].parameters():
        p.add_(0.02 * torch.randn_like(p))
models["triton"].load_state_dict(models["torch"].state_dict())
g = torch.Generator(device=dev).manual_seed(1)
tokens = torch.randint(0, h.vocab_size, (h.prequant_ttt_chunk_tokens * 4 + 1,), device=dev, generator=g)
for what, freeze, seqs in (("ttt", h.prequant_ttt_freeze_blocks, 16), ("train", 0, 48)):
    run = {}
    for k, m in models.items():
        m.looping = True
        params = tg.freeze_for_ttt(m, freeze, freeze_embedding=freeze > 0)
        opt = torch.optim.AdamW(params, lr=1e-5, fused=True)
        comp = tg.maybe_compile(m, dev)
        x = tokens[: seqs * 2048].view(seqs, 2048)
        y = tokens[1 : seqs * 2048 + 1].view(seqs, 2048)

        def step():
            with tg.autocast_context(dev):
                loss = comp(x, y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            return loss
        run[k] = step
        t0 = time.perf_counter()
        for _ in range(3):
            step()
        torch.cuda.synchronize()
        print(f"tttab {what} kernels:{k} warmup_s:{time.perf_counter() - t0:.1f}", flush=True)
    res = {}
    for rep in range(3):
        for k in models:
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(20):
                loss = run[k]()
            torch.cuda.synchronize()
            res.setdefault(k, []).append(1000 * (time.perf_counter() - t0) / 20)
    for k, e in res.items():
        print(f"tttab {what} kernels:{k} ms_per_step:{' '.join(f'{v:.1f}' for v in e)} median:{sorted(e)[1]:.1f}",
              flush=True)
    for m in models.values():
        tg.freeze_for_ttt(m, 0, freeze_embedding=False)
    torch._dynamo.reset()
