"""The Triton products (train_gpt.fused_gemm) and their glue: kernel_ops' custom ops, FusedMLP's autograd, the
attention's and blocks' scoring path (qk_rope, xsa_proj, xsa_res), the KERNELS choice and its start-up check
(check_kernels), and GPTQ's Hessians through the fused forms.

On the CPU the ops get stand-in CPU kernels with the same math in PyTorch (the Triton kernel needs a Hopper GPU), so
the glue runs in the real model, eager and compiled. With CUDA (compute capability 9.0 or newer) and Triton, the real
kernels are compared with PyTorch.
"""
from __future__ import annotations

import contextlib
import importlib.util
import re
import warnings

import pytest
import torch
import torch.nn.functional as F

import train_gpt as tg
from test_train_optim import rel_err as relerr

HOPPER = torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 9 \
    and importlib.util.find_spec("triton") is not None


def ref_up(x, w1):
    h = F.linear(x, w1)
    return h, tg.act(h)


def ref_act(x, w1):
    return tg.act(F.linear(x, w1))


def ref_dh(dy, w2, h):
    return ((dy @ w2).float() * tg.act_grad(h.float())).to(h.dtype)


def ref_qk_rope(x, w, cs, sn, g, rope):
    """The table form written out: rms_norm per 64-column head, x cos + swap(x) sin, swap exchanging the halves of
    each `rope`-column chunk, times g; row m at table row m % P."""
    M = x.size(0)
    q = F.rms_norm(F.linear(x, w).view(M, -1, 64), (64,))
    sw = q.view(M, -1, 64 // rope, 2, rope // 2).flip(3).reshape(q.shape)
    pos = torch.arange(M, device=x.device) % cs.size(0)
    return ((q * cs[pos, None] + sw * sn[pos, None]) * g.view(-1, 64)).view(M, -1)


def ref_xsa_proj(y, v, w):
    """XSA in fp32, rounded once, as compiled and in the kernel's operand load; then the product."""
    M = y.size(0)
    ys = tg.xsa_project_out(y.float().view(1, M, -1, 64), v.float().view(1, M, -1, 64)).view(M, -1)
    return F.linear(ys.to(y.dtype), w)


def ref_xsa_res(y, v, w, x, s, ln):
    """The residual in fp32 on the rounded product, stored rounded; the norm of the unrounded sum, as compiled."""
    o = x.float() + s.float() * ref_xsa_proj(y, v, w).float()
    return o.to(x.dtype), (F.rms_norm(o, (o.size(-1),)).to(x.dtype).float() * ln).to(x.dtype)


@pytest.fixture(scope="module")
def cpu_ops():
    """kernel_ops registered, with the stand-ins as their CPU kernels (the CUDA kernel stays the Triton one)."""
    tg.kernel_ops()
    for name, fn in (("mlp_up", ref_up), ("mlp_act", ref_act), ("mlp_dh", ref_dh), ("qk_rope", ref_qk_rope),
                     ("xsa_proj", ref_xsa_proj), ("xsa_res", ref_xsa_res)):
        torch.library.register_kernel(f"train_gpt::{name}", "cpu", fn)


def rope_tables(P: int, rope: int, device="cpu"):
    """(P, 64) bf16 tables for qk_rope, built by train_gpt.rope_tables as the attention's scoring path builds them."""
    return tg.rope_tables(*tg.rotary_cos_sin(P, rope, 1e4, P, device), 64, torch.bfloat16)


@contextlib.contextmanager
def cpu_kernel(name: str, fn, ref):
    """Op train_gpt::name runs `fn` on the CPU inside the block, its stand-in `ref` again after."""
    torch.library.register_kernel(f"train_gpt::{name}", "cpu", fn)
    try:
        yield
    finally:
        torch.library.register_kernel(f"train_gpt::{name}", "cpu", ref)


def use_kernel(model, kernel: str):
    for m in model.modules():
        if isinstance(m, (tg.MLP, tg.Attention)):
            m.kernel = kernel
    return model


def test_kernels_hyperparameter_is_validated(clean_env):
    clean_env.setenv("KERNELS", "cutlass")
    with pytest.raises(ValueError, match="KERNELS"):
        tg.read_hyperparameters()
    clean_env.setenv("KERNELS", "torch")
    assert tg.read_hyperparameters().kernels == "torch"
    clean_env.setenv("MLP_KERNEL", "torch")  # the knob's old name is refused, not ignored
    with pytest.raises(ValueError, match="MLP_KERNEL='torch': expected unset: now KERNELS"):
        tg.read_hyperparameters()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the choice on a machine without CUDA")
def test_kernels_choice_without_cuda():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning where no GPU was expected
        assert tg.kernels("auto") == "torch" and tg.kernels("torch") == "torch"
    with pytest.raises(ValueError, match="KERNELS='triton'"):
        tg.kernels("triton")


def test_auto_falls_back_with_a_warning_on_an_older_gpu(monkeypatch):
    """A CUDA machine where the kernel cannot run (here: compute capability 8.0) gets PyTorch's forms and a warning
    that says why; KERNELS=triton stops there instead."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (8, 0))
    with pytest.warns(UserWarning, match="compute capability 9.0"):
        assert tg.kernels("auto") == "torch"
    with pytest.raises(ValueError, match="KERNELS='triton'.*compute capability 9.0"):
        tg.kernels("triton")


def test_start_up_check_on_the_cpu_stand_ins(cpu_ops):
    """check_kernels (what KERNELS=auto runs at start on the GPU) on the CPU stand-ins: PyTorch's forms agree with
    them, so on a GPU only a Triton kernel can fail it; a wrong op is caught."""
    assert tg.check_kernels("cpu") < 0.02
    with cpu_kernel("xsa_res", lambda *a: (ref_xsa_res(*a)[0], 2 * ref_xsa_res(*a)[1]), ref_xsa_res):
        assert tg.check_kernels("cpu") > 0.5


def test_ops_pass_opcheck(cpu_ops):
    """Schemas, fake kernels and the CPU kernels agree (torch.library.opcheck), at a row count no tile divides."""
    g = torch.Generator().manual_seed(0)
    x, w1, w2, dy = (torch.randn(*s, generator=g).bfloat16() for s in ((37, 16), (64, 16), (16, 64), (37, 16)))
    h = F.linear(x, w1)
    torch.library.opcheck(torch.ops.train_gpt.mlp_up, (x, w1))
    torch.library.opcheck(torch.ops.train_gpt.mlp_act, (x, w1))
    torch.library.opcheck(torch.ops.train_gpt.mlp_dh, (dy, w2, h))
    cs, sn = rope_tables(8, 16)
    x, w, y, v = (torch.randn(*s, generator=g).bfloat16() for s in ((40, 16), (128, 16), (40, 128), (40, 64)))
    torch.library.opcheck(torch.ops.train_gpt.qk_rope, (x, w, cs, sn, torch.ones(128).bfloat16(), 16))
    torch.library.opcheck(torch.ops.train_gpt.xsa_proj, (y, v, w.T.contiguous()))
    x, sc = torch.randn(40, 128, generator=g).bfloat16(), torch.rand(128, generator=g).bfloat16()
    torch.library.opcheck(torch.ops.train_gpt.xsa_res, (y, v, (w @ w.T)[:, :128].contiguous(), x, sc, 0.5))


@pytest.mark.parametrize("compiled", [False, True])
def test_fused_mlp_equals_the_pytorch_form(cpu_ops, compiled):
    """MLP(kernel="triton") against MLP(kernel="torch") with the same weights, bf16: output, dx, dW1, dW2, and the
    no-gradient path; fp32 input keeps the PyTorch form."""
    torch.manual_seed(0)
    ref = tg.MLP(32, 4)
    fused = tg.MLP(32, 4, "triton")
    with torch.no_grad():
        ref.proj.weight.normal_(0, 0.05)
    fused.load_state_dict(ref.state_dict())
    x = torch.randn(3, 10, 32).bfloat16()
    dy = torch.randn(3, 10, 32).bfloat16()
    outs = []
    for m in (ref, fused):
        fn = torch.compile(m, backend="inductor", fullgraph=True) if compiled else m
        xi = x.clone().requires_grad_(True)
        y = fn(xi)
        y.backward(dy)
        with torch.no_grad():
            y_ng = fn(x)
        outs.append((y, xi.grad, m.fc.weight.grad, m.proj.weight.grad, y_ng))
        torch._dynamo.reset()
    for a, b in zip(*outs):
        assert a.shape == b.shape and a.dtype == b.dtype
        assert relerr(b, a) < 0.02
    assert torch.equal(fused(x.float()), ref(x.float()))


def test_tiny_model_with_the_fused_mlp(cpu_ops, tiny_model):
    """Under bf16 autocast the whole tiny model (recurrence on) gives the loss and gradients of the PyTorch form."""
    results = []
    for kernel in ("torch", "triton"):
        model = use_kernel(tiny_model(seed=3), kernel)
        model.looping = True
        x, y = torch.randint(0, 64, (2, 32), generator=torch.Generator().manual_seed(1)), \
            torch.randint(0, 64, (2, 32), generator=torch.Generator().manual_seed(2))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(x, y)
        loss.backward()
        results.append((loss.detach(), {n: p.grad for n, p in model.named_parameters()}))
    (l0, g0), (l1, g1) = results
    assert abs(l0.item() - l1.item()) < 0.01 * abs(l0.item())
    for name in g0:
        assert relerr(g1[name], g0[name]) < 0.05, name


@pytest.mark.parametrize("rope,xsa", [(16, True), (0, False), (64, True)])
def test_attention_scoring_path_equals_the_pytorch_form(cpu_ops, rope, xsa):
    """Without gradients, with 64-dim heads and a bf16 stream, Attention scores through qk_rope and xsa_proj (CPU
    stand-ins here): the same output as the PyTorch form for all rows and the last rows, with and without XSA and
    rotary dims; with gradients it keeps the PyTorch form."""
    torch.manual_seed(0)
    attn = tg.Attention(128, 2, 1, 1.5, xsa, "sdpa", "triton")
    cos, sin = tg.rotary_cos_sin(32, rope, 1e4, 32, "cpu") if rope else (torch.zeros(32, 0), torch.zeros(32, 0))
    x = torch.randn(3, 32, 128).bfloat16()
    calls = []
    with cpu_kernel("qk_rope", lambda *a: calls.append(1) or ref_qk_rope(*a), ref_qk_rope):
        for n in (0, 8):
            with torch.no_grad():
                fused = attn(x, cos, sin, n)
            assert len(calls) == 2 * (n // 8 + 1)  # q and k through the op
            attn.kernel = "torch"
            with torch.no_grad():
                ref = attn(x, cos, sin, n)
            attn.kernel = "triton"
            assert fused.shape == ref.shape == (3, n or 32, 128) and fused.dtype == torch.bfloat16
            assert relerr(fused, ref) < 1e-2  # bf16 rounding: the PyTorch form rounds XSA's steps on the CPU
        attn(x, cos, sin)
        assert len(calls) == 4  # a gradient-enabled forward does not call the op


@pytest.mark.parametrize("parallel", [False, True])
def test_block_scoring_path_equals_the_pytorch_form(cpu_ops, tiny_h, parallel):
    """A block without gradients on a bf16 stream: a sequential one takes its residual and the MLP's norm from
    xsa_res (CPU stand-in here), a parallel one does not; both give the PyTorch form's output, all rows and last rows."""
    h = tiny_h(model_dim=128)
    torch.manual_seed(0)
    block = tg.Block(h, 3 if parallel else 0, "sdpa", "triton")
    with torch.no_grad():
        for p in block.parameters():
            p.add_(0.1 * torch.randn_like(p))
    cos, sin = tg.rotary_cos_sin(32, h.rope_dims, h.rope_base, 32, "cpu")
    x, x0 = torch.randn(2, 32, 128).bfloat16(), torch.randn(2, 32, 128).bfloat16()
    calls = []
    with cpu_kernel("xsa_res", lambda *a: calls.append(1) or ref_xsa_res(*a), ref_xsa_res):
        for last in (0, 8):
            out = []
            for kernel in ("triton", "torch"):
                with torch.no_grad():
                    out.append(use_kernel(block, kernel)(x, x0, cos, sin, last))
            assert out[0].shape == (2, last or 32, 128) and relerr(out[0], out[1]) < 1e-2
        assert len(calls) == (0 if parallel else 2)


def test_tiny_model_scores_through_the_kernels(cpu_ops, tiny_model):
    """token_nll of a tiny model with 64-dim heads (width 128), recurrence on, bf16 autocast, no gradients: the fused
    scoring path gives the per-token NLL of the PyTorch form."""
    x, y = (torch.randint(0, 64, (2, 32), generator=torch.Generator().manual_seed(i)) for i in (1, 2))
    out = []
    for kernel in ("torch", "triton"):
        model = use_kernel(tiny_model(seed=3, model_dim=128), kernel)
        model.looping = True
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            out.append(model.token_nll(x, y, 8))
    assert out[0].shape == (2, 8) and relerr(out[1], out[0]) < 5e-3


def test_compiled_scoring_writes_each_block_input_once(cpu_ops, tiny_model):
    """Compiled scoring (Inductor's CPU code, the stand-ins as the ops): in every block q's and k's qk_rope and v's
    product read one buffer, and the final block's k and v one. Given a view of the block's input per op, Inductor
    had written the input once per view (NOTES.md, seventeenth round: scoring took 3.1-3.6% longer on H100)."""
    from torch._inductor.utils import run_and_get_code

    model = use_kernel(tiny_model(seed=3, model_dim=128, parallel_residual_start=2), "triton")
    model.looping = True
    x, y = (torch.randint(0, 64, (2, 32), generator=torch.Generator().manual_seed(i)) for i in (1, 2))
    torch._dynamo.reset()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        _, code = run_and_get_code(torch.compile(model.token_nll, dynamic=False), x, y, 8)
    torch._dynamo.reset()
    code = "\n".join(code)
    arg = r"\((?:reinterpret_tensor\()?(buf\d+)"
    qk = re.findall(r"torch\.ops\.train_gpt\.qk_rope\.default" + arg, code)
    mm = set(re.findall(r"extern_kernels\.mm" + arg, code))
    assert len(qk) == 2 * len(model.orders[1])  # q and k in every block of the recurrent order
    q, k = qk[0::2], qk[1::2]
    assert q[:-1] == k[:-1] and q[-1] != k[-1]  # the final block's q reads the scored rows alone
    assert set(k) <= mm  # v's product reads k's buffer


def test_hessians_read_the_fused_mlp_inputs(cpu_ops, tiny_h, tiny_model, tiny_data):
    """collect_hessians hooks the linear layers: it runs the MLPs and attentions in their PyTorch form (same values;
    64-dim heads, so that the attention's scoring path would apply) and restores the kernel choice after."""
    from test_export import cpu_dist

    h = tiny_h(data_dir=str(tiny_data), gptq_calibration_batches=2)
    got = []
    for kernel in ("torch", "triton"):
        model = use_kernel(tiny_model(seed=2, model_dim=128), kernel)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # the bf16 stream, where the fused form applies
            got.append(tg.collect_hessians(h, model, cpu_dist()))
        assert {m.kernel for m in model.modules() if isinstance(m, (tg.MLP, tg.Attention))} == {kernel}
    assert all(any(f".{k}" in n for n in got[0]) for k in ("mlp.fc", "mlp.proj", "attn.c_q", "attn.proj"))
    assert set(got[0]) == set(got[1])
    for name in got[0]:
        torch.testing.assert_close(got[1][name], got[0][name])


@pytest.mark.skipif(not HOPPER, reason="needs a CUDA GPU of compute capability 9.0 or newer and Triton")
@pytest.mark.parametrize("M,D,F_", [(98304, 512, 2048), (300, 512, 2048), (1000, 64, 256)])
def test_triton_kernels_match_pytorch(M, D, F_):
    """The real kernels against PyTorch's bf16 products (rounded to bf16 before the epilogue, as cuBLAS's output),
    at the record's shape, a row count no tile divides, and the tests' tiny width."""
    assert tg.kernels("auto") == "triton" and tg.kernels("triton") == "triton"
    g = torch.Generator("cuda").manual_seed(M)
    x, dy = (torch.randn(M, D, device="cuda", generator=g).bfloat16() for _ in range(2))
    w1 = (torch.randn(F_, D, device="cuda", generator=g) / D**0.5).bfloat16()
    w2 = (torch.randn(D, F_, device="cuda", generator=g) / F_**0.5).bfloat16()
    h, a = torch.ops.train_gpt.mlp_up(x, w1)
    hr, ar = ref_up(x, w1)
    dh, dhr = torch.ops.train_gpt.mlp_dh(dy, w2, hr), ref_dh(dy, w2, hr)
    for out, ref in ((h, hr), (a, ar), (torch.ops.train_gpt.mlp_act(x, w1), ar), (dh, dhr)):
        assert out.shape == ref.shape and out.dtype == torch.bfloat16 and torch.isfinite(out).all()
        assert relerr(out, ref) < 2e-3


@pytest.mark.skipif(not HOPPER, reason="needs a CUDA GPU of compute capability 9.0 or newer and Triton")
def test_fused_mlp_on_the_gpu_equals_the_pytorch_form():
    """FusedMLP with the real kernels, compiled, against the PyTorch form: output and gradients in bf16."""
    assert tg.kernels("auto") == "triton"
    torch.manual_seed(0)
    ref = tg.MLP(512, 4).cuda()
    with torch.no_grad():
        ref.proj.weight.normal_(0, 0.02)
    fused = tg.MLP(512, 4, "triton").cuda()
    fused.load_state_dict(ref.state_dict())
    x, dy = torch.randn(4, 2048, 512, device="cuda").bfloat16(), torch.randn(4, 2048, 512, device="cuda").bfloat16()
    outs = []
    for m in (ref, fused):
        fn = torch.compile(m, fullgraph=True)
        xi = x.clone().requires_grad_(True)
        y = fn(xi)
        y.backward(dy)
        with torch.no_grad():
            outs.append((y, xi.grad, m.fc.weight.grad, m.proj.weight.grad, fn(x)))
    for a, b in zip(*outs):
        assert relerr(b, a) < 1e-2


@pytest.mark.skipif(not HOPPER, reason="needs a CUDA GPU of compute capability 9.0 or newer and Triton")
@pytest.mark.parametrize("M,P", [(524288, 2048), (16384, 64), (300, 2048)])
def test_scoring_kernels_match_pytorch(M, P):
    """qk_rope and xsa_proj on the GPU against the table form and xsa_project_out in PyTorch, at the scoring batch
    (256 windows of 2,048), its last rows (64 of each), and a row count no tile divides; record widths."""
    tg.kernel_ops()
    g = torch.Generator("cuda").manual_seed(M)
    x, y = (torch.randn(M, 512, device="cuda", generator=g).bfloat16() for _ in range(2))
    v = torch.randn(M, 256, device="cuda", generator=g).bfloat16()
    wq, wk, wo = ((torch.randn(n, 512, device="cuda", generator=g) / 512**0.5).bfloat16() for n in (512, 256, 512))
    cs, sn = rope_tables(P, 16, "cuda")
    gain = (1 + torch.rand(8, device="cuda", generator=g)).bfloat16().repeat_interleave(64)
    for args in ((x, wq, cs, sn, gain, 16), (x, wk, cs, sn, torch.ones_like(gain[:256]), 16)):
        out, ref = torch.ops.train_gpt.qk_rope(*args), ref_qk_rope(*args)
        assert out.shape == ref.shape and out.dtype == torch.bfloat16 and relerr(out, ref) < 2e-3
    out, ref = torch.ops.train_gpt.xsa_proj(y, v, wo), ref_xsa_proj(y, v, wo)
    assert out.shape == ref.shape and torch.isfinite(out).all() and relerr(out, ref) < 2e-3


@pytest.mark.skipif(not HOPPER, reason="needs a CUDA GPU of compute capability 9.0 or newer and Triton")
@pytest.mark.parametrize("last", [0, 64])
def test_attention_scoring_on_the_gpu_equals_the_pytorch_form(last):
    """The record's attention (512 wide, 8 heads on 4 KV heads, XSA), compiled, without gradients: the kernels'
    scoring path against the PyTorch form, all rows and the last 64."""
    assert tg.kernels("auto") == "triton"
    torch.manual_seed(0)
    attn = tg.Attention(512, 8, 4, 1.5, True, "sdpa", "triton").cuda()
    cos, sin = (t.cuda() for t in tg.rotary_cos_sin(2048, 16, 1e4, 2048, "cpu"))
    x = torch.randn(8, 2048, 512, device="cuda").bfloat16()
    outs = []
    for kernel in ("triton", "torch"):
        attn.kernel = kernel
        with torch.no_grad():
            outs.append(torch.compile(attn, fullgraph=True)(x, cos, sin, last))
        torch._dynamo.reset()
    assert outs[0].shape == (8, last or 2048, 512) and relerr(outs[0], outs[1]) < 1e-2


@pytest.mark.skipif(not HOPPER, reason="needs a CUDA GPU of compute capability 9.0 or newer and Triton")
@pytest.mark.parametrize("M,D", [(524288, 512), (300, 512), (1000, 128)])
def test_xsa_res_kernel_matches_pytorch(M, D):
    """xsa_res on the GPU against XSA, the product, the residual and the norm in PyTorch: the scoring batch at the
    record's width, a row count no tile divides, and the tests' width."""
    tg.kernel_ops()
    g = torch.Generator("cuda").manual_seed(M)
    y, x = (torch.randn(M, D, device="cuda", generator=g).bfloat16() for _ in range(2))
    v = torch.randn(M, D // 2, device="cuda", generator=g).bfloat16()
    w = (torch.randn(D, D, device="cuda", generator=g) / D**0.5).bfloat16()
    sc = torch.rand(D, device="cuda", generator=g).bfloat16()
    for out, ref in zip(torch.ops.train_gpt.xsa_res(y, v, w, x, sc, 0.4), ref_xsa_res(y, v, w, x, sc, 0.4)):
        assert out.shape == ref.shape and out.dtype == torch.bfloat16 and torch.isfinite(out).all()
        assert relerr(out, ref) < 2e-3
