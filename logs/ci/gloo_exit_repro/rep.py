# A bare two-rank gloo program (file:// init, 5 x async all_gather + all_reduce), then per MODE: barrier and/or
# destroy_process_group, or neither. loop.sh runs N pairs and counts nonzero exits (gloo's SIGABRT at exit). Stop 23.
import os, sys, torch, torch.distributed as dist
rank, ws, init, mode = int(sys.argv[1]), 2, sys.argv[2], sys.argv[3]
dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=ws)
t = torch.randn(1000)
for _ in range(5):
    out = torch.empty(ws * 1000)
    w = dist.all_gather_into_tensor(out, t, async_op=True); w.wait()
    dist.all_reduce(t)
if mode in ("barrier", "both"):
    dist.barrier()
if mode in ("destroy", "both"):
    dist.destroy_process_group()
