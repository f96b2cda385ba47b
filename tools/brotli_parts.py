"""What does compressing the artifact as independent Brotli parts cost in bytes, and save in time? (BROTLI_PARTS)

    python tools/brotli_parts.py [--parts 1 2 8 16]    # ~3 minutes on 2 cores; output kept in logs/brotli_parts.txt

Builds a quantized state shaped like the record model (11 layers of q 512x512, k and v 256x512, output 512x512,
MLP 2048x512 and 512x2048 int6 codes with SDClip scales, plus the 8192x512 int8 tied embedding) from Gaussian
weights, packs it with train_gpt's serialisation and byte shuffle, and compresses it with train_gpt.compress at
each part count: prints compressed bytes, seconds, threads used and bytes per extra part against one part.
Gaussian codes are no trained model: the per-part overhead, not the absolute size, is what carries over.
"""
import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import train_gpt as tg  # noqa: E402

LAYER = {"q": (512, 512), "k": (256, 512), "v": (256, 512), "o": (512, 512), "fc": (2048, 512), "proj": (512, 2048)}


def quantized_gaussian(rows: int, cols: int, bits: int, sigmas: float, g: torch.Generator):
    """(codes, scales) of Gaussian weights with row scales varying by up to 30%, quantized as train_gpt does."""
    w = torch.randn(rows, cols, generator=g) * (1 + 0.3 * torch.rand(rows, 1, generator=g))
    s = tg.sdclip_scales(w, bits, sigmas)
    return tg.quantize_rtn(w, s, bits), s


def synthetic_state(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shapes = {f"blocks.{i}.{n}": s for i in range(11) for n, s in LAYER.items()} | {"tok_emb": (8192, 512)}
    state = {}
    for name, (rows, cols) in shapes.items():
        bits, sigmas = (8, 20.0) if name == "tok_emb" else (6, 12.85)
        state[name + ".q"], state[name + ".s"] = quantized_gaussian(rows, cols, bits, sigmas, g)
    return state


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", type=int, nargs="+", default=[1, 2, 8, 16])
    args = ap.parse_args()
    data = tg.byte_shuffle(tg.serialize_state(synthetic_state()))
    print(f"brotli_parts raw_bytes:{len(data)} cpus:{os.cpu_count()}", flush=True)
    sizes = {}
    for parts in args.parts:
        t0 = time.perf_counter()
        blob = tg.compress(data, "brotli", parts)
        seconds = time.perf_counter() - t0
        assert tg.decompress(blob) == data
        sizes[parts] = len(blob)
        print(f"parts:{parts} threads:{min(parts, os.cpu_count() or 1)} bytes:{len(blob)} seconds:{seconds:.1f}",
              flush=True)
    if 1 in sizes:
        for parts, size in sizes.items():
            if parts > 1:
                print(f"parts:{parts} extra_bytes:{size - sizes[1]} per_extra_part:{(size - sizes[1]) / (parts - 1):.1f}")


if __name__ == "__main__":
    main()
