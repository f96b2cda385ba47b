"""torchrun --nproc_per_node=2: train_gpt.wait_for_ranks on NCCL holds the early rank until the late one arrives."""
import os, sys, time
import torch
sys.path.insert(0, os.getcwd())
import train_gpt as tg
d = tg.init_distributed()
x = torch.ones(1, device=d.device)
tg.all_reduce_(x); tg.synchronize(d.device)  # NCCL communicator up on both ranks
if d.rank == 1:
    time.sleep(3)
t0 = time.perf_counter()
tg.wait_for_ranks(d.device)
waited = time.perf_counter() - t0
t1 = time.perf_counter()
tg.all_reduce_(x); tg.synchronize(d.device)
after = time.perf_counter() - t1
print(f"barrier_nccl rank:{d.rank} waited_s:{waited:.3f} first_collective_after_s:{after:.4f} x:{x.item()}", flush=True)
tg.shut_down_distributed()
