"""Legal score-first TTT (SPEC §8): each chunk is scored with weights trained only on earlier chunks, every
target exactly once, the last chunk never trained on; the LEGAL=1 preset end to end."""
from __future__ import annotations

import copy
import itertools
import math
import re

import numpy as np
import pytest
import torch

import tinydata
import train_gpt as tg
from test_train_e2e import NUM, TINY_RUN

CPU = torch.device("cpu")
L, STRIDE, C = 32, 8, 64  # TINY eval_seq_len / eval_stride; chunks of 2 sequences
N_CHUNKS = 6


def cpu_dist() -> tg.Dist:
    return tg.Dist(rank=0, world_size=1, local_rank=0, device=CPU, is_main=True, grad_accum_steps=8)


@pytest.fixture(scope="module")
def val_arrays(tiny_data):
    """(tokens, sidecar) of N_CHUNKS*C + 7 targets (a partial last chunk), from the tiny validation shard."""
    ds = tiny_data / "datasets" / "fineweb10B_sp64"
    n = N_CHUNKS * C + 7
    tokens = tg.load_data_shard(ds / "fineweb_val_000000.bin")[: n + 1].to(torch.int32)
    sidecar = tg.load_data_shard(ds / "fineweb_val_bytes_000000.bin")[: n + 1].to(torch.int32)
    return tokens, sidecar


def make_val(tokens, sidecar) -> tg.ValData:
    return tg.ValData(tokens=tokens.clone(), sidecar=sidecar.clone(), luts=None)


@pytest.fixture
def setup(tiny_h, tiny_model, val_arrays):
    """Factory: (h, base, run) where run(tokens) -> (loss, bpb, per_chunk, model after TTT) on a fresh copy of one
    initial model; run(deadline=..., logs=[...]) passes a deadline and collects the log lines."""

    def make(**overrides):
        h = tiny_h(ttt_chunk_tokens=C, ttt_lr=0.05, **overrides)
        base = tiny_model(seed=4)
        tokens, sidecar = val_arrays

        def run(toks=tokens, side=sidecar, deadline=math.inf, logs=None):
            model = copy.deepcopy(base)
            logs = [] if logs is None else logs
            loss, bpb, per_chunk = tg.score_first_ttt(h, model, model.token_nll, model, make_val(toks, side),
                                                      cpu_dist(), logs.append, deadline)
            return loss, bpb, per_chunk, model

        return h, base, run

    return make


def changed_from(tokens: torch.Tensor, first_index: int, seed: int = 0) -> torch.Tensor:
    """A copy of tokens with every token from first_index on replaced by a different one."""
    out = tokens.clone()
    g = torch.Generator().manual_seed(seed)
    shift = torch.randint(1, 64, (out.numel() - first_index,), generator=g, dtype=torch.int32)
    out[first_index:] = (out[first_index:] + shift) % 64
    assert (out[first_index:] != tokens[first_index:]).all()
    return out


def params_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


# ----------------------------------------------------------------------------------------------------
# 10: causality.


def test_future_tokens_do_not_change_earlier_chunk_scores(setup, val_arrays):
    h, _, run = setup(ttt_epochs=1, ttt_batch_seqs=1)
    tokens, _ = val_arrays
    _, _, ref, _ = run()
    n_chunks = ref.size(0)
    assert n_chunks == N_CHUNKS + 1
    for k in (1, 3, n_chunks - 1):
        # Chunk k's targets are tokens k*C+1 ..; change those and everything after them.
        _, _, per_chunk, _ = run(changed_from(tokens, k * C + 1, seed=k))
        assert torch.equal(per_chunk[:k], ref[:k]), k  # bit-identical
        assert not torch.equal(per_chunk[k, 0], ref[k, 0]), k
        assert torch.equal(per_chunk[:, 1], ref[:, 1])  # same targets per chunk


