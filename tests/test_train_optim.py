"""Optimisation: Newton-Schulz, the Muon step, the EMA."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import train_gpt as tg
from conftest import spawn_ranks

pytestmark = pytest.mark.usefixtures("clean_env")

A, B, C = 3.4445, -4.7750, 2.0315


def ns_reference(g: torch.Tensor, steps: int, dtype=torch.float64) -> torch.Tensor:
    """The quintic Newton-Schulz iteration written out independently (Frobenius-normalised, wide orientation)."""
    x = g.to(dtype)
    x = x / (x.norm() + 1e-7)
    tall = x.size(0) > x.size(1)
    if tall:
        x = x.T
    for _ in range(steps):
        s = x @ x.T
        x = A * x + (B * s + (C * s) @ s) @ x  # (C*s)@s, as in modded-nanogpt: bitwise-equal in bf16
    return x.T if tall else x


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def test_ns_coefficients():
    """The iteration uses SPEC §4's coefficients."""
    assert tg.NS_COEFFS == (A, B, C)


@pytest.mark.parametrize("shape", [(64, 32), (32, 64), (8, 4), (4, 8)])
def test_newton_schulz_bf16_matches_float64(shape):
    """bf16 NS equals an independent bf16 loop exactly, float64 to bf16 accuracy, and float32 NS to 1e-5."""
    for seed in range(5):
        torch.manual_seed(seed)
        g = torch.randn(*shape)
        out = tg.newton_schulz5(g, 5)
        assert out.dtype == torch.bfloat16 and out.shape == g.shape
        assert torch.equal(out, ns_reference(g, 5, torch.bfloat16))
        exact = ns_reference(g, 5)
        # 5 expansive steps (slope 3.44 near 0) amplify bf16 rounding: measured max 0.086 over 200 random
        # matrices of these shapes, typically 0.03-0.04, so 3e-2 is not reachable in bf16.
        assert rel_err(out, exact) < 0.1
        assert rel_err(tg.newton_schulz5(g, 5, dtype=torch.float32), exact) < 1e-5
        assert rel_err(tg.newton_schulz5(g.double(), 5, dtype=torch.float64), exact) < 1e-12


@pytest.mark.parametrize("shape", [(64, 32), (32, 64)])
def test_newton_schulz_singular_values_in_band(shape):
    """5 bf16 steps map every singular value of a random matrix into [0.6, 1.25] (measured 0.67-1.15)."""
    for seed in range(5):
        torch.manual_seed(seed)
        s = torch.linalg.svdvals(tg.newton_schulz5(torch.randn(*shape), 5).double())
        assert s.min() > 0.6 and s.max() < 1.25, (s.min(), s.max())


@pytest.mark.parametrize("shape", [(64, 32), (32, 64), (8, 4)])
def test_newton_schulz_float64_many_steps_is_uv(shape):
    """Many float64 steps give U diag(s') V^T: same singular vectors as g, s' in the attractor [0.68, 1.14]."""
    torch.manual_seed(0)
    U, S, Vh = torch.linalg.svd(torch.randn(*shape, dtype=torch.float64), full_matrices=False)
    S = torch.linspace(1.0, 2.0, S.numel(), dtype=torch.float64)  # well conditioned
    g = U @ torch.diag(S) @ Vh
    out = tg.newton_schulz5(g, 50, dtype=torch.float64)
    core = U.T @ out @ Vh.T
    diag = torch.diagonal(core)
    assert (core - torch.diag(diag)).abs().max() < 1e-10  # singular vectors preserved exactly
    assert diag.min() > 0.68 and diag.max() < 1.14  # the quintic's fixed band, not exactly 1
    uv = U @ Vh
    assert torch.linalg.matrix_norm(out - uv, ord=2) < 0.32
    assert (out * uv).sum() / (out.norm() * uv.norm()) > 0.97


def muon_direction(g: torch.Tensor, steps: int) -> torch.Tensor:
    rows, cols = g.shape
    # The scale is applied to the bf16 NS output (as the module does), then the update is used in fp32.
    return (tg.newton_schulz5(g / (g.norm(dim=-1, keepdim=True) + 1e-7), steps) * math.sqrt(max(1, rows / cols))).float()


