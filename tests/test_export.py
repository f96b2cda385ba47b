"""Export path (SPEC §6): GPTQ, the pickle-free artifact, packed code, the size guarantee, TTT rank averaging,
and the export stages of main() end to end."""
from __future__ import annotations

import base64
import copy
import inspect
import json
import lzma
import os
import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import tinydata
import train_gpt as tg
from conftest import DIST_ENV, HPARAM_ENV, RETIRED_ENV, child_env, spawn_ranks
from test_train_e2e import NUM, TINY_RUN

ROOT = Path(tg.__file__).resolve().parent
SCRIPT = ROOT / "train_gpt.py"
CPU = torch.device("cpu")


def cpu_dist(rank: int = 0, world_size: int = 1) -> tg.Dist:
    return tg.Dist(rank=rank, world_size=world_size, local_rank=rank, device=CPU, is_main=rank == 0,
                   grad_accum_steps=8 // world_size)


def correlated_inputs(n: int, cols: int, rank: int, seed: int) -> torch.Tensor:
    """Inputs with a low-rank + noise structure: strongly correlated columns of unequal scale."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, rank, generator=g) @ torch.randn(rank, cols, generator=g)
            + 0.1 * torch.randn(n, cols, generator=g))


def output_error(X: torch.Tensor, W: torch.Tensor, q: torch.Tensor, s: torch.Tensor) -> float:
    return (X @ W.T - X @ (q.float() * s.float()[:, None]).T).norm().item()


# ----------------------------------------------------------------------------------------------------
# 1-3, 5: GPTQ, RTN and dequantization.


@pytest.mark.parametrize("bits,sigmas", [(6, 12.85), (4, 12.85), (4, 4.0)])
def test_gptq_beats_rtn_on_output_error(bits, sigmas):
    """On correlated inputs, GPTQ's ||XW^T - XQ^T|| is far below round-to-nearest with the same SDClip scales."""
    for seed in range(2):
        X = correlated_inputs(2048, 96, 8, seed)
        H = X.T @ X / X.size(0)
        W = 0.05 * torch.randn(48, 96, generator=torch.Generator().manual_seed(100 + seed))
        q, s, note = tg.gptq_quantize(W, H, bits, sigmas)
        assert note == "ok"
        scales = tg.sdclip_scales(W, bits, sigmas)
        assert torch.equal(s, scales)
        rtn = tg.quantize_rtn(W, scales, bits)
        e_gptq, e_rtn = output_error(X, W, q, s), output_error(X, W, rtn, scales)
        assert e_gptq < 0.5 * e_rtn, (bits, sigmas, e_gptq, e_rtn)  # measured ~0.11x


def test_gptq_equals_rtn_on_identity_hessian_across_blocks():
    """With H = I (uncorrelated, equal-scale inputs) no error crosses columns, so GPTQ over several 128-column
    blocks (300 columns: 128 + 128 + 44) reduces to round-to-nearest exactly."""
    W = torch.randn(16, 300, generator=torch.Generator().manual_seed(3))
    q, s, note = tg.gptq_quantize(W, torch.eye(300), 6, 12.85)
    rtn = tg.quantize_rtn(W, s, 6)
    assert note == "ok" and q.shape == W.shape
    assert torch.equal(q, rtn)


@pytest.mark.parametrize("bits", range(2, 9))
def test_codes_in_range_and_scale_format(bits):
    """Codes are int8 within +-(2^(bits-1)-1) (also for heavy-tailed rows that must clip); scales are fp16 (rows,)."""
    g = torch.Generator().manual_seed(bits)
    W = torch.randn(24, 40, generator=g) * torch.rand(24, 1, generator=g)
    W[0, 0], W[5, 7] = 50.0, -80.0  # outliers far beyond the SDClip range
    X = correlated_inputs(512, 40, 4, bits)
    qmax = 2 ** (bits - 1) - 1
    for sigmas in (2.0, 12.85, 20.0):
        q, s, note = tg.gptq_quantize(W, X.T @ X / 512, bits, sigmas)
        rtn = tg.quantize_rtn(W, s, bits)
        for codes in (q, rtn):
            assert codes.dtype == torch.int8 and codes.shape == W.shape
            assert int(codes.abs().max()) <= qmax
        assert s.dtype == torch.float16 and s.shape == (24,)
        assert torch.isfinite(s).all() and (s > 0).all()
        assert note == "ok"
        if sigmas == 2.0:  # a +-2 sigma range: many weights clip at the top code
            assert int(q.abs().max()) == int(rtn.abs().max()) == qmax


def psd_from(X: torch.Tensor) -> torch.Tensor:
    return X.T @ X / X.size(0)


def singular_hessians(cols: int) -> dict[str, tuple[torch.Tensor, list[int]]]:
    """name -> (Hessian, dead columns)."""
    X = correlated_inputs(256, cols, 6, 7)
    v = torch.randn(cols, generator=torch.Generator().manual_seed(8))
    dead_cols = [0, 5, 17, cols - 1]
    Xd = X.clone()
    Xd[:, dead_cols] = 0.0
    v_dead = v.clone()
    v_dead[dead_cols] = 0.0
    return {
        "zero": (torch.zeros(cols, cols), list(range(cols))),
        "rank1": (torch.outer(v, v), []),
        "rank1_dead": (torch.outer(v_dead, v_dead), dead_cols),
        "dead_columns": (psd_from(Xd), dead_cols),
        "low_rank_few_samples": (psd_from(X[:3]), []),
    }


@pytest.mark.parametrize("name", ["zero", "rank1", "rank1_dead", "dead_columns", "low_rank_few_samples"])
def test_gptq_singular_hessian(name):
    """Singular Hessians do not crash; dead columns (zero diagonal) get code 0; codes stay valid."""
    cols = 40
    H, dead = singular_hessians(cols)[name]
    W = torch.randn(12, cols, generator=torch.Generator().manual_seed(9))
    q, s, note = tg.gptq_quantize(W, H, 6, 12.85)
    assert note == "ok" or note == "rtn_fallback" or re.fullmatch(r"damping_x\d+", note), note
    assert q.dtype == torch.int8 and q.shape == W.shape and int(q.abs().max()) <= 31
    assert s.dtype == torch.float16 and torch.isfinite(s).all()
    if dead:
        assert int(q[:, dead].abs().sum()) == 0
    alive = [c for c in range(cols) if c not in dead]
    if alive:
        assert int(q[:, alive].abs().sum()) > 0


def test_gptq_indefinite_hessian_needs_damping():
    """A Hessian with negative eigenvalues is retried with more damping (or falls back to RTN): no crash."""
    X = correlated_inputs(512, 40, 6, 11)
    H = psd_from(X)
    H_indef = H - 2.0 * H.diag().mean() * torch.eye(40)
    assert torch.linalg.eigvalsh(H_indef).min() < 0
    W = torch.randn(12, 40, generator=torch.Generator().manual_seed(12))
    q, s, note = tg.gptq_quantize(W, H_indef, 6, 12.85)
    assert note == "rtn_fallback" or re.fullmatch(r"damping_x\d+", note), note
    assert q.dtype == torch.int8 and int(q.abs().max()) <= 31 and torch.isfinite(s).all()
    # A symmetric random matrix: indefinite, with some non-positive diagonal entries ("dead" columns).
    R = torch.randn(40, 40, generator=torch.Generator().manual_seed(13))
    q, s, note = tg.gptq_quantize(W, (R + R.T) / 2, 6, 12.85)
    assert note == "rtn_fallback" or re.fullmatch(r"damping_x\d+", note), note
    assert q.dtype == torch.int8 and int(q.abs().max()) <= 31


@pytest.mark.parametrize("where", ["diagonal", "symmetric_offdiag", "everywhere", "inf"])
def test_gptq_nonfinite_hessian_falls_back(where):
    """A Hessian with NaN/inf gives RTN codes and note rtn_fallback, never a crash or NaN codes."""
    X = correlated_inputs(512, 40, 6, 14)
    H = psd_from(X)
    if where == "diagonal":
        H[5, 5] = float("nan")
    elif where == "symmetric_offdiag":
        H[5, 7] = H[7, 5] = float("nan")
    elif where == "everywhere":
        H = torch.full_like(H, float("nan"))
    else:
        H[3, 3] = float("inf")
    W = torch.randn(12, 40, generator=torch.Generator().manual_seed(15))
    q, s, note = tg.gptq_quantize(W, H, 6, 12.85)
    assert note == "rtn_fallback"
    assert torch.equal(q, tg.quantize_rtn(W, s, 6))
    assert q.dtype == torch.int8 and int(q.abs().max()) <= 31


def test_gptq_rtn_fallback_keeps_dead_columns_zero():
    X = correlated_inputs(512, 40, 6, 16)
    X[:, 3] = 0.0
    H = psd_from(X)
    H[5, 5] = float("nan")
    W = torch.randn(12, 40, generator=torch.Generator().manual_seed(17))
    q, _, note = tg.gptq_quantize(W, H, 6, 12.85)
    assert note == "rtn_fallback"
    assert int(q[:, 3].abs().sum()) == 0


def test_gptq_nonfinite_weights_are_reported_as_fallback():
    X = correlated_inputs(512, 40, 6, 18)
    W = torch.randn(12, 40, generator=torch.Generator().manual_seed(19))
    W[2, 4] = float("nan")
    _, _, note = tg.gptq_quantize(W, psd_from(X), 6, 12.85)
    assert note == "rtn_fallback"


def test_dequantize_state():
    """name.q * name.s per row for quantized entries; fp16 passthrough tensors come back as float32."""
    g = torch.Generator().manual_seed(20)
    q = torch.randint(-31, 32, (6, 10), generator=g, dtype=torch.int8)
    s = (torch.rand(6, generator=g) + 0.01).half()
    e = torch.randint(-127, 128, (4, 3), generator=g, dtype=torch.int8)
    es = torch.rand(4, generator=g).half()
    vec = torch.randn(10, generator=g).half()
    mat = torch.randn(2, 10, generator=g).half()
    out = tg.dequantize_state({"a.weight.q": q, "a.weight.s": s, "vec": vec, "tok_emb.weight.q": e,
                               "tok_emb.weight.s": es, "mix": mat})
    assert set(out) == {"a.weight", "tok_emb.weight", "vec", "mix"}
    assert torch.equal(out["a.weight"], q.float() * s.float()[:, None])
    assert torch.equal(out["tok_emb.weight"], e.float() * es.float()[:, None])
    assert torch.equal(out["vec"], vec.float()) and torch.equal(out["mix"], mat.float())
    assert all(v.dtype == torch.float32 for v in out.values())


# ----------------------------------------------------------------------------------------------------
# 4: the artifact format.


def hand_hessians(model: tg.GPT, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random PSD Hessian for every key hessian_for / quantize_state asks for."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, mod in model.named_modules():
        if isinstance(mod, tg.CastedLinear) and not name.endswith(("c_k", "c_v")):
            X = torch.randn(4 * mod.in_features, mod.in_features, generator=g)
            out[name] = X.T @ X / X.size(0)
    X = torch.randn(4 * model.dim, model.dim, generator=g)
    out["tok_emb"] = X.T @ X / X.size(0)
    return out


@pytest.fixture
def qstate(tiny_h, tiny_model):
    h = tiny_h()
    model = tiny_model(seed=1)
    logs = []
    state = tg.quantize_state(h, model, hand_hessians(model), cpu_dist(), logs.append)
    assert re.fullmatch(r"gptq matrices:25 extra_damping:0 rtn_fallback:0", logs[-1]), logs
    return state


def test_quantize_state_layout(qstate, tiny_model):
    """Every block matrix and the embedding become int8 .q + fp16 .s; everything else is fp16 passthrough."""
    model = tiny_model(seed=1)
    sd = model.state_dict()
    matrices, _, _ = tg.split_parameters(model)
    big = {n for n, p in model.named_parameters() if any(p is m for m in matrices)} | {"tok_emb.weight"}
    assert len(big) == 25
    for name, v in sd.items():
        if name in big:
            assert qstate[name + ".q"].dtype == torch.int8 and qstate[name + ".q"].shape == v.shape
            assert qstate[name + ".s"].dtype == torch.float16 and qstate[name + ".s"].shape == (v.size(0),)
            assert name not in qstate
        else:
            assert qstate[name].dtype == torch.float16 and torch.equal(qstate[name], v.half())
    assert int(qstate["tok_emb.weight.q"].abs().max()) <= 127
    assert max(int(qstate[n + ".q"].abs().max()) for n in big - {"tok_emb.weight"}) <= 31


@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 1000, 65537])
def test_brotli_parts_roundtrip_and_layout(n):
    """BROTLI_PARTS independent parts: tag, part count, uint32 lengths, CRC-32 of the data, parts; each part
    decompresses alone."""
    import zlib

    import brotli

    data = bytes((i * 7 + i // 300) % 251 for i in range(n))
    blob = tg.compress(data, "brotli")
    count, step = blob[1], max(1, -(-n // tg.BROTLI_PARTS))  # parts of ceil(n / BROTLI_PARTS) bytes
    assert blob[:1] == b"B" and count == len(range(0, n, step)) and (n < 64 or count == tg.BROTLI_PARTS)
    lengths = np.frombuffer(blob[2 : 2 + 4 * count], dtype="<u4")
    assert int.from_bytes(blob[2 + 4 * count : 6 + 4 * count], "little") == zlib.crc32(data)
    assert 6 + 4 * count + int(lengths.sum()) == len(blob)
    pos = 6 + 4 * count
    for i, length in enumerate(lengths.tolist()):
        assert brotli.decompress(blob[pos : pos + length]) == data[i * step : (i + 1) * step]
        pos += length
    assert tg.decompress(blob) == data


def test_corrupt_brotli_artifact_is_refused():
    """Brotli has no checksum of its own: a flipped bit, a cut, extra bytes or a bare tag each raise a ValueError
    that says the artifact is bad, instead of loading wrong weights."""
    data = bytes((i * 13 + i // 97) % 256 for i in range(20000))
    blob = tg.compress(data, "brotli")
    rng = np.random.default_rng(0)
    for bit in rng.integers(8 * (6 + 4 * blob[1]), 8 * len(blob), 40).tolist():  # payload bits only
        bad = bytearray(blob)
        bad[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(ValueError, match="artifact: corrupt, truncated or extended"):
            tg.decompress(bytes(bad))
    for bad in (blob[:-1], blob + b"\x00", b"B", b"B\x08", blob[:20]):
        with pytest.raises(ValueError, match="artifact: corrupt, truncated or extended"):
            tg.decompress(bad)
    assert tg.decompress(blob) == data


def test_brotli_bytes_do_not_depend_on_the_machine(monkeypatch):
    data = bytes(range(256)) * 400
    blobs = []
    for cpus in (1, 3, 64):
        monkeypatch.setattr(tg.os, "cpu_count", lambda cpus=cpus: cpus)
        blobs.append(tg.compress(data, "brotli"))
    assert blobs[0] == blobs[1] == blobs[2]


@pytest.mark.parametrize("method", ["brotli", "lzma"])
def test_pack_unpack_roundtrip_exact(qstate, method):
    """serialize -> shuffle -> compress -> decompress -> unshuffle -> deserialize is exact, dtypes and shapes kept."""
    raw = tg.serialize_state(qstate)
    assert tg.byte_unshuffle(tg.byte_shuffle(raw)) == raw
    blob = tg.compress(tg.byte_shuffle(raw), method)
    assert blob[:1] == tg.COMPRESSORS[method]
    assert tg.deserialize_state(tg.byte_unshuffle(tg.decompress(blob))).keys() == qstate.keys()
    packed = tg.pack_state(qstate, method)
    assert packed == blob  # pack_state is exactly that pipeline, and deterministic
    back = tg.unpack_state(packed)
    assert list(back) == list(qstate)
    for k, v in qstate.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape, k
        assert torch.equal(back[k], v), k
    assert len(packed) < len(raw)


def test_pack_roundtrip_edge_tensors():
    """0-d, empty, 1-element and odd-byte-length tensors survive; an odd total length survives shuffling."""
    state = {"scalar": torch.tensor(1.5).half(), "empty": torch.zeros(0, 3, dtype=torch.int8),
             "one": torch.tensor([-7], dtype=torch.int8), "odd.q": torch.arange(-7, 8, dtype=torch.int8).view(3, 5),
             "odd.s": torch.tensor([0.5, 1.0, 2.0]).half()}
    raw = tg.serialize_state(state)
    for method in ("brotli", "lzma"):
        back = tg.unpack_state(tg.pack_state(state, method))
        for k, v in state.items():
            assert back[k].dtype == v.dtype and back[k].shape == v.shape and torch.equal(back[k], v), k
    assert raw == tg.serialize_state(tg.deserialize_state(raw))


@pytest.mark.parametrize("n", [0, 1, 2, 3, 7, 8, 1001])
def test_byte_shuffle_any_length(n):
    data = bytes((i * 37 + 11) % 256 for i in range(n))
    shuffled = tg.byte_shuffle(data)
    assert len(shuffled) == n
    assert shuffled == data[0::2] + data[1::2]
    assert tg.byte_unshuffle(shuffled) == data


def test_deserialize_rejects_trailing_and_truncated_bytes(qstate):
    raw = tg.serialize_state(qstate)
    with pytest.raises(ValueError, match="trailing"):
        tg.deserialize_state(raw + b"\x00")
    with pytest.raises(ValueError):
        tg.deserialize_state(raw[:-1])
    with pytest.raises(ValueError, match="compressor"):
        tg.decompress(b"Z" + tg.pack_state(qstate, "lzma")[1:])


def test_format_is_json_header_plus_raw_bytes_and_never_unpickles(qstate, monkeypatch):
    """4-byte little-endian header length, a JSON [name, dtype, shape] list, then the raw tensor bytes; loading
    touches neither pickle nor torch.load."""
    raw = tg.serialize_state(qstate)
    n = int.from_bytes(raw[:4], "little")
    meta = json.loads(raw[4 : 4 + n])
    assert [m[0] for m in meta] == list(qstate)
    assert all(m[1] in ("int8", "float16") and m[2] == list(qstate[m[0]].shape) for m in meta)
    body = b"".join(v.contiguous().numpy().tobytes() for v in qstate.values())
    assert raw[4 + n :] == body

    def forbidden(*args, **kwargs):
        raise AssertionError("the artifact loader must not unpickle")

    for mod, attr in ((pickle, "loads"), (pickle, "load"), (pickle, "Unpickler"), (torch, "load")):
        monkeypatch.setattr(mod, attr, forbidden)
    blob = tg.pack_state(qstate, "brotli")
    back = tg.unpack_state(blob)
    assert all(torch.equal(back[k], v) for k, v in qstate.items())


# ----------------------------------------------------------------------------------------------------
# 6: the packed (self-extracting) script.


@pytest.fixture(scope="module")
def packed_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("packed") / "packed.py"
    path.write_text(tg.pack_source(SCRIPT.read_text(encoding="utf-8")), encoding="utf-8")
    return path


def test_packed_script_computes_what_the_source_computes(packed_path, tiny_h):
    ns = {"__name__": "packed_train_gpt"}
    exec(compile(packed_path.read_text(), str(packed_path), "exec"), ns)
    assert "main" in ns and ns["GPT"] is not tg.GPT  # its own definitions, not the imported module's
    for args in ((1000, 64, 16), (7424, 64, 64), (10, 16, 4), (129, 33, 5)):
        assert ns["window_plan"](*args) == tg.window_plan(*args)
    for p in (0.0, 0.2, 0.3, 0.5, 0.99, 1.0):
        assert ns["lr_multiplier"](p, 0.72) == tg.lr_multiplier(p, 0.72)
    g = torch.randn(16, 24, generator=torch.Generator().manual_seed(21))
    assert torch.equal(ns["newton_schulz5"](g), tg.newton_schulz5(g))
    h = tiny_h()
    x = torch.randint(0, 64, (2, 32), generator=torch.Generator().manual_seed(22))
    y = torch.roll(x, -1, 1)
    losses = []
    for gpt in (tg.GPT, ns["GPT"]):
        torch.manual_seed(5)
        model = gpt(h)
        model.looping = True
        with torch.no_grad():
            losses.append(model(x, y))
    assert torch.equal(losses[0], losses[1]) and torch.isfinite(losses[0])
    # Its hyperparameter parser is the same one.
    assert vars(ns["read_hyperparameters"]()).keys() == vars(tg.read_hyperparameters()).keys()
    # Its source is in linecache: @triton.jit reads the MLP kernel's with inspect.getsource (without it KERNELS=auto
    # would fall back to PyTorch in a packed record).
    assert "def fused_gemm_kernel(" in inspect.getsource(ns["fused_gemm"])
    assert ns["fused_gemm"].__wrapped__.__code__.co_filename == "<train_gpt>"


def test_code_bytes_of_source_and_packed(packed_path):
    src = SCRIPT.read_text(encoding="utf-8")
    source_bytes, counted = tg.code_bytes(SCRIPT)
    assert source_bytes == len(src.encode()) == SCRIPT.stat().st_size
    assert counted == len(tg.pack_source(src).encode())
    assert counted < source_bytes / 2  # LZMA2 + base85 of Python source
    # A packed script counts as it is; its "source" is the program it carries (minified, if pack_source minifies).
    carried = tg.minify_source(src) if hasattr(tg, "minify_source") else src
    assert tg.code_bytes(packed_path) == (len(carried.encode()), packed_path.stat().st_size)
    text = packed_path.read_text()
    assert text.startswith(tg.PACK_PREFIX) and text.count("\n") == 2 and text.isascii()
    b85 = text[len(tg.PACK_PREFIX) + 1 : text.index('"', len(tg.PACK_PREFIX) + 1)]
    payload = lzma.decompress(base64.b85decode(b85), format=lzma.FORMAT_RAW, filters=[{"id": lzma.FILTER_LZMA2}])
    assert payload.decode() == carried
    assert tg.code_bytes(packed_path)[1] == counted  # packing is deterministic


def test_fstrings_hold_no_string_literals():
    """Python 3.12's ast.unparse keeps the outer quote inside f-string fields (PEP 701) where 3.11 switches quotes,
    so a string literal inside an f-string field would make the packed program, and so the counted bytes, depend on
    the Python that packs it (22,619 against 22,630 bytes for one such field), and a copy packed on 3.12 would not
    run on 3.11. Keep such literals out of f-string fields."""
    import ast

    offenders = []
    for node in ast.walk(ast.parse(SCRIPT.read_text(encoding="utf-8"))):
        if isinstance(node, ast.FormattedValue):
            for inner in ast.walk(node.value):
                if isinstance(inner, (ast.Constant, ast.JoinedStr)) and isinstance(getattr(inner, "value", ""), str):
                    offenders.append(f"line {node.lineno}: {ast.unparse(node.value)}")
    assert not offenders, offenders


def test_packed_script_fails_like_the_source_on_bad_env(packed_path):
    env = child_env(VOCAB_SIZE="abc")
    procs = [subprocess.Popen([sys.executable, str(p)], cwd=packed_path.parent, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for p in (SCRIPT, packed_path)]
    results = [p.communicate(timeout=120) for p in procs]
    last_lines = []
    for p, (out, err) in zip(procs, results):
        assert p.returncode != 0, (out, err)
        last_lines.append(err.strip().splitlines()[-1])
    assert last_lines[0] == last_lines[1] == "ValueError: VOCAB_SIZE='abc': expected int", results
    assert not (packed_path.parent / "logs").exists()  # failed before anything was written


# ----------------------------------------------------------------------------------------------------
# 7: the size guarantee.


@pytest.fixture
def calibrated(tiny_h, tiny_model, tiny_data):
    """(qstate, hessians) of a tiny model, Hessians from collect_hessians on the tiny training shards."""
    h = tiny_h(data_dir=str(tiny_data), gptq_calibration_batches=2)
    model = tiny_model(seed=2)
    logs = []
    hessians = tg.collect_hessians(h, model, cpu_dist())
    assert set(hessians) == set(hand_hessians(model))
    return tg.quantize_state(h, model, hessians, cpu_dist(), logs.append), hessians


def code_costs(qstate, hessians):
    """name -> the Hessian-weighted cost (q*s)^2 * H_jj of zeroing each code."""
    out = {}
    for k in qstate:
        if k.endswith(".q"):
            name = k[:-2]
            H = tg.hessian_for(hessians, name)
            out[name] = (qstate[k].float() * qstate[name + ".s"].float()[:, None]) ** 2 * torch.diag(H)[None, :]
    return out


def test_fit_to_limit_zeroes_lowest_cost_codes(calibrated):
    qstate, hessians = calibrated
    full = tg.pack_state(qstate, "brotli")
    limit = int(0.9 * len(full))
    costs = code_costs(qstate, hessians)
    runs = []
    for _ in range(2):
        q = copy.deepcopy(qstate)
        logs = []
        blob, zeroed = tg.fit_to_limit(q, hessians, limit, "brotli", logs.append)
        runs.append((blob, zeroed, q))
        assert len(blob) <= limit and zeroed > 0
        assert any(line.startswith("size_guarantee:") for line in logs), logs
    (blob, zeroed, q), (blob2, zeroed2, _) = runs
    assert blob == blob2 and zeroed == zeroed2  # deterministic
    back = tg.unpack_state(blob)
    assert all(torch.equal(back[k], v) for k, v in q.items())  # the blob is the edited state
    zeroed_costs, kept_costs = [], []
    for name, c in costs.items():
        before, after = qstate[name + ".q"], back[name + ".q"]
        assert torch.equal(after[after != 0], before[after != 0])  # only zeroing, nothing else changed
        zeroed_costs.append(c[(before != 0) & (after == 0)])
        kept_costs.append(c[after != 0])
    for k in qstate:
        if not k.endswith(".q"):
            assert torch.equal(back[k], qstate[k])  # scales and passthrough tensors untouched
    zeroed_costs, kept_costs = torch.cat(zeroed_costs), torch.cat(kept_costs)
    assert zeroed_costs.numel() == zeroed
    assert zeroed_costs.max() <= kept_costs.min()  # exactly the lowest-cost codes went
    # Spot check: the single most expensive code survives.
    name, c = max(costs.items(), key=lambda kv: kv[1].max().item())
    idx = torch.argmax(c)
    assert back[name + ".q"].view(-1)[idx] == qstate[name + ".q"].view(-1)[idx] != 0


def test_fit_to_limit_large_and_impossible_limits(calibrated):
    qstate, hessians = calibrated
    full = tg.pack_state(qstate, "brotli")
    logs = []
    q = copy.deepcopy(qstate)
    assert tg.fit_to_limit(q, hessians, len(full), "brotli", logs.append) == (full, 0)
    assert tg.fit_to_limit(q, hessians, 10 * len(full), "brotli", logs.append) == (full, 0)
    assert logs == [] and all(torch.equal(q[k], v) for k, v in qstate.items())
    with pytest.raises(RuntimeError, match="ARTIFACT_LIMIT") as err:
        tg.fit_to_limit(copy.deepcopy(qstate), hessians, 100, "brotli", logs.append)
    k, size = re.search(r"attempt:\d+ zeroed_codes:(\d+) bytes:(\d+) limit:100$", logs[-1]).groups()
    assert f": {size} bytes with {k} of " in str(err.value)  # the message reports the last packing it measured
    blob, zeroed = tg.fit_to_limit(copy.deepcopy(qstate), hessians, int(0.9 * len(tg.pack_state(qstate, "lzma"))),
                                   "lzma", logs.append)
    assert blob[:1] == b"L" and zeroed > 0


# ----------------------------------------------------------------------------------------------------
# 8: TTT weight averaging across ranks (gloo, two processes).


def _average_worker(rank: int, world_size: int, out_dir: str) -> None:
    import torch.distributed as dist

    store = dist.FileStore(os.path.join(out_dir, "store"), world_size)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world_size)
    try:
        results = {}
        a = torch.full((3, 2), 1.0 + rank)  # rank 0: 1, rank 1: 2
        b = torch.arange(4.0) * (10.0 ** rank)  # rank 0: 0..3, rank 1: 0..30
        tg.average_across_ranks_([a, b], 3.0 if rank == 0 else 1.0)
        results["weighted"] = (a.clone(), b.clone())
        a = torch.full((3, 2), 1.0 + rank)
        b = torch.arange(4.0) * (10.0 ** rank)
        tg.average_across_ranks_([a, b], 0.0 if rank == 0 else 2.0)
        results["zero_weight"] = (a.clone(), b.clone())
        a = torch.full((2,), 5.0)
        tg.average_across_ranks_([a], 0.0)
        results["all_zero"] = a.clone()
        x, y = torch.full((2, 2), 1.0 + rank), torch.tensor([rank * 4.0, 1.0])
        tg.all_reduce_flat_([x, y], 0.5)
        results["flat"] = (x.clone(), y.clone())
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        tg.shut_down_distributed()  # its barrier: ranks that tear down apart abort at times (SIGABRT)


def test_average_across_ranks_gloo(tmp_path):
    res = [torch.load(f) for f in spawn_ranks(_average_worker, 2, tmp_path, timeout=60)]
    for r in res:
        a, b = r["weighted"]  # (3*v0 + 1*v1) / 4
        assert torch.allclose(a, torch.full((3, 2), (3 * 1.0 + 2.0) / 4))
        assert torch.allclose(b, (3 * torch.arange(4.0) + 10 * torch.arange(4.0)) / 4)
        a, b = r["zero_weight"]  # rank 0 saw no data: everyone gets rank 1's values
        assert torch.equal(a, torch.full((3, 2), 2.0)) and torch.equal(b, torch.arange(4.0) * 10)
        assert torch.equal(r["all_zero"], torch.full((2,), 5.0))  # nobody saw data: unchanged
        x, y = r["flat"]  # (sum over ranks) * 0.5
        assert torch.equal(x, torch.full((2, 2), 1.5)) and torch.equal(y, torch.tensor([2.0, 1.0]))


def test_average_and_flat_reduce_single_process():
    """Without a process group: averaging is a no-op and all_reduce_flat_ only scales."""
    a = torch.full((3,), 2.0)
    tg.average_across_ranks_([a], 5.0)
    assert torch.equal(a, torch.full((3,), 2.0))
    b = torch.full((2,), 3.0)
    tg.all_reduce_flat_([a, b], 0.5)
    assert torch.equal(a, torch.full((3,), 1.0)) and torch.equal(b, torch.full((2,), 1.5))


# ----------------------------------------------------------------------------------------------------
# 9: main() end to end: artifact, checkpoints, reload, resume, size guarantee.

E2E_RUN = {**TINY_RUN, "ITERATIONS": "10", "WARMUP_STEPS": "0", "PREQUANT_TTT_CHUNK_TOKENS": "1024",
           "GPTQ_CALIBRATION_BATCHES": "4"}


def run_main(cwd: Path, data: Path, run_id: str, **extra) -> str:
    """main() in `cwd` with the tiny env (every other variable train_gpt reads removed); returns the log."""
    with pytest.MonkeyPatch.context() as mp:
        for name in HPARAM_ENV + DIST_ENV + RETIRED_ENV:
            mp.delenv(name, raising=False)
        for k, v in {**E2E_RUN, "DATA_DIR": str(data), "RUN_ID": run_id, **extra}.items():
            mp.setenv(k, v)
        mp.chdir(cwd)
        tg.main()
    return (cwd / "logs" / f"{run_id}.txt").read_text()


def one(pattern: str, text: str):
    found = re.findall(pattern, text, re.M)
    assert len(found) == 1, (pattern, text)
    return found[0]


@pytest.fixture(scope="module")
def e2e(tmp_path_factory):
    """One default run (pre-quant TTT on): (run folder, data folder, log)."""
    data = tinydata.make_dataset(tmp_path_factory.mktemp("e2e_data"))
    cwd = tmp_path_factory.mktemp("e2e_run")
    return cwd, data, run_main(cwd, data, "base")


def check_export_lines(text: str, cwd: Path, script: Path = SCRIPT) -> tuple[int, int]:
    """Checks the size lines against the files; returns (artifact bytes, counted code bytes)."""
    source, counted = map(int, one(r"^code_bytes source:(\d+) counted:(\d+)$", text))
    assert (source, counted) == tg.code_bytes(script)
    artifact = cwd / "final_model.int6.ptz"
    size = artifact.stat().st_size
    assert int(one(r"^Serialized model quantized\+brotli: (\d+) bytes", text)) == size
    total, limit, zeroed = map(int, one(r"^Total submission size quantized\+brotli: (\d+) bytes limit:(\d+) "
                                        r"zeroed_codes:(\d+)$", text))
    assert total == size + counted and total <= limit
    assert int(one(r"^artifact_reloaded path:final_model\.int6\.ptz bytes:(\d+)$", text)) == size
    assert one(r"^gptq matrices:(\d+) extra_damping:\d+ rtn_fallback:0$", text) == "25"
    state = tg.unpack_state(artifact.read_bytes())
    assert len([k for k in state if k.endswith(".q")]) == 25
    return size, counted


def test_e2e_main_writes_artifact_checkpoints_and_scores(e2e):
    cwd, _, text = e2e
    for name in ("final_model.int6.ptz", "final_model.pt", "final_model.ttt.pt"):
        assert (cwd / name).is_file(), name
    check_export_lines(text, cwd)
    assert re.search(r"^prequant_ttt epoch:2/2 ", text, re.M)
    q_loss, q_bpb = map(float, one(rf"^quantized val_loss:{NUM} val_bpb:{NUM} eval_time:\d+ms "
                                   r"model:prequant_ttt leaderboard_valid:0$", text))
    s_loss, s_bpb = map(float, one(rf"^quantized_sliding_window val_loss:{NUM} val_bpb:{NUM} eval_time:\d+ms "
                                   r"model:prequant_ttt leaderboard_valid:0$", text))
    for v in (q_loss, q_bpb, s_loss, s_bpb):
        assert 0 < v < 5
    final = float(one(rf"^final_score source:quantized_sliding_window val_bpb:{NUM} model:prequant_ttt "
                      r"leaderboard_valid:0$", text))
    assert final == pytest.approx(s_bpb, abs=1e-8)
    assert "quantized_ttt" not in text  # score-first TTT is off by default
    # Checkpoints load without unpickling arbitrary objects and carry their stage.
    for name, stage in (("final_model.pt", "post_ema"), ("final_model.ttt.pt", "post_ttt")):
        ckpt = torch.load(cwd / name, weights_only=True)
        assert ckpt["stage"] == stage and "tok_emb.weight" in ckpt["state"]
    # The reloaded artifact is the quantized post-TTT model. Each GPTQ matrix is within quantization error of the
    # post-TTT checkpoint (rounding alone is about 0.12 of the norm at SDClip k=12.85 and 6 bits; error feedback,
    # which moves single weights by more than half a step, brings it to about 0.19 at these shapes), never farther
    # from it than from the post-EMA checkpoint, and clearly closer where TTT moved the weights.
    raw = tg.unpack_state((cwd / "final_model.int6.ptz").read_bytes())
    deq = tg.dequantize_state(raw)
    ttt = torch.load(cwd / "final_model.ttt.pt", weights_only=True)["state"]
    ema = torch.load(cwd / "final_model.pt", weights_only=True)["state"]
    assert deq.keys() == ttt.keys()
    told_apart = 0
    for k, v in ttt.items():
        if k + ".q" in raw:
            to_ttt = ((deq[k] - v).norm() / v.norm()).item()
            to_ema = ((deq[k] - ema[k].float()).norm() / v.norm()).item()
            assert to_ttt < 0.25 and to_ttt <= to_ema + 1e-6, (k, to_ttt, to_ema)
            told_apart += to_ema > 1.5 * to_ttt
        else:  # fp16 passthrough
            assert torch.equal(deq[k], v.half().float()), k
    assert told_apart >= 2


def test_e2e_resume_skips_training(e2e, tmp_path):
    cwd, data, base = e2e
    shutil.copy(cwd / "final_model.pt", tmp_path / "final_model.pt")
    text = run_main(tmp_path, data, "resume", RESUME_CHECKPOINT="final_model.pt", WARMUP_STEPS="1")
    assert one(r"^resumed checkpoint:(\S+) stage:(\w+)$", text) == ("final_model.pt", "post_ema")
    assert not re.search(r"^\d+/\d+ (train_loss|val_loss)", text, re.M) and "warmup_done" not in text
    # With WARMUP_STEPS > 0 a resumed run compiles the evaluation graphs before the evaluation phase, as a full run's
    # warm-up does; that touches no weight (the post-EMA score below equals the base run's).
    assert text.index("eval_graphs_compiled time:") < text.index("pre-quantization post-ema")
    assert re.search(r"^\d+/\d+ train_loss", base, re.M)
    pre = one(rf"^pre-quantization post-ema val_loss:{NUM} val_bpb:{NUM} ", text)
    assert pre == one(rf"^pre-quantization post-ema val_loss:{NUM} val_bpb:{NUM} ", base)  # same weights
    check_export_lines(text, tmp_path)
    assert (tmp_path / "final_model.ttt.pt").is_file()
    assert re.search(r"^final_score source:quantized_sliding_window val_bpb:\S+ model:prequant_ttt "
                     r"leaderboard_valid:0$", text, re.M)


def test_e2e_artifact_limit_forces_size_guarantee(e2e, tmp_path):
    """Resumed after pre-quant TTT (same model, same artifact as the base run) under a limit 10% below it."""
    cwd, data, base = e2e
    full = int(one(r"^Serialized model quantized\+brotli: (\d+) bytes", base))
    _, counted = map(int, one(r"^code_bytes source:(\d+) counted:(\d+)$", base))
    limit = counted + int(0.9 * full)
    shutil.copy(cwd / "final_model.ttt.pt", tmp_path / "final_model.ttt.pt")
    text = run_main(tmp_path, data, "limit", RESUME_CHECKPOINT="final_model.ttt.pt", ARTIFACT_LIMIT=str(limit))
    assert one(r"^resumed checkpoint:(\S+) stage:(\w+)$", text) == ("final_model.ttt.pt", "post_ttt")
    assert "prequant_ttt epoch" not in text  # the TTT stage is skipped too
    assert "eval_graphs_compiled" not in text  # WARMUP_STEPS=0: no warm-up at all
    attempts = re.findall(r"^size_guarantee attempt:\d+ zeroed_codes:(\d+) bytes:(\d+) limit:(\d+)$", text, re.M)
    assert attempts and all(int(lim) == limit - counted for _, _, lim in attempts)
    assert int(attempts[0][1]) > 0
    over, summary_zeroed = map(int, one(r"^size_guarantee: over by (\d+) bytes; zeroed (?:the )?(\d+) lowest-cost", text))
    assert over == full + counted - limit
    size, counted2 = check_export_lines(text, tmp_path)
    assert counted2 == counted and size + counted <= limit
    zeroed = int(one(r"zeroed_codes:(\d+)$", text.split("Total submission size")[1]))
    assert zeroed == int(attempts[-1][0]) == summary_zeroed > 0
    assert re.search(r"^final_score source:quantized_sliding_window val_bpb:\S+ model:prequant_ttt "
                     r"leaderboard_valid:0$", text, re.M)


def test_packed_script_runs_the_export_path_like_the_source(e2e, packed_path, tmp_path):
    """The packed script itself (a subprocess, as a submission runs it), resumed after pre-quant TTT, writes
    the very artifact the source wrote for the same model and scores it identically; it counts itself as
    the packed file."""
    cwd, data, base = e2e
    shutil.copy(cwd / "final_model.ttt.pt", tmp_path / "final_model.ttt.pt")
    shutil.copy(packed_path, tmp_path / "train_gpt.py")
    env = child_env(**E2E_RUN | {"DATA_DIR": str(data), "RUN_ID": "packed", "RESUME_CHECKPOINT": "final_model.ttt.pt"})
    proc = subprocess.run([sys.executable, "train_gpt.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = (tmp_path / "logs" / "packed.txt").read_text()
    source, counted = map(int, one(r"^code_bytes source:(\d+) counted:(\d+)$", text))
    assert counted == (tmp_path / "train_gpt.py").stat().st_size
    assert (source, counted) == tg.code_bytes(packed_path)
    assert (tmp_path / "final_model.int6.ptz").read_bytes() == (cwd / "final_model.int6.ptz").read_bytes()
    check_export_lines(text, tmp_path, tmp_path / "train_gpt.py")
    pattern = rf"^(quantized(?:_sliding_window)? val_loss:{NUM} val_bpb:{NUM}) "
    assert re.findall(pattern, text, re.M) == re.findall(pattern, base, re.M)
    assert one(r"^(final_score .*)$", text) == one(r"^(final_score .*)$", base)


def test_limit_below_the_code_fails_before_training(clean_env, tiny_data, tmp_path, monkeypatch):
    """ARTIFACT_LIMIT under the counted code bytes stops the run at start, before any training step."""
    monkeypatch.chdir(tmp_path)
    for k, v in {"DATA_DIR": str(tiny_data), "VOCAB_SIZE": "64", "TRAIN_SEQ_LEN": "64", "EVAL_SEQ_LEN": "64",
                 "TRAIN_BATCH_TOKENS": "4096", "PREQUANT_TTT_CHUNK_TOKENS": "1024", "ARTIFACT_LIMIT": "1000",
                 "RUN_ID": "tiny_limit", "NUM_LAYERS": "2", "MODEL_DIM": "64", "NUM_HEADS": "2",
                 "NUM_KV_HEADS": "1", "LOOP_START": "0", "LOOP_END": "1", "XSA_LAST_N": "2"}.items():
        clean_env.setenv(k, v)
    with pytest.raises(ValueError, match="ARTIFACT_LIMIT=1000: the counted code alone"):
        tg.main()
    assert "train_loss" not in (tmp_path / "logs" / "tiny_limit.txt").read_text()
