"""Host time of the clock's scalar creation while matmuls are queued: a sync shows as the
matmuls' remaining time (about 0.27 s on H100), no sync as microseconds."""
import time
import torch
dev = torch.device("cuda")
a = torch.randn(4096, 4096, device=dev)
for name, make in (("torch.tensor", lambda: torch.tensor([1.0], dtype=torch.float64, device=dev)),
                   ("torch.full", lambda: torch.full((1,), 1.0, dtype=torch.float64, device=dev))):
    for rep in range(3):
        torch.cuda.synchronize()
        b = a
        for _ in range(100):
            b = b @ b / 64.0
        t0 = time.perf_counter(); make(); host_ms = 1000 * (time.perf_counter() - t0)
        t1 = time.perf_counter(); torch.cuda.synchronize(); rest_ms = 1000 * (time.perf_counter() - t1)
        print(f"synccheck make:{name} rep:{rep} host_ms:{host_ms:.3f} remaining_gpu_ms:{rest_ms:.1f}")
