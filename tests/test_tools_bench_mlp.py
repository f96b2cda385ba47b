"""tools/bench_mlp.py's candidate fused MLP computes the same values and gradients as train_gpt's MLP.

Needs Triton and a CUDA GPU. The kernels also run under TRITON_INTERPRET=1 on the CPU, but Triton 3.6's
interpreter multiplies bf16 tiles wrongly with numpy 2.4 (a 16x16 bf16 tl.dot came out about 3e10 off, fp16 was
exact), so the CPU form is not tested. Skipped elsewhere (the CPU CI).
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None or not torch.cuda.is_available(),
                                reason="needs Triton and a CUDA GPU")

CHECK = """
import sys, torch
sys.path.insert(0, {tools!r})
import bench_mlp as b
dev = "cuda" if torch.cuda.is_available() and not b.INTERPRET else "cpu"
g = torch.Generator().manual_seed(1)
M, D, H = 512, 256, 1024
mk = lambda *s, scale=1.0: (torch.randn(*s, generator=g) * scale).to(dev, torch.bfloat16).requires_grad_()
x, w1, w2 = mk(M, D), mk(H, D, scale=D ** -0.5), mk(D, H, scale=H ** -0.5)
dy = (torch.randn(M, D, generator=g) * 1e-2).to(dev, torch.bfloat16)
want = b.fp32_grads(x, w1, w2, dy)
errs = {{}}
for name, fn in (("reference", b.reference_mlp), ("fused", b.FusedMLP.apply)):
    y = b.run(fn, x, w1, w2, dy, backward=True)
    errs[name] = [b.max_rel_err(t, w) for t, w in zip((y, x.grad, w1.grad, w2.grad), want)]
print(errs)
for r, f in zip(errs["reference"], errs["fused"]):
    # bf16 rounding bounds both
    assert f < 2e-2 and f < 3 * r + 1e-3, errs
print("ok")
"""


def test_fused_mlp_matches_reference():
    out = subprocess.run([sys.executable, "-c", CHECK.format(tools=str(ROOT / "tools"))], env=dict(os.environ),
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stdout + out.stderr