@pytest.mark.parametrize("shape", [(8, 4), (4, 8)])
@pytest.mark.parametrize("mom,exact", [(0.5, True), (0.95, False)])
def test_muon_two_steps_match_formula(shape, mom, exact):
    """Muon: buf <- mom*buf + g; p <- p(1 - lr wd) - lr sqrt(max(1,r/c)) NS(rownorm(g + mom buf)), twice."""
    lr, steps, wd = 0.05, 5, 0.1
    torch.manual_seed(0)
    p0 = torch.randn(*shape)
    if exact:  # dyadic grads and momentum: g + mom*buf is exact in fp32 however it is computed -> same bf16 NS input
        grads = [torch.randint(-8, 9, shape) / 4.0 for _ in range(2)]
        tol = dict(rtol=1e-6, atol=1e-6)
    else:  # a 1-ulp fp32 difference in the NS input may flip a bf16 rounding: allow lr * a few bf16 ulps
        grads = [torch.randn(*shape) for _ in range(2)]
        tol = dict(rtol=0, atol=lr * 2e-2)
    p = nn.Parameter(p0.clone())
    opt = tg.Muon([p], lr=lr, momentum=mom, backend_steps=steps, weight_decay=wd)
    ref, buf = p0.clone(), torch.zeros(shape)
    for g in grads:
        p.grad = g.clone()
        opt.step()
        buf = mom * buf + g
        ref = ref * (1 - lr * wd) - lr * muon_direction(g + mom * buf, steps)
        torch.testing.assert_close(p.detach(), ref, **tol)
    torch.testing.assert_close(opt.state[p]["momentum_buffer"], buf, rtol=1e-6, atol=1e-6)
    assert (p.detach() - p0).abs().max() > 0.05  # the step is not negligible next to the tolerance


def test_muon_batches_same_shapes_like_separate_steps():
    """Mixed shapes in one Muon group (batched per shape, interleaved in the parameter list) step exactly as each
    matrix alone; the shape groups keep first-appearance order."""
    torch.manual_seed(1)
    shapes = [(8, 4), (4, 8), (8, 4), (6, 6), (4, 8), (8, 4)]
    p0 = [torch.randn(*s) for s in shapes]
    grads = [[torch.randint(-8, 9, s) / 4.0 for s in shapes] for _ in range(2)]  # dyadic: exact sums
    together = [nn.Parameter(t.clone()) for t in p0]
    alone = [nn.Parameter(t.clone()) for t in p0]
    kw = dict(lr=0.05, momentum=0.5, backend_steps=5, weight_decay=0.1)
    opt = tg.Muon(together, **kw)
    singles = [tg.Muon([q], **kw) for q in alone]
    for gs in grads:
        for q, r, g in zip(together, alone, gs):
            q.grad, r.grad = g.clone(), g.clone()
        opt.step()
        for o in singles:
            o.step()
        for q, r in zip(together, alone):
            torch.testing.assert_close(q.detach(), r.detach(), rtol=0, atol=1e-6)
    assert [len(g) for g in tg.Muon.shape_groups(together)] == [3, 2, 1]


SHARD_SHAPES = [(8, 4), (4, 8), (8, 4), (6, 6), (4, 8), (8, 4), (8, 4), (4, 8), (8, 4)]  # groups of 5, 3 and 1


def sharded_muon_run(rank: int, world_size: int, out_dir: str) -> None:
    """Two Muon steps on SHARD_SHAPES as rank `rank` of `world_size` (gloo); saves the resulting weights as
    out_dir/rank{rank}.pt."""
    if world_size > 1:
        torch.distributed.init_process_group("gloo", init_method=f"file://{out_dir}/init", rank=rank,
                                             world_size=world_size)
    gen = torch.Generator().manual_seed(2)
    params = [nn.Parameter(torch.randn(*s, generator=gen)) for s in SHARD_SHAPES]
    grads = [[torch.randn(*s, generator=gen) for s in SHARD_SHAPES] for _ in range(2)]
    opt = tg.Muon(params, lr=0.05, momentum=0.9, backend_steps=5, weight_decay=0.1, rank=rank, world_size=world_size)
    for gs in grads:
        for p, g in zip(params, gs):
            p.grad = g.clone()
        opt.step()
    torch.save([p.detach() for p in params], f"{out_dir}/rank{rank}.pt")
    tg.shut_down_distributed()  # its barrier: ranks that tear down apart abort at times (SIGABRT)


@pytest.mark.parametrize("world_size", [2, 3])
def test_muon_sharded_across_ranks_equals_one_rank(tmp_path, world_size):
    """Ranks orthogonalise shares of each shape group (some ranks get none of a group) and gather the bf16
    updates: every rank ends with exactly the weights one process computes alone."""
    sharded_muon_run(0, 1, str(tmp_path))
    alone = torch.load(tmp_path / "rank0.pt")
    outs = spawn_ranks(sharded_muon_run, world_size, tmp_path / "ranks")
    for out in outs:
        for a, b in zip(torch.load(out), alone):
            assert torch.equal(a, b)


