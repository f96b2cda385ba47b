"""Model structure: parameter count, forward/backward, recurrence order, XSA."""
from __future__ import annotations

import pytest
import torch

import train_gpt as tg

pytestmark = pytest.mark.usefixtures("clean_env")


def test_param_count_at_defaults():
    """The default configuration has exactly 35,944,536 parameters (SPEC §3), built on the meta device."""
    with torch.device("meta"):
        model = tg.GPT(tg.read_hyperparameters())
    assert tg.count_parameters(model) == 35_944_536
    assert model.tok_emb.weight.shape == (8192, 512)
    assert len(model.blocks) == 11
    assert model.skip_weights.shape == (8, 512)  # 8 skips with recurrence (encoder of 8 virtual layers)


@pytest.mark.parametrize("looping", [False, True])
def test_forward_backward_finite_and_grads_reach_used_params(tiny_model, looping):
    """Loss and every gradient are finite; every used parameter gets a nonzero gradient, unused skip rows get 0."""
    model = tiny_model()
    model.looping = looping
    torch.manual_seed(1)
    x = torch.randint(0, 64, (2, 32))
    y = torch.randint(0, 64, (2, 32))
    loss = model(x, y)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert 2.0 < loss.item() < 8.0  # about ln(64) = 4.16 for a near-random model
    loss.backward()
    encoder, decoder = tg.encoder_decoder(model.layer_order())
    used_skips = min(len(encoder), len(decoder))
    assert model.skip_weights.size(0) == 4  # looped order 0,1,2,1,2,1,2,3 -> 4 skips; plain order uses 2
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        if name in ("skip_weights", "skip_gates"):
            assert (p.grad[:used_skips].abs().sum(-1) > 0).all(), name
            assert (p.grad[used_skips:] == 0).all(), name  # rows only the other mode uses
        else:
            assert p.grad.abs().sum() > 0, name


def test_layer_orders_at_defaults():
    """layer_orders/encoder_decoder give SPEC §3's virtual layer orders and U-Net splits."""
    plain, looped = tg.layer_orders(11, 2, 3, 5)
    assert plain == list(range(11))
    assert looped == [0, 1, 2, 3, 4, 5, 3, 4, 5, 3, 4, 5, 6, 7, 8, 9, 10]
    assert tg.encoder_decoder(looped) == ([0, 1, 2, 3, 4, 5, 3, 4], [5, 3, 4, 5, 6, 7, 8, 9, 10])
    assert tg.encoder_decoder(plain) == ([0, 1, 2, 3, 4], [5, 6, 7, 8, 9, 10])
    assert tg.layer_orders(11, 0, 3, 5) == (plain, plain)


@pytest.mark.parametrize("looping", [False, True])
def test_model_runs_blocks_in_layer_order(tiny_model, looping):
    """Forward hooks on model.blocks record exactly the plain/looped order (11 layers, default loop 3-5)."""
    model = tiny_model(num_layers=11, loop_start=3, loop_end=5, num_loops=2, parallel_residual_start=7,
                       xsa_last_n=11)
    model.looping = looping
    calls = []
    for i, block in enumerate(model.blocks):
        block.register_forward_hook(lambda mod, inp, out, i=i: calls.append(i))
    with torch.no_grad():
        model(torch.randint(0, 64, (1, 16)), torch.randint(0, 64, (1, 16)))
    expected = [0, 1, 2, 3, 4, 5, 3, 4, 5, 3, 4, 5, 6, 7, 8, 9, 10] if looping else list(range(11))
    assert calls == expected
    assert model.layer_order() == expected


