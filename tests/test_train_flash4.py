"""The FlashAttention 4 backend's glue: train_gpt.flash_attn_4's custom ops, their fake (meta) kernels and autograd.

On the CPU, in a subprocess (the ops are registered once per process), a stand-in `flash_attn.cute.interface` with
FlashAttention's calling convention and exact float32 math takes the kernels' place; the test then checks the ops
with torch.library.opcheck and compares attention and a tiny model against SDPA. With CUDA and flash-attn-4
installed, the real kernels are compared against SDPA in bf16.
"""
from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest
import torch

import train_gpt as tg
from conftest import child_env

ROOT = Path(__file__).resolve().parents[1]

STAND_IN = '''
import sys, types, torch

def _scores(q, k):  # (B, n, H, D) x (B, T, Hkv, D) -> fp32 (B, H, n, T), causal with the queries at the end
    B, n, H, D = q.shape
    T, G = k.size(1), H // k.size(2)
    s = torch.einsum("bqhd,bkhd->bhqk", q.float(), k.repeat_interleave(G, 2).float()) * D**-0.5
    keep = torch.arange(T)[None, :] <= torch.arange(T - n, T)[:, None]
    return s.masked_fill(~keep, float("-inf")), G

def _flash_attn_fwd(q, k, v, causal, return_lse, pack_gqa):
    assert causal and return_lse and all(t.is_contiguous() for t in (q, k, v))
    s, G = _scores(q, k)
    out = torch.einsum("bhqk,bkhd->bqhd", s.softmax(-1), v.repeat_interleave(G, 2).float())
    return out.to(q.dtype).contiguous(), s.logsumexp(-1), None, None, None

def _flash_attn_bwd(q, k, v, out, dout, lse, causal, dq=None, dk=None, dv=None):  # strided views, given outputs
    assert causal and all(t.stride(-1) == 1 for t in (q, k, v, out, dout, lse))
    assert lse.shape == (q.size(0), q.size(2), q.size(1))
    s, G = _scores(q, k)
    p, D = (s - lse[..., None]).exp(), q.size(-1)
    do = dout.float()
    gv = torch.einsum("bhqk,bqhd->bkhd", p, do)
    dp = torch.einsum("bqhd,bkhd->bhqk", do, v.repeat_interleave(G, 2).float())
    ds = p * (dp - (do * out.float()).sum(-1).transpose(1, 2)[..., None]) * D**-0.5
    gq = torch.einsum("bhqk,bkhd->bqhd", ds, k.repeat_interleave(G, 2).float())
    gk = torch.einsum("bhqk,bqhd->bkhd", ds, q.float())
    per_kv = lambda t: t.view(t.size(0), t.size(1), -1, G, t.size(3)).sum(3)
    res = [t.to(q.dtype) for t in (gq, per_kv(gk), per_kv(gv))]
    return tuple(r if o is None else o.copy_(r) for r, o in zip(res, (dq, dk, dv)))

iface = types.ModuleType("flash_attn.cute.interface")
iface._flash_attn_fwd, iface._flash_attn_bwd = _flash_attn_fwd, _flash_attn_bwd
for name in ("flash_attn", "flash_attn.cute"):
    sys.modules[name] = types.ModuleType(name)
sys.modules["flash_attn.cute.interface"] = iface
'''

