"""Evaluation: sliding-window plan and evaluate() (every target scored once, with its bytes)."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

import train_gpt as tg

pytestmark = pytest.mark.usefixtures("clean_env")


def scored_targets(plan, n, L, stride):
    """Checks each window's shape against SPEC §7 and returns how often each target in [0, n) is scored."""
    counts = [0] * n
    for i, (s, first, end) in enumerate(plan):
        assert s == i * stride
        assert first == (0 if s == 0 else s + L - stride)
        assert end == min(s + L, n)
        assert s == 0 or s + L - stride < n  # later windows are kept while start + L - stride < n
        assert 0 <= s <= first < end <= s + L
        for t in range(first, end):
            counts[t] += 1
    return counts


def test_window_plan_scores_every_target_once():
    """window_plan covers [0, n) exactly once for many (n, L, stride), incl. n % stride != 0 and n < L."""
    combos = 0
    for n in list(range(1, 70)) + [127, 128, 129, 1000, 1023]:
        for L in (1, 2, 3, 8, 16, 33, 64):
            for stride in sorted({1, 2, 3, 5, L // 2 or 1, L - 1 or 1, L}):
                if stride > L:
                    continue
                plan = tg.window_plan(n, L, stride)
                assert scored_targets(plan, n, L, stride) == [1] * n, (n, L, stride)
                combos += 1
    assert combos > 2000
    assert tg.window_plan(10, 16, 4) == [(0, 0, 10)]  # n < L: one window scoring everything
    assert tg.window_plan(64, 16, 16) == [(0, 0, 16), (16, 16, 32), (32, 32, 48), (48, 48, 64)]
    assert tg.window_plan(20, 16, 4) == [(0, 0, 16), (4, 16, 20)]


def cpu_dist(rank: int = 0, world_size: int = 1) -> tg.Dist:
    return tg.Dist(rank=rank, world_size=world_size, local_rank=rank, device=torch.device("cpu"),
                   is_main=rank == 0, grad_accum_steps=8 // world_size)


def make_val(tokens, sidecar=None, luts=None):
    return tg.ValData(tokens=tokens.to(torch.int32), sidecar=None if sidecar is None else sidecar.to(torch.int32),
                      luts=luts)


def run_ranks(monkeypatch, h, nll_fn, val, stride, world_size):
    """Runs evaluate() on every rank of a simulated world (all_reduce_ captured); returns summed (nll, n, bytes)."""
    captured = []
    monkeypatch.setattr(tg, "all_reduce_", lambda t, op=None: captured.append(t.clone()) or t)
    for rank in range(world_size):
        tg.evaluate(h, nll_fn, val, cpu_dist(rank, world_size), stride)
    assert len(captured) == world_size
    return torch.stack(captured).sum(0).tolist()


def token_fn_nll(x, y, last):
    """A fake per-token NLL that depends only on the target token: 0.5 + 0.01 * y."""
    assert x.shape == y.shape and x.dtype == torch.int64
    return 0.5 + 0.01 * y[:, -last:].float()


@pytest.mark.parametrize("n,L,stride,batch_windows", [
    (96, 32, 32, 4), (96, 32, 8, 4), (100, 32, 8, 3), (101, 32, 5, 2), (20, 32, 8, 1), (257, 16, 3, 7),
    (64, 16, 16, 1), (500, 64, 16, 100),
])
@pytest.mark.parametrize("world_size", [1, 2, 4])
@pytest.mark.parametrize("h_stride", ["same", "other"])
def test_evaluate_with_fake_nll_counts_each_target_once(monkeypatch, n, L, stride, batch_windows, world_size, h_stride):
    """With nll = f(target token), evaluate returns mean f over targets and sum f / ln2 / sum of their bytes
    (also when the stride asked for differs from EVAL_STRIDE, which only sizes the scored slice)."""
    g = torch.Generator().manual_seed(n * 1000 + L * 10 + stride)
    tokens = torch.randint(0, 64, (n + 1,), generator=g)
    sidecar = torch.randint(0, 6, (n + 1,), generator=g)
    eval_stride = stride if h_stride == "same" else max(1, L // 4 if stride > L // 4 else L // 2)
    h = SimpleNamespace(eval_seq_len=L, eval_stride=eval_stride, val_batch_tokens=batch_windows * L)  # per rank
    f = 0.5 + 0.01 * tokens[1:].double()
    expected_loss = f.mean().item()
    expected_bpb = f.sum().item() / math.log(2) / sidecar[1:].sum().item()
    val = make_val(tokens, sidecar)
    nll, count, nbytes = run_ranks(monkeypatch, h, token_fn_nll, val, stride, world_size)
    assert count == n
    assert nbytes == sidecar[1:].sum().item()
    assert nll == pytest.approx(f.sum().item(), rel=1e-6)
    if world_size == 1:
        monkeypatch.undo()
        loss, bpb = tg.evaluate(h, token_fn_nll, val, cpu_dist(), stride)
        assert loss == pytest.approx(expected_loss, rel=1e-6)
        assert bpb == pytest.approx(expected_bpb, rel=1e-6)


def test_eval_rows_are_per_rank_and_capped():
    """VAL_BATCH_TOKENS sizes each rank's scoring calls whatever the world size; fp32 logits stay under 64K rows,
    and a score-first TTT chunk's share of windows per rank caps the rows of its calls."""
    h = SimpleNamespace(eval_seq_len=2048, eval_stride=64, val_batch_tokens=524288, ttt_chunk_tokens=32768)
    assert (tg.eval_rows(h, 64), tg.eval_rows(h, 2048)) == (256, 32)
    shares = [tg.ttt_share(h, cpu_dist(0, w)) for w in (1, 2, 4, 8)]
    assert shares == [512, 256, 128, 64]
    assert [tg.eval_rows(h, 64, s) for s in shares] == [256, 256, 128, 64]
    assert [tg.eval_rows(h, 2048, s) for s in shares] == [32, 32, 32, 32]
    h.val_batch_tokens = 8 * 2048 * 1024
    assert (tg.eval_rows(h, 64), tg.eval_rows(h, 16), tg.eval_rows(h, 2048)) == (1024, 4096, 32)
    h.val_batch_tokens, h.ttt_chunk_tokens = 2048, 100  # a chunk not a multiple of the stride: 2 windows
    assert (tg.eval_rows(h, 64), tg.ttt_share(h, cpu_dist(0, 1)), tg.ttt_share(h, cpu_dist(0, 8))) == (1, 2, 1)


def test_evaluate_with_luts_charges_target_bytes(tiny_data, tiny_sp):
    """Without a sidecar, evaluate's byte total is the LUT bytes of tokens[1:], and the BPB follows from it."""
    tokens = tg.load_data_shard(tiny_data / "datasets" / "fineweb10B_sp64" / "fineweb_val_000000.bin")[:1025]
    luts = tg.build_sentencepiece_luts(tiny_sp, 64, torch.device("cpu"))
    val = make_val(tokens, None, luts)
    h = SimpleNamespace(eval_seq_len=64, eval_stride=16, val_batch_tokens=64 * 5)
    const = lambda x, y, last: torch.full((x.size(0), last), 2.0)  # noqa: E731
    n = tokens.numel() - 1
    lut_bytes = tg.target_bytes(val.tokens, torch.arange(1, n + 1), None, luts).sum().item()
    for stride in (64, 16, 7):
        loss, bpb = tg.evaluate(h, const, val, cpu_dist(), stride)
        assert loss == pytest.approx(2.0, rel=1e-12)
        assert bpb == pytest.approx(2.0 * n / math.log(2) / lut_bytes, rel=1e-12)


def brute_force_nll(model, tokens, L, stride):
    """Per-target NLL: each window of the plan run unpadded on its own, its scored targets kept."""
    n = tokens.numel() - 1
    out = torch.full((n,), float("nan"), dtype=torch.float64)
    for s, first, end in tg.window_plan(n, L, stride):
        seg = tokens[s : min(s + L, n) + 1].long()[None]
        nll = model.token_nll(seg[:, :-1], seg[:, 1:], seg.size(1) - 1)[0].double()
        out[first:end] = nll[first - s : end - s]
    assert not out.isnan().any()
    return out


def test_evaluate_on_model_standard_and_sliding(tiny_model, tiny_data):
    """stride = L equals the plain mean CE over non-overlapping windows; stride < L equals a brute-force
    per-window evaluation, is finite, and differs from the standard value."""
    L = 32
    model = tiny_model(seed=3, eval_seq_len=L).eval()
    model.looping = True
    ds = tiny_data / "datasets" / "fineweb10B_sp64"
    n = 10 * L
    tokens = tg.load_data_shard(ds / "fineweb_val_000000.bin")[: n + 1].int()
    sidecar = tg.load_data_shard(ds / "fineweb_val_bytes_000000.bin")[: n + 1].int()
    val = make_val(tokens, sidecar)
    nbytes = sidecar[1:].sum().item()
    h = SimpleNamespace(eval_seq_len=L, eval_stride=8, val_batch_tokens=3 * L)
    with torch.no_grad():
        x, y = tokens[:-1].long().view(-1, L), tokens[1:].long().view(-1, L)
        ref_loss = model(x, y).item()
        loss, bpb = tg.evaluate(h, model.token_nll, val, cpu_dist(), L)
        assert loss == pytest.approx(ref_loss, rel=1e-5)
        assert bpb == pytest.approx(ref_loss * n / math.log(2) / nbytes, rel=1e-5)
        for stride in (8, 5):
            per_target = brute_force_nll(model, tokens, L, stride)
            s_loss, s_bpb = tg.evaluate(h, model.token_nll, val, cpu_dist(), stride)
            assert math.isfinite(s_loss) and math.isfinite(s_bpb)
            assert s_loss == pytest.approx(per_target.mean().item(), rel=1e-5)
            assert s_bpb == pytest.approx(per_target.sum().item() / math.log(2) / nbytes, rel=1e-5)
            assert abs(s_loss - loss) > 1e-4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_score_windows_does_not_wait_for_queued_gpu_work(queue_gpu_work):
    """On the GPU, building each batch's window table does not synchronise: score_windows returns while earlier
    GPU work is still running, and its sums equal the CPU's."""
    n, L, stride = 500, 64, 16
    tokens = torch.randint(0, 64, (n + 1,), generator=torch.Generator().manual_seed(0))
    sidecar = torch.randint(1, 4, (n + 1,), generator=torch.Generator().manual_seed(1))
    h = SimpleNamespace(eval_seq_len=L, eval_stride=stride, val_batch_tokens=4 * L)
    plan = tg.window_plan(n, L, stride)
    cpu = tg.score_windows(h, token_fn_nll, make_val(tokens, sidecar), plan, stride, cpu_dist())
    dev = torch.device("cuda")
    d = tg.Dist(rank=0, world_size=1, local_rank=0, device=dev, is_main=True, grad_accum_steps=8)
    val = make_val(tokens.to(dev), sidecar.to(dev))
    tg.score_windows(h, token_fn_nll, val, plan, stride, d)  # first use loads the kernels, which synchronises
    queued = queue_gpu_work()
    stats = tg.score_windows(h, token_fn_nll, val, plan, stride, d)
    assert not queued.query()  # the matmuls are still running
    torch.testing.assert_close(stats.cpu(), cpu, rtol=1e-12, atol=1e-9)