def _xsa_loop(y, v):
    """Plain-loop reference: remove from y[b,t,h] its component along v[b,t,h // G] / |v[b,t,h // G]|."""
    B, T, H, D = y.shape
    G = H // v.size(2)
    out = torch.empty_like(y)
    for b in range(B):
        for t in range(T):
            for h in range(H):
                u = v[b, t, h // G] / v[b, t, h // G].norm()
                out[b, t, h] = y[b, t, h] - (y[b, t, h] @ u) * u
    return out


@pytest.mark.parametrize("H,Hkv", [(4, 2), (4, 1), (3, 3), (6, 2)])
def test_xsa_project_out(H, Hkv):
    """XSA output is orthogonal to its own KV group's normalised value, idempotent, and matches a loop."""
    torch.manual_seed(0)
    B, T, D = 2, 5, 8
    y = torch.randn(B, T, H, D, dtype=torch.float64)
    v = torch.randn(B, T, Hkv, D, dtype=torch.float64)
    out = tg.xsa_project_out(y, v)
    assert out.shape == y.shape
    torch.testing.assert_close(out, _xsa_loop(y, v), rtol=1e-12, atol=1e-12)
    G = H // Hkv
    vn = v / v.norm(dim=-1, keepdim=True)
    for h in range(H):
        along_own = (out[:, :, h] * vn[:, :, h // G]).sum(-1)
        assert along_own.abs().max() < 1e-12
    torch.testing.assert_close(tg.xsa_project_out(out, v), out, rtol=1e-12, atol=1e-12)
    if Hkv > 1:  # another group's value direction is not projected out
        assert (out[:, :, 0] * vn[:, :, 1]).sum(-1).abs().max() > 1e-3
    # A zero value (as F.normalize, whose norm is clamped) removes nothing, in float32 and bfloat16 too.
    for dtype in (torch.float64, torch.float32, torch.bfloat16):
        v0 = v.clone()
        v0[:, 1] = 0
        out0 = tg.xsa_project_out(y.to(dtype), v0.to(dtype))
        assert torch.isfinite(out0).all() and torch.equal(out0[:, 1], y[:, 1].to(dtype))
        tol = 0.05 if dtype == torch.bfloat16 else 1e-6
        torch.testing.assert_close(out0[:, 0].double(), _xsa_loop(y[:, :1], v[:, :1])[:, 0], rtol=tol, atol=tol)


@pytest.mark.parametrize("looping", [False, True])
def test_model_traces_as_one_graph(tiny_model, looping):
    """torch.compile sees the training forward and the scoring function as single graphs (no graph breaks)."""
    model = tiny_model(seed=4)
    model.looping = looping
    x, y = torch.randint(0, 64, (2, 64)), torch.randint(0, 64, (2, 64))
    for fn, args in ((model, (x, y)), (model.token_nll, (x, y, 16))):
        explained = torch._dynamo.explain(fn)(*args)
        assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons


@pytest.mark.parametrize("parallel_start,xsa_last_n", [(3, 4), (4, 0)])
@pytest.mark.parametrize("looping", [False, True])
def test_scoring_the_last_positions_equals_slicing_the_full_output(tiny_model, looping, parallel_start, xsa_last_n):
    """token_nll runs the final block's attention output and MLP on the scored positions only; its NLL equals that
    of the whole sequence's hidden states, sliced, for a parallel or sequential final block, with XSA or without."""
    model = tiny_model(seed=5, parallel_residual_start=parallel_start, xsa_last_n=xsa_last_n)
    model.looping = looping
    assert model.blocks[-1].parallel == (parallel_start < 4) and model.blocks[-1].attn.xsa == (xsa_last_n > 0)
    x, y = torch.randint(0, 64, (3, 32)), torch.randint(0, 64, (3, 32))
    full = model.nll(model.hidden(x), y)
    for last in (1, 8, 32):
        assert model.hidden(x, last).shape == (3, last, 64)
        torch.testing.assert_close(model.token_nll(x, y, last), full[:, -last:], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("H,Hkv", [(4, 2), (4, 4), (8, 2)])
def test_attention_of_the_last_rows_equals_full_causal_attention_sliced(H, Hkv):
    """Queries at the last n of T positions see keys 0..T-n+i (the end-aligned causal mask), with grouped KV heads:
    the same as full causal attention, sliced. Also in bf16, where the probabilities are rounded as in flash kernels."""
    torch.manual_seed(0)
    B, T, D = 2, 48, 16
    q, k, v = torch.randn(B, T, H, D), torch.randn(B, T, Hkv, D), torch.randn(B, T, Hkv, D)
    full = tg.causal_attention(q, k, v, "sdpa")
    for n in (1, 5, 47):
        torch.testing.assert_close(tg.causal_attention(q[:, T - n :], k, v, "sdpa"), full[:, T - n :])
        torch.testing.assert_close(tg.last_rows_attention(q[:, T - n :].bfloat16(), k.bfloat16(), v.bfloat16()).float(),
                                   full[:, T - n :], rtol=0.03, atol=0.03)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="PyTorch's FlashAttention 2 op needs CUDA")
@pytest.mark.parametrize("H,Hkv", [(8, 4), (8, 8), (8, 2)])
def test_attention_of_the_last_rows_on_the_gpu_equals_full_causal_attention_sliced(H, Hkv):
    """On CUDA in bf16 the last rows go through PyTorch's FlashAttention 2 op (end-aligned, grouped heads): full
    causal attention, sliced, to bf16's rounding, and last_rows_attention's result to the same tolerance."""
    torch.manual_seed(0)
    B, T, D = 2, 256, 64
    q, k, v = (torch.randn(B, T, h, D, device="cuda", dtype=torch.bfloat16) for h in (H, Hkv, Hkv))
    full = tg.causal_attention(q, k, v, "sdpa").float()
    for n in (1, 64, 255):
        out = tg.causal_attention(q[:, T - n :], k, v, "sdpa")
        assert out.shape == (B, n, H, D) and out.dtype == torch.bfloat16
        torch.testing.assert_close(out.float(), full[:, T - n :], rtol=0.02, atol=0.02)
        torch.testing.assert_close(out.float(), tg.last_rows_attention(q[:, T - n :], k, v).float(), rtol=0.02,
                                   atol=0.02)


def test_rotary_tables_serve_every_length_up_to_training(tiny_model, monkeypatch):
    """Up to the training length the model uses a prefix of its precomputed tables, which equals the tables
    computed for that length; beyond it the NTK-scaled tables are computed, and they differ from any prefix."""
    model = tiny_model()
    L = model.train_seq_len
    for T in (1, L // 2, L):
        cos, sin = tg.rotary_cos_sin(T, model.rope_dims, model.rope_base, L, "cpu")
        torch.testing.assert_close(model.rope_cos[:T], cos, rtol=0, atol=0)
        torch.testing.assert_close(model.rope_sin[:T], sin, rtol=0, atol=0)
    longer, _ = tg.rotary_cos_sin(2 * L, model.rope_dims, model.rope_base, L, "cpu")
    assert not torch.allclose(longer[:L], model.rope_cos)
    seen = []
    real = tg.rotary_cos_sin
    monkeypatch.setattr(tg, "rotary_cos_sin", lambda *a: seen.append(a[0]) or real(*a))
    for T in (L // 2, L, 2 * L):
        model.hidden(torch.randint(model.vocab_size, (1, T)))
    assert seen == [2 * L]  # only the length beyond training recomputes


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_softcapped_nll_is_cross_entropy_of_capped_logits(dtype):
    """Values and gradient equal F.cross_entropy of softcap*tanh(z/softcap) in float64, for logits far past the cap;
    the gradient keeps the logits' dtype."""
    g = torch.Generator().manual_seed(3)
    z = (torch.randn(37, 64, generator=g, dtype=torch.float64) * 60).to(dtype).requires_grad_()
    t = torch.randint(0, 64, (37,), generator=g)
    w = torch.rand(37, generator=g, dtype=torch.float64)
    out = tg.SoftcappedNLL.apply(z, t, 30.0)
    assert out.dtype == torch.float32 and out.shape == (37,)
    (out.double() * w).sum().backward()
    got = z.grad.clone()
    z.grad = None
    ref = torch.nn.functional.cross_entropy(30.0 * torch.tanh(z.double() / 30.0), t, reduction="none")
    (ref * w).sum().backward()
    assert (out.double() - ref).abs().max() < 1e-4 * ref.abs().max()
    assert got.dtype == dtype
    tol = 1e-6 if dtype == torch.float32 else 1e-2  # bf16 rounding of the returned gradient
    assert (got.double() - z.grad.double()).norm() < tol * z.grad.double().norm()


def test_maybe_compile_is_eager_on_cpu_and_turns_mix_order_reductions_off_on_cuda(monkeypatch):
    """CPU: the function itself. CUDA: torch.compile(dynamic=False) with Inductor's mix-order reductions off (they
    merged several layers' per-channel gradient sums into kernels that spilled)."""
    import torch._inductor.config as inductor_config

    def fn(x):
        return x

    assert tg.maybe_compile(fn, torch.device("cpu")) is fn
    calls = []
    monkeypatch.setattr(torch, "compile", lambda f, **kw: calls.append((f, kw)) or "compiled")
    if hasattr(inductor_config.triton, "mix_order_reduction"):
        monkeypatch.setattr(inductor_config.triton, "mix_order_reduction", True)
    assert tg.maybe_compile(fn, torch.device("cuda")) == "compiled"
    assert calls == [(fn, {"dynamic": False})]
    if hasattr(inductor_config.triton, "mix_order_reduction"):
        assert inductor_config.triton.mix_order_reduction is False
