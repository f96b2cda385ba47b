"""One process per rank, one compiled model: training steps timed alternately with HEAD's Muon (fp32 all-reduce
of the updates) and the working tree's (bf16 all-gather), recurrence off, synthetic tokens."""
import ast, os, sys, tempfile, time
from pathlib import Path
sys.path.insert(0, os.getcwd()); sys.path.insert(0, os.path.join(os.getcwd(), "tools"))
import torch
import train_gpt as tg
from bench import synthetic_dataset

h = tg.read_hyperparameters()
d = tg.init_distributed()
tmp = Path(tempfile.mkdtemp())
if d.rank == 0:
    synthetic_dataset(tmp, h.vocab_size, 8 * h.train_batch_tokens, 1 << 20, h.seed)
if tg.distributed():
    torch.distributed.barrier()
    box = [str(tmp)]; torch.distributed.broadcast_object_list(box, 0); tmp = Path(box[0])
h.data_dir = str(tmp)
src = Path(".exp/head_train_gpt.py").read_text()
cls = next(n for n in ast.parse(src).body if isinstance(n, ast.ClassDef) and n.name == "Muon")
ns = dict(vars(tg)); exec(ast.get_source_segment(src, cls), ns)
torch.manual_seed(h.seed)
model = tg.GPT(h, tg.attention_backend()).to(d.device)
compiled = tg.maybe_compile(model, d.device)
new_muon, adam = tg.build_optimizers(h, model, d)
old_muon = ns["Muon"](new_muon.param_groups[0]["params"], lr=h.matrix_lr, momentum=h.muon_momentum,
                      backend_steps=h.muon_backend_steps, weight_decay=h.muon_wd, rank=d.rank, world_size=d.world_size)
old_muon.param_groups[0]["base_lr"] = h.matrix_lr
local_seqs = h.train_batch_tokens // (d.world_size * d.grad_accum_steps * h.train_seq_len)
loader = tg.TrainLoader(tg.dataset_files(h.data_dir, h.vocab_size, "train"), h.train_seq_len, local_seqs, d.rank,
                        d.world_size, h.seed, h.vocab_size, d.device)
clock, ema, t_start = tg.AgreedClock(d.device), tg.EMA(model), time.perf_counter()
def steps(muon, n):
    for _ in range(n):
        clock.update(1000 * (time.perf_counter() - t_start))
        tg.train_step(h, model, compiled, (muon, adam), loader, d, 0, 1.0)
        ema.update(0, h.ema_decay)
for muon in (new_muon, old_muon):
    steps(muon, 3)
res = {}
for rep in range(3):
    for name, muon in (("old", old_muon), ("new", new_muon)):
        tg.synchronize(d.device); t0 = time.perf_counter()
        steps(muon, 8)
        tg.synchronize(d.device); dt = time.perf_counter() - t0
        res.setdefault(name, []).append(8 * h.train_batch_tokens / dt / d.world_size)
if d.is_main:
    for name, v in res.items():
        print(f"muonab world_size:{d.world_size} variant:{name} tok/s_per_gpu:{' '.join(f'{x:.0f}' for x in v)} "
              f"mean:{sum(v) / len(v):.0f}", flush=True)
tg.shut_down_distributed()
