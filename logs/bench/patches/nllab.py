"""Scoring NLLs of one train_gpt tree, for a bit-for-bit comparison between trees (each in its own process: the
custom ops register once per process).

    python3 nllab.py TREE.py OUT.pt       # 256 windows of 2,048 random tokens, last 64 and all 2,048 positions
    python3 nllab.py --compare A.pt B.pt  # prints whether the NLLs are equal and their largest difference

The model is the default configuration at seed 0 with every parameter drawn N(0, 0.02) (the initial zero output
projections would hide the attention and MLP outputs), in recurrence mode, scored through train_gpt's compiled
token_nll under bf16 autocast as in the evaluation."""
import importlib.util, sys
import torch

if sys.argv[1] == "--compare":
    a, b = torch.load(sys.argv[2]), torch.load(sys.argv[3])
    for k in a:
        d = (a[k] - b[k]).abs().max().item()
        print(f"nllab compare last:{k} equal:{int(torch.equal(a[k], b[k]))} max_abs_diff:{d:.3e} "
              f"mean_a:{a[k].mean().item():.8f} mean_b:{b[k].mean().item():.8f}", flush=True)
    sys.exit()
spec = importlib.util.spec_from_file_location("train_gpt", sys.argv[1])
tg = importlib.util.module_from_spec(spec)
sys.modules["train_gpt"] = tg
spec.loader.exec_module(tg)
h, dev = tg.read_hyperparameters(), torch.device("cuda")
torch.manual_seed(0)
model = tg.GPT(h, tg.attention_backend(h.attention), tg.kernels(h.kernels)).to(dev)
with torch.no_grad():
    for p in model.parameters():
        p.normal_(0, 0.02)
model.looping = True
fn = tg.maybe_compile(model.token_nll, dev)
g = torch.Generator(device=dev).manual_seed(1)
idx = torch.randint(0, h.vocab_size, (256, h.eval_seq_len + 1), device=dev, generator=g)
out = {}
with torch.no_grad(), tg.autocast_context(dev):
    for last in (64, h.eval_seq_len):
        rows = 256 if last == 64 else 32
        out[last] = fn(idx[:rows, :-1], idx[:rows, 1:], last).float().cpu()
torch.save(out, sys.argv[2])
print(f"nllab tree:{sys.argv[1]} attention:{model.blocks[0].attn.backend} kernel:{model.blocks[0].attn.kernel} "
      + " ".join(f"mean_nll_last{k}:{v.mean().item():.8f}" for k, v in out.items()), flush=True)