def test_ema_decay_formula():
    """ema_decay(step, max) = min(max, (1 + step) / (10 + step))."""
    for step in [0, 1, 5, 100, 1000, 10**6]:
        for mx in [0.5, 0.9965, 0.999999]:
            assert tg.ema_decay(step, mx) == pytest.approx(min(mx, (1 + step) / (10 + step)), abs=1e-15)
    assert tg.ema_decay(0, 0.9965) == pytest.approx(0.1)
    assert tg.ema_decay(10**6, 0.9965) == 0.9965


def test_ema_matches_closed_form():
    """After T updates the shadow is prod(d) p_0 + sum_t (1 - d_t) prod_{s>t} d_s p_{t+1}; copy_to loads it."""
    max_decay, T = 0.8, 50  # the cap binds from step 35 on, so both regimes are covered
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    values = [p.detach().double().clone() for p in model.parameters()]
    history = [values]
    ema = tg.EMA(model)
    for step in range(T):
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.randn_like(p))
        history.append([p.detach().double().clone() for p in model.parameters()])
        ema.update(step, max_decay)
    decays = [min(max_decay, (1 + s) / (10 + s)) for s in range(T)]
    weights = [math.prod(decays)] + [(1 - decays[t]) * math.prod(decays[t + 1 :]) for t in range(T)]
    assert sum(weights) == pytest.approx(1.0)
    for i, shadow in enumerate(ema.shadow):
        expected = sum(w * h[i] for w, h in zip(weights, history))
        assert shadow.dtype == torch.float32
        torch.testing.assert_close(shadow.double(), expected, rtol=1e-5, atol=1e-6)
    ema.copy_to(model)
    for p, s in zip(model.parameters(), ema.shadow):
        assert torch.equal(p.detach(), s)


def test_agreed_clock_reports_previous_step_value():
    """AgreedClock returns the (all-reduced) elapsed time cast one step earlier, 0 before any."""
    clock = tg.AgreedClock(torch.device("cpu"))
    assert clock.update(10.0) == 0.0
    assert clock.update(25.0) == 10.0
    assert clock.update(40.0) == 25.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_agreed_clock_does_not_wait_for_queued_gpu_work(queue_gpu_work):
    """On the GPU, update() returns while earlier GPU work is still running: no synchronisation per step."""
    dev = torch.device("cuda")
    clock = tg.AgreedClock(dev)
    clock.update(0.0)  # the first call loads the fill kernel, which synchronises
    queued = queue_gpu_work()
    assert clock.update(1.0) == 0.0
    assert not queued.query()  # the matmuls are still running
    torch.cuda.synchronize()
    assert clock.update(2.0) == 1.0


def test_warm_up_eval_graphs_changes_nothing(tiny_h, tiny_model):
    """The evaluation-graph warm-up leaves weights, requires_grad, gradients and the looping flag as they were."""
    h = tiny_h(ttt_enabled=True, prequant_ttt_chunk_tokens=128, ttt_chunk_tokens=128)
    model = tiny_model(seed=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    d = tg.Dist(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), is_main=True, grad_accum_steps=8)
    tg.warm_up_eval_graphs(h, model, model, model.token_nll, d)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.requires_grad and p.grad is None for p in model.parameters())
    assert model.looping is False


def test_prequant_ttt_clip_zero_means_no_clipping(tiny_h, tiny_model):
    """PREQUANT_TTT_GRAD_CLIP=0 trains unclipped, like the other clips (it once zeroed every gradient)."""
    tokens = torch.randint(0, 64, (4 * 64 + 1,), generator=torch.Generator().manual_seed(0), dtype=torch.int32)
    d = tg.Dist(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), is_main=True, grad_accum_steps=8)
    weights = {}
    for clip in (0.0, 1e9):
        h = tiny_h(prequant_ttt_grad_clip=clip, prequant_ttt_epochs=1, prequant_ttt_chunk_tokens=64)
        model = tiny_model(seed=3)
        before = [p.detach().clone() for p in model.parameters()]
        tg.prequant_ttt(h, model, model, tg.ValData(tokens=tokens, sidecar=None, luts=None), d, lambda _: None)
        weights[clip] = [p.detach() for p in model.parameters()]
        assert any(not torch.equal(a, b) for a, b in zip(before, weights[clip]))  # it trained
    assert all(torch.equal(a, b) for a, b in zip(weights[0.0], weights[1e9]))