def recording_weights(monkeypatch) -> list:
    """Patches score_windows to record (chunk, flat copy of the scoring model's weights) at every call."""
    seen = []
    original = tg.score_windows

    def wrapper(h, nll_fn, val, windows, stride, d, *most):
        chunks = {lo // h.ttt_chunk_tokens for _, lo, _ in windows}
        assert len(chunks) == 1  # one call scores pieces of one chunk only
        seen.append((chunks.pop(), torch.cat([p.detach().flatten().clone() for p in nll_fn.__self__.parameters()])))
        return original(h, nll_fn, val, windows, stride, d, *most)

    monkeypatch.setattr(tg, "score_windows", wrapper)
    return seen


def test_weights_scoring_a_chunk_depend_only_on_earlier_chunks(setup, val_arrays, monkeypatch):
    """The rule itself: the weights that score chunk k are bit-identical whatever the tokens of chunk k and later
    are (so they were trained on nothing from chunk k on); chunk 0 is scored by the initial weights."""
    h, base, run = setup(ttt_epochs=1, ttt_batch_seqs=1)
    tokens, _ = val_arrays
    seen = recording_weights(monkeypatch)
    run()
    ref = list(seen)
    assert [c for c, _ in ref] == list(range(N_CHUNKS + 1))
    assert torch.equal(ref[0][1], torch.cat([p.detach().flatten() for p in base.parameters()]))
    assert not torch.equal(ref[1][1], ref[0][1])  # trained on chunk 0 before scoring chunk 1
    for k in (0, 2, N_CHUNKS):
        seen.clear()
        run(changed_from(tokens, k * C + 1, seed=10 + k))
        assert [c for c, _ in seen] == [c for c, _ in ref]
        for c in range(k + 1):
            assert torch.equal(seen[c][1], ref[c][1]), (k, c)
        if k + 1 < len(ref) - 1:
            assert not torch.equal(seen[k + 1][1], ref[k + 1][1]), k  # trained on the changed chunk k


def test_earlier_chunk_tokens_change_later_scores_through_training(setup, val_arrays):
    """Chunk 0's tokens are outside the context of every window scoring chunk >= 2 (L = C/2), so their only
    path to those scores is the TTT update: the scores must move."""
    h, _, run = setup(ttt_epochs=1)
    tokens, _ = val_arrays
    _, _, ref, _ = run()
    changed = tokens.clone()
    changed[1 : C + 1] = changed_from(tokens, 1)[1 : C + 1]
    _, _, per_chunk, _ = run(changed)
    assert not torch.equal(per_chunk[0], ref[0])
    for c in range(2, ref.size(0)):
        assert (per_chunk[c, 0] - ref[c, 0]).abs() > 1e-9, c
    # Without training, chunk 0 cannot reach those chunks at all.
    _, _, run0 = setup(ttt_epochs=0)
    _, _, ref0, _ = run0()
    _, _, per_chunk0, _ = run0(changed)
    assert torch.equal(per_chunk0[2:], ref0[2:])


# ----------------------------------------------------------------------------------------------------
# 11: every target scored exactly once.


@pytest.mark.parametrize("n,Lw,stride,Cw", [
    (100, 16, 4, 32), (100, 16, 4, 10), (257, 32, 8, 64), (257, 32, 5, 64), (257, 32, 7, 48), (64, 16, 16, 16),
    (63, 16, 16, 16), (1000, 64, 16, 128), (1000, 64, 3, 100), (10, 16, 4, 4), (500, 32, 32, 96), (31, 8, 3, 7),
])
def test_chunk_windows_cover_each_target_once(n, Lw, stride, Cw):
    plan = tg.window_plan(n, Lw, stride)
    chunks = tg.chunk_windows(plan, Cw)
    assert len(chunks) == -(-n // Cw)
    counts = np.zeros(n, dtype=np.int64)
    starts = {s: (lo, hi) for s, lo, hi in plan}
    for c, pieces in enumerate(chunks):
        assert pieces, c
        for s, lo, hi in pieces:
            assert c * Cw <= lo < hi <= min((c + 1) * Cw, n)  # inside its chunk
            w_lo, w_hi = starts[s]
            assert w_lo <= lo and hi <= w_hi  # a piece of a real window's scored range
            counts[lo:hi] += 1
    assert (counts == 1).all(), (n, Lw, stride, Cw)


@pytest.mark.parametrize("epochs", [0, 1])
def test_score_first_ttt_scores_every_target_once(setup, val_arrays, epochs):
    h, _, run = setup(ttt_epochs=epochs)
    tokens, sidecar = val_arrays
    loss, bpb, per_chunk, _ = run()
    n = tokens.numel() - 1
    assert per_chunk.shape == (N_CHUNKS + 1, 3) and per_chunk.dtype == torch.float64
    assert per_chunk[:, 1].sum().item() == n
    assert per_chunk[:-1, 1].tolist() == [C] * N_CHUNKS and per_chunk[-1, 1].item() == n - N_CHUNKS * C
    assert per_chunk[:, 2].sum().item() == sidecar[1:].sum().item()
    for c in range(N_CHUNKS + 1):  # chunk c is charged the bytes of exactly its targets
        assert per_chunk[c, 2].item() == sidecar[c * C + 1 : (c + 1) * C + 1].sum().item()
    total = per_chunk.sum(0)
    assert loss == pytest.approx((total[0] / total[1]).item(), rel=1e-12)
    assert bpb == pytest.approx((total[0] / np.log(2) / total[2]).item(), rel=1e-12)
    assert 0 < loss < 10 and np.isfinite(bpb)


# ----------------------------------------------------------------------------------------------------
# 12: no training = sliding-window eval; the last chunk is never trained on.


def test_zero_epochs_equals_sliding_window_eval(setup, val_arrays):
    h, base, run = setup(ttt_epochs=0)
    loss, bpb, per_chunk, model = run()
    assert params_equal(model, base)
    assert all(p.requires_grad for p in model.parameters())
    ref_model = copy.deepcopy(base)
    ref_model.looping = h.num_loops > 0  # score_first_ttt evaluates the recurrent model
    ref_loss, ref_bpb = tg.evaluate(h, ref_model.token_nll, make_val(*val_arrays), cpu_dist(), h.eval_stride)
    assert loss == pytest.approx(ref_loss, rel=1e-9)
    assert bpb == pytest.approx(ref_bpb, rel=1e-9)


def test_one_epoch_trains_but_never_on_the_last_chunk(setup, val_arrays):
    h, base, run = setup(ttt_epochs=1)
    tokens, _ = val_arrays
    loss, bpb, ref, model = run()
    assert not params_equal(model, base)  # the weights adapted
    assert all(p.requires_grad for p in model.parameters())  # freeze_for_ttt undone
    _, _, _, no_ttt_model = setup(ttt_epochs=0)[2]()
    assert loss != pytest.approx(tg.evaluate(h, no_ttt_model.token_nll, make_val(*val_arrays), cpu_dist(),
                                             h.eval_stride)[0], rel=1e-6)
    last = ref.size(0) - 1
    changed = changed_from(tokens, last * C + 1, seed=99)  # only the last chunk's targets
    _, _, per_chunk, model2 = run(changed)
    assert torch.equal(per_chunk[:last], ref[:last])
    assert not torch.equal(per_chunk[last], ref[last])
    assert params_equal(model, model2)  # the final weights never saw the last chunk


def test_passed_deadline_scores_everything_and_trains_nothing(setup, val_arrays):
    h, base, run = setup(ttt_epochs=1)
    logs = []
    loss, bpb, per_chunk, model = run(deadline=-math.inf, logs=logs)
    assert params_equal(model, base)
    _, _, ref, _ = setup(ttt_epochs=0)[2]()
    assert torch.equal(per_chunk, ref)  # the untrained model scored every chunk
    assert logs[0] == (f"score_first_ttt: stopped adapting before training chunk 1/{N_CHUNKS + 1} to end inside "
                       f"EVAL_BUDGET_SECONDS={h.eval_budget_seconds:g} (every chunk is still scored)")
    assert re.match(rf"score_first_ttt chunks:{N_CHUNKS + 1} adapted:0 ", logs[-1]), logs


def test_deadline_stops_training_midway(setup, val_arrays, monkeypatch):
    """With a clock that advances 1 s per reading, scoring and training each take 1 s per chunk; the deadline
    leaves room to train chunks 0-2 and score all, so training stops before chunk 3 (the 4th of 7)."""
    h, base, run = setup(ttt_epochs=1)
    _, _, ref, _ = run()
    clock = itertools.count()
    monkeypatch.setattr(tg.time, "perf_counter", lambda: float(next(clock)))
    # Chunk c is scored between readings 3c and 3c+1 and trained until 3c+2; before training chunk c the estimate
    # is 3c+1 + (6-c) + 1. A deadline of 12 allows c <= 2.
    logs = []
    _, _, per_chunk, model = run(deadline=12.0, logs=logs)
    assert logs[0].startswith(f"score_first_ttt: stopped adapting before training chunk 4/{N_CHUNKS + 1} "), logs
    assert re.match(rf"score_first_ttt chunks:{N_CHUNKS + 1} adapted:3 ", logs[-1]), logs
    assert torch.equal(per_chunk[:4], ref[:4])  # scored after the same training on chunks 0-2
    assert not torch.equal(per_chunk[4:, 0], ref[4:, 0])  # chunk 3 onwards was never trained on
    assert torch.equal(per_chunk[:, 1], ref[:, 1])  # still every target once


def test_freeze_blocks_keeps_early_blocks_fixed(setup):
    h, base, run = setup(ttt_epochs=1, ttt_freeze_blocks=2)
    _, _, _, model = run()
    for i, (b, b0) in enumerate(zip(model.blocks, base.blocks)):
        same = params_equal(b, b0)
        assert same == (i < 2), i
    assert not torch.equal(model.tok_emb.weight, base.tok_emb.weight)


@pytest.mark.parametrize("world_size", [1, 2, 8])
def test_warm_up_compiles_every_scoring_shape(tiny_h, tiny_model, val_arrays, monkeypatch, world_size):
    """On every rank, the warm-up calls the scoring function at each (rows, scored positions) shape that the
    sliding evaluation and score-first TTT then use, so no graph compiles on the evaluation clock; TTT's calls
    hold no more rows than the rank's share of a chunk's windows, fewer than VAL_BATCH_TOKENS gives."""
    h = tiny_h(ttt_enabled=True, ttt_epochs=0, ttt_chunk_tokens=C, val_batch_tokens=32 * L, prequant_ttt_enabled=False)
    model, (tokens, sidecar) = tiny_model(seed=1), val_arrays
    monkeypatch.setattr(tg, "all_reduce_", lambda t, op=None: t)  # each simulated rank keeps its own sums
    for rank in range(world_size):
        d = tg.Dist(rank=rank, world_size=world_size, local_rank=rank, device=CPU, is_main=rank == 0,
                    grad_accum_steps=max(1, 8 // world_size))
        seen = {"warm_up": set(), "sliding": set(), "ttt": set()}
        phase = ["warm_up"]

        def nll(x, y, last):
            seen[phase[0]].add((x.size(0), last))
            return 0.5 + 0.01 * y[:, -last:].float()

        tg.warm_up_eval_graphs(h, model, model, nll, d)
        phase[0] = "sliding"
        tg.evaluate(h, nll, make_val(tokens, sidecar), d, STRIDE)
        phase[0] = "ttt"
        tg.score_first_ttt(h, model, nll, model, make_val(tokens, sidecar), d, lambda line: None)
        assert seen["sliding"] and seen["ttt"]
        assert seen["sliding"] | seen["ttt"] <= seen["warm_up"], seen
        share = -(-(C // STRIDE) // world_size)
        assert max(rows for rows, _ in seen["ttt"]) == share < 32
        assert (32, STRIDE) in seen["sliding"] <= {(32, L), (32, STRIDE)}  # the wide first window is rank 0's


# ----------------------------------------------------------------------------------------------------
# 13: the LEGAL=1 preset.


def test_legal_preset(clean_env):
    h = tg.read_hyperparameters()
    assert h.legal is False and h.prequant_ttt_enabled is True and h.ttt_enabled is False
    clean_env.setenv("LEGAL", "1")
    h = tg.read_hyperparameters()
    assert h.legal is True and h.prequant_ttt_enabled is False and h.ttt_enabled is True
    clean_env.setenv("PREQUANT_TTT_ENABLED", "1")
    with pytest.raises(ValueError, match="PREQUANT_TTT_ENABLED"):
        tg.read_hyperparameters()
    clean_env.setenv("PREQUANT_TTT_ENABLED", "0")
    clean_env.setenv("TTT_ENABLED", "0")
    h = tg.read_hyperparameters()  # explicit overrides of the preset's TTT choice are allowed
    assert h.legal and not h.prequant_ttt_enabled and not h.ttt_enabled
    clean_env.setenv("LEGAL", "2")
    with pytest.raises(ValueError, match="LEGAL"):
        tg.read_hyperparameters()


@pytest.mark.parametrize("chunk", ["0", "48", "-64"])
def test_ttt_chunk_tokens_validated(clean_env, chunk):
    clean_env.setenv("EVAL_SEQ_LEN", "32")
    clean_env.setenv("EVAL_STRIDE", "8")
    clean_env.setenv("TTT_CHUNK_TOKENS", chunk)
    with pytest.raises(ValueError, match="TTT_CHUNK_TOKENS"):
        tg.read_hyperparameters()


# ----------------------------------------------------------------------------------------------------
# 14: LEGAL=1 end to end.


def legal_main(clean_env, tmp_path, run_id: str, **env: str) -> str:
    """main() with LEGAL=1 on a fresh tiny dataset in tmp_path; returns the log."""
    tinydata.make_dataset(tmp_path / "data")
    clean_env.chdir(tmp_path)
    for k, v in {**TINY_RUN, "WARMUP_STEPS": "0", "LEGAL": "1", "TTT_CHUNK_TOKENS": "1024", "RUN_ID": run_id,
                 **env}.items():
        clean_env.setenv(k, v)
    tg.main()
    return (tmp_path / "logs" / f"{run_id}.txt").read_text()


def test_main_legal_run(clean_env, tmp_path):
    text = legal_main(clean_env, tmp_path, "legal", ITERATIONS="10")
    assert not re.search(r"^prequant_ttt|^post-ttt|model:prequant_ttt", text, re.M), text
    assert not (tmp_path / "final_model.ttt.pt").exists()
    assert (tmp_path / "final_model.pt").is_file() and (tmp_path / "final_model.int6.ptz").is_file()
    for label in ("pre-quantization post-ema", "quantized", "quantized_sliding_window"):
        assert re.search(rf"^{label} val_loss:{NUM} val_bpb:{NUM} eval_time:\d+ms model:ema leaderboard_valid:1$",
                         text, re.M), label
    ttt = re.findall(rf"^quantized_ttt val_loss:{NUM} val_bpb:{NUM} eval_time:\d+ms mode:score_first_ttt "
                     r"model:ema leaderboard_valid:1$", text, re.M)
    assert len(ttt) == 1, text
    timing = re.findall(r"^score_first_ttt chunks:(\d+) adapted:(\d+) first_chunk_score:\d+ms first_chunk_train:\d+ms "
                        r"later_score_mean:\d+ms later_train_mean:\d+ms$", text, re.M)
    assert len(timing) == 1 and int(timing[0][0]) > 1 and int(timing[0][1]) == int(timing[0][0]) - 1, text
    assert "stopped adapting" not in text
    loss, bpb = map(float, ttt[0])
    assert 0 < loss < 5 and 0 < bpb < 5
    sliding = float(re.search(rf"^quantized_sliding_window val_loss:{NUM} val_bpb:{NUM}", text, re.M).group(2))
    assert bpb != sliding  # the adapted model scores differently from the plain sliding window
    assert re.search(r"^eval_phase_time:[0-9.]+s limit:600s$", text, re.M)
    final = re.findall(rf"^final_score source:quantized_ttt val_bpb:{NUM} model:ema leaderboard_valid:1$", text, re.M)
    assert len(final) == 1 and float(final[0]) == pytest.approx(bpb, abs=1e-8)
    assert "leaderboard_valid:0" not in text


def test_main_legal_run_over_budget_stops_adapting(clean_env, tmp_path):
    """A budget already spent when the score-first TTT starts: it scores every chunk, trains on none, and the
    phase reports that it ran over."""
    text = legal_main(clean_env, tmp_path, "over", ITERATIONS="4", EVAL_BUDGET_SECONDS="0.001")
    assert re.search(r"^hparam eval_budget_seconds:0.001$", text, re.M)
    assert re.search(r"^score_first_ttt: stopped adapting before training chunk 1/\d+ ", text, re.M), text
    assert re.search(r"^score_first_ttt chunks:\d+ adapted:0 ", text, re.M), text
    assert re.search(r"^eval_phase_time:[0-9.]+s limit:0.001s$", text, re.M)
    assert re.search(r"^WARNING: evaluation phase took [0-9.]+s, over EVAL_BUDGET_SECONDS=0.001$", text, re.M)
    sliding = float(re.search(rf"^quantized_sliding_window val_loss:{NUM} val_bpb:{NUM}", text, re.M).group(2))
    ttt = float(re.search(rf"^quantized_ttt val_loss:{NUM} val_bpb:{NUM}", text, re.M).group(2))
    assert ttt == pytest.approx(sliding, rel=1e-9)  # nothing adapted: the same scores as the sliding window
    assert re.search(rf"^final_score source:quantized_ttt val_bpb:{NUM} model:ema leaderboard_valid:1$", text, re.M)


@pytest.mark.parametrize("budget", ["0", "-5"])
def test_eval_budget_validated(clean_env, budget):
    clean_env.setenv("EVAL_BUDGET_SECONDS", budget)
    with pytest.raises(ValueError, match="EVAL_BUDGET_SECONDS"):
        tg.read_hyperparameters()