CHECKS = '''
import torch
import train_gpt as tg
from conftest import TINY
from torch.library import opcheck

tg.flash_attn_4()
torch.manual_seed(0)
q, k, v = (torch.randn(2, 24, h, 16, requires_grad=True) for h in (4, 2, 2))
for dtype in (torch.float32, torch.bfloat16):  # the fake kernels' shapes and dtypes (lse stays fp32) and autograd
    opcheck(torch.ops.train_gpt.fa4, tuple(t.detach().to(dtype).requires_grad_() for t in (q, k, v)))
    qkv = tuple(t.detach().to(dtype) for t in (q, k, v))  # the backward's per-group dK, dV: (G, B, T, Hkv, D)
    o, lse = torch.ops.train_gpt.fa4(*qkv)
    opcheck(torch.ops.train_gpt.fa4_bwd, (*qkv, o, torch.randn_like(o), lse))
for n in (24, 8):  # every query row, and the scoring path's last rows
    qn = q[:, -n:].detach().requires_grad_()
    a, b = (tg.causal_attention(qn, k, v, backend) for backend in ("sdpa", "flash_attn_4"))
    g = torch.randn_like(a)
    ga, gb = (torch.autograd.grad(y, (qn, k, v), g) for y in (a, b))
    assert torch.allclose(a, b, atol=1e-5), (n, (a - b).abs().max())
    for x, y in zip(ga, gb):
        assert torch.allclose(x, y, atol=1e-5), (n, (x - y).abs().max())
compiled = torch.compile(lambda q, k, v: tg.causal_attention(q, k, v, "flash_attn_4"), backend="aot_eager", fullgraph=True)
out = compiled(q, k, v)
assert torch.allclose(out, tg.causal_attention(q, k, v, "sdpa"), atol=1e-5)
out.square().sum().backward()
assert q.grad is not None and k.grad.shape == k.shape
h = tg.read_hyperparameters()
vars(h).update(TINY)
tg.validate_hyperparameters(h)
models = [tg.GPT(h, backend) for backend in ("sdpa", "flash_attn_4")]
with torch.no_grad():  # perturbed: the zero-initialised projections would block the gradients
    for p in models[0].parameters():
        p.add_(0.05 * torch.randn_like(p))
models[1].load_state_dict(models[0].state_dict())
x = torch.randint(0, h.vocab_size, (2, h.train_seq_len))
losses, scores = [], []
for m in models:
    m.looping = True
    losses.append(m(x, x.roll(-1, 1)))
    losses[-1].backward()
    with torch.no_grad():
        scores.append(m.token_nll(x, x.roll(-1, 1), h.eval_stride))
assert torch.allclose(losses[0], losses[1], atol=1e-5), losses
assert torch.allclose(scores[0], scores[1], atol=1e-5), (scores[0] - scores[1]).abs().max()
for (name, p0), p1 in zip(models[0].named_parameters(), models[1].parameters()):
    assert torch.allclose(p0.grad, p1.grad, atol=1e-5), name
print("flash4 glue ok")
'''


def test_flash_attn_4_glue_matches_sdpa_with_a_stand_in_kernel(tmp_path):
    script = tmp_path / "check.py"
    script.write_text(STAND_IN + textwrap.dedent(CHECKS))
    env = child_env(PYTHONPATH=f"{ROOT}:{ROOT / 'tests'}", CUDA_VISIBLE_DEVICES="")  # on the CPU
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0 and "flash4 glue ok" in r.stdout, r.stdout[-2000:] + r.stderr[-4000:]


@pytest.mark.parametrize("backend", ["flash_attn_4", "flash_attn_3", "sdpa"])
def test_prequant_ttt_runs_flash_attn_4_on_sdpa(tiny_h, tiny_model, monkeypatch, backend):
    """Pre-quant TTT's steps (and their warm-up) call the attention with SDPA in place of FlashAttention 4 only; every
    module has its own backend back after."""
    seen = []
    monkeypatch.setattr(tg, "causal_attention", lambda q, k, v, b: seen.append(b) or tg.last_rows_attention(q, k, v))
    h = tiny_h(prequant_ttt_epochs=1, prequant_ttt_chunk_tokens=128)
    model = tiny_model(seed=4)
    for m in model.modules():
        if isinstance(m, tg.Attention):
            m.backend = backend
    from test_export import cpu_dist

    tokens = torch.randint(0, 64, (4 * 64 + 1,), generator=torch.Generator().manual_seed(0), dtype=torch.int32)
    d = cpu_dist()
    tg.warm_up_eval_graphs(h, model, model, lambda *a: None, d)
    tg.prequant_ttt(h, model, model, tg.ValData(tokens=tokens, sidecar=None, luts=None), d, lambda _: None)
    assert set(seen) == {"sdpa" if backend == "flash_attn_4" else backend}
    assert {m.backend for m in model.modules() if isinstance(m, tg.Attention)} == {backend}


