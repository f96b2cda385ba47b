"""How many compressed bytes does zeroing a low-cost int6 code save, per Brotli quality? (size guarantee)

    python tools/zeroing_rate.py        # ~2 minutes on 2 cores; output kept in logs/zeroing_rate.txt

Six 512x2048 matrices of Gaussian weights (row scales varied by up to 30%) are quantized to int6 with
train_gpt's SDClip scales; codes are zeroed in order of a random Hessian-like cost times q^2, as
train_gpt.fit_to_limit does, and the packed state (train_gpt.pack_state's serialisation + byte shuffle) is
compressed at qualities 5, 9, 10 and 11. Prints sizes, times and bytes saved per zeroed code.
"""
import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import brotli  # noqa: E402

import train_gpt as tg  # noqa: E402
from brotli_parts import quantized_gaussian  # noqa: E402  (this folder is on sys.path when run as a script)

N_MAT, ROWS, COLS = 6, 512, 2048


def main() -> None:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    g = torch.Generator().manual_seed(0)
    q = {}
    for i in range(N_MAT):
        q[f"m{i}.q"], q[f"m{i}.s"] = quantized_gaussian(ROWS, COLS, 6, 12.85, g)
    codes = torch.cat([q[f"m{i}.q"].flatten() for i in range(N_MAT)])
    cost = torch.rand(codes.numel(), generator=g) * codes.float() ** 2
    nz = (codes != 0).nonzero().flatten()
    order = nz[torch.argsort(cost[nz], stable=True)]

    def size(k: int, quality: int) -> tuple[int, float]:
        flat = codes.clone()
        flat[order[:k]] = 0
        for i in range(N_MAT):
            q[f"m{i}.q"] = flat[i * ROWS * COLS : (i + 1) * ROWS * COLS].view(ROWS, COLS)
        data = tg.byte_shuffle(tg.serialize_state(q))
        t0 = time.perf_counter()
        n = len(brotli.compress(data, quality=quality))
        return n, time.perf_counter() - t0

    res = {}
    for k in (0, 20000, 80000):
        for quality in (5, 9, 10, 11):
            res[k, quality] = size(k, quality)
            print(f"zeroed:{k} quality:{quality} bytes:{res[k, quality][0]} seconds:{res[k, quality][1]:.1f}", flush=True)
    for quality in (5, 9, 10, 11):
        for k in (20000, 80000):
            saved = (res[0, quality][0] - res[k, quality][0]) / k
            print(f"quality:{quality} zeroed:{k} saved_bytes_per_code:{saved:.4f}")


if __name__ == "__main__":
    main()
