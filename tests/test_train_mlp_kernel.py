"""The MLP's Triton products (train_gpt.act_mm_kernel) and their glue: mlp_ops' custom ops, FusedMLP's autograd, the
MLP_KERNEL choice, and GPTQ's Hessians through the fused MLP.

On the CPU the ops get stand-in CPU kernels with the same math in PyTorch (the Triton kernel needs a Hopper GPU), so
the glue runs in the real model, eager and compiled. With CUDA (compute capability 9.0 or newer) and Triton, the real
kernels are compared with PyTorch.
"""
from __future__ import annotations

import importlib.util
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


@pytest.fixture(scope="module")
def cpu_ops():
    """mlp_ops registered, with the stand-ins as their CPU kernels (the CUDA kernel stays the Triton one)."""
    tg.mlp_ops()
    for name, fn in (("mlp_up", ref_up), ("mlp_act", ref_act), ("mlp_dh", ref_dh)):
        torch.library.register_kernel(f"train_gpt::{name}", "cpu", fn)


def use_kernel(model, kernel: str):
    for m in model.modules():
        if isinstance(m, tg.MLP):
            m.kernel = kernel
    return model


def test_mlp_kernel_hyperparameter_is_validated(clean_env):
    clean_env.setenv("MLP_KERNEL", "cutlass")
    with pytest.raises(ValueError, match="MLP_KERNEL"):
        tg.read_hyperparameters()
    clean_env.setenv("MLP_KERNEL", "torch")
    assert tg.read_hyperparameters().mlp_kernel == "torch"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the choice on a machine without CUDA")
def test_mlp_kernel_choice_without_cuda():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning where no GPU was expected
        assert tg.mlp_kernel("auto") == "torch" and tg.mlp_kernel("torch") == "torch"
    with pytest.raises(ValueError, match="MLP_KERNEL='triton'"):
        tg.mlp_kernel("triton")


def test_auto_falls_back_with_a_warning_on_an_older_gpu(monkeypatch):
    """A CUDA machine where the kernel cannot run (here: compute capability 8.0) gets PyTorch's MLP and a warning
    that says why; MLP_KERNEL=triton stops there instead."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (8, 0))
    with pytest.warns(UserWarning, match="compute capability 9.0"):
        assert tg.mlp_kernel("auto") == "torch"
    with pytest.raises(ValueError, match="MLP_KERNEL='triton'.*compute capability 9.0"):
        tg.mlp_kernel("triton")


def test_ops_pass_opcheck(cpu_ops):
    """Schemas, fake kernels and the CPU kernels agree (torch.library.opcheck), at a row count no tile divides."""
    g = torch.Generator().manual_seed(0)
    x, w1, w2, dy = (torch.randn(*s, generator=g).bfloat16() for s in ((37, 16), (64, 16), (16, 64), (37, 16)))
    h = F.linear(x, w1)
    torch.library.opcheck(torch.ops.train_gpt.mlp_up, (x, w1))
    torch.library.opcheck(torch.ops.train_gpt.mlp_act, (x, w1))
    torch.library.opcheck(torch.ops.train_gpt.mlp_dh, (dy, w2, h))


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


def test_hessians_read_the_fused_mlp_inputs(cpu_ops, tiny_h, tiny_model, tiny_data):
    """collect_hessians hooks fc and proj: it runs the MLPs in their PyTorch form (same values) and restores the
    kernel choice after."""
    from test_export import cpu_dist

    h = tiny_h(data_dir=str(tiny_data), gptq_calibration_batches=2)
    got = []
    for kernel in ("torch", "triton"):
        model = use_kernel(tiny_model(seed=2), kernel)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # the bf16 stream, where the fused form applies
            got.append(tg.collect_hessians(h, model, cpu_dist()))
        assert {m.kernel for m in model.modules() if isinstance(m, tg.MLP)} == {kernel}
    assert any(".mlp.proj" in n for n in got[0]) and set(got[0]) == set(got[1])
    for name in got[0]:
        torch.testing.assert_close(got[1][name], got[0][name])


@pytest.mark.skipif(not HOPPER, reason="needs a CUDA GPU of compute capability 9.0 or newer and Triton")
@pytest.mark.parametrize("M,D,F_", [(98304, 512, 2048), (300, 512, 2048), (1000, 64, 256)])
def test_triton_kernels_match_pytorch(M, D, F_):
    """The real kernels against PyTorch's bf16 products (rounded to bf16 before the epilogue, as cuBLAS's output),
    at the record's shape, a row count no tile divides, and the tests' tiny width."""
    assert tg.mlp_kernel("auto") == "triton" and tg.mlp_kernel("triton") == "triton"
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
    assert tg.mlp_kernel("auto") == "triton"
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