def test_module_attrs_restores_each_modules_own_values_after_an_error(tiny_model):
    model = tiny_model()
    model.blocks[0].mlp.kernel = "triton"
    with pytest.raises(RuntimeError), tg.module_attrs(model, tg.MLP, kernel="other"):
        assert {b.mlp.kernel for b in model.blocks} == {"other"}
        raise RuntimeError
    assert [b.mlp.kernel for b in model.blocks] == ["triton"] + ["torch"] * (len(model.blocks) - 1)


def test_backend_is_sdpa_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert tg.attention_backend() == "sdpa"
    assert tg.attention_backend("sdpa") == "sdpa"


@pytest.mark.parametrize("name", ["flash_attn_3", "flash_attn_4"])
def test_a_named_backend_that_cannot_load_stops_the_run(monkeypatch, name):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=f"ATTENTION='{name}': cannot be used here"):
        tg.attention_backend(name)


def test_auto_takes_the_first_backend_that_loads(monkeypatch):
    """flash_attn_3 when importable; without it FlashAttention 4 (here a stand-in that loads); else SDPA."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setitem(sys.modules, "flash_attn_interface", None)  # import raises ImportError
    monkeypatch.setattr(tg, "flash_attn_4", lambda: None)
    assert tg.attention_backend("auto") == "flash_attn_4"
    assert tg.attention_backend("sdpa") == "sdpa"

    def missing():
        raise ImportError("no flash_attn.cute")

    monkeypatch.setattr(tg, "flash_attn_4", missing)
    assert tg.attention_backend("auto") == "sdpa"
    with pytest.raises(ValueError, match="no flash_attn.cute"):
        tg.attention_backend("flash_attn_4")
    monkeypatch.setitem(sys.modules, "flash_attn_interface", types.ModuleType("flash_attn_interface"))
    assert tg.attention_backend("auto") == "flash_attn_3"


def test_flash_attn_4_without_output_arguments_does_not_load(monkeypatch):
    """A flash-attn-4 whose backward cannot write into given dq/dk/dv views: auto falls back, a named one stops."""
    iface = types.ModuleType("flash_attn.cute.interface")
    iface._flash_attn_fwd = lambda q, k, v, causal, return_lse, pack_gqa: None
    iface._flash_attn_bwd = lambda q, k, v, out, dout, lse, causal: None
    for name in ("flash_attn", "flash_attn.cute"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "flash_attn.cute.interface", iface)
    monkeypatch.setitem(sys.modules, "flash_attn_interface", None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(tg, "flash_attn_4", tg.flash_attn_4.__wrapped__)  # uncached: nothing gets registered
    assert tg.attention_backend("auto") == "sdpa"
    with pytest.raises(ValueError, match="no dq/dk/dv outputs"):
        tg.attention_backend("flash_attn_4")


def test_attention_variable_is_checked(clean_env, monkeypatch):
    monkeypatch.setenv("ATTENTION", "flash")
    with pytest.raises(ValueError, match="ATTENTION='flash': expected auto, flash_attn_3, flash_attn_4 or sdpa"):
        tg.read_hyperparameters()


@pytest.mark.skipif(not torch.cuda.is_available() or importlib.util.find_spec("flash_attn") is None
                    or importlib.util.find_spec("flash_attn.cute") is None, reason="needs CUDA and flash-attn-4")
def test_flash_attn_4_kernels_match_sdpa_on_the_gpu():
    tg.flash_attn_4()
    torch.manual_seed(0)
    q, k, v = (torch.randn(4, 512, h, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True) for h in (8, 4, 4))
    for n in (512, 64):
        qn = q[:, -n:].detach().requires_grad_()
        a, b = (tg.causal_attention(qn, k, v, backend) for backend in ("sdpa", "flash_attn_4"))
        g = torch.randn_like(a)
        ga, gb = (torch.autograd.grad(y, (qn, k, v), g) for y in (a, b))
        for x, y in zip((a, *ga), (b, *gb)):
            rel = ((x.float() - y.float()).norm() / x.float().norm()).item()
            assert rel < 1e-2, (n, rel)
