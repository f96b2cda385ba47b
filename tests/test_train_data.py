"""train_gpt's data side: the training loader, shard/sidecar/tokenizer/env validation, BPB byte counting."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch

import tinydata
import train_gpt as tg

pytestmark = pytest.mark.usefixtures("clean_env")
CPU = torch.device("cpu")
STRIDE = 10_000  # synthetic shard k holds the tokens k*STRIDE, k*STRIDE+1, ...: a token tells where it was read


def arange_shards(root, lengths) -> list:
    files = []
    for k, n in enumerate(lengths):
        path = root / f"fineweb_train_{k:06d}.bin"
        tinydata.write_shard(path, np.arange(k * STRIDE, k * STRIDE + n))
        files.append(path)
    return files


def draw(loader, n_batches):
    return [loader.next_batch() for _ in range(n_batches)]


# ---------------------------------------------------------------------------------------------------- loader


def test_loader_deterministic_per_seed(tiny_data):
    """Same SEED gives identical batches; a different SEED (or rank) gives different ones; tokens in range."""
    files = tg.dataset_files(str(tiny_data), 64, "train")
    assert len(files) == 2

    def batches(seed, rank=0, world=1):
        return draw(tg.TrainLoader(files, 32, 8, rank, world, seed, 64, CPU), 6)

    a, b, c = batches(1337), batches(1337), batches(1338)
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert any(not torch.equal(xa, xc) for (xa, _), (xc, _) in zip(a, c))
    d = draw(tg.TrainLoader(files, 32, 8, 0, 1, 1337, 64, CPU), 6)  # fresh loader, same seed: same again
    assert all(torch.equal(xa, xd) for (xa, _), (xd, _) in zip(a, d))
    one_file_ranks = [draw(tg.TrainLoader(files[:1], 32, 8, r, 2, 1337, 64, CPU), 2) for r in (0, 1)]
    assert not torch.equal(one_file_ranks[0][0][0], one_file_ranks[1][0][0])  # rank enters the seed
    for x, y in a:
        assert x.shape == y.shape == (8, 32) and x.dtype == y.dtype == torch.int64
        assert 0 <= int(x.min()) and int(x.max()) < 64 and 0 <= int(y.min()) and int(y.max()) < 64
        assert torch.equal(x[:, 1:], y[:, :-1])


def test_loader_sequences_are_aligned_shard_slices(tmp_path):
    """Each sequence is shard[start : start+L+1] with start = phase_k + j*L, one phase per shard, no repeats."""
    L, lengths = 16, [3000, 2500, 3100]
    files = arange_shards(tmp_path, lengths)
    loader = tg.TrainLoader(files, L, 8, 0, 1, 7, 65536, CPU)
    starts = {k: [] for k in range(len(files))}
    for x, y in draw(loader, 15):  # 120 sequences: no shard (>= 155 windows) is exhausted
        seq = torch.cat([x, y[:, -1:]], dim=1)
        assert torch.equal(x[:, 1:], y[:, :-1])
        for row in seq.tolist():
            k, start = divmod(row[0], STRIDE)
            assert row == list(range(row[0], row[0] + L + 1))  # a contiguous slice of shard k
            assert start + L + 1 <= lengths[k]
            starts[k].append(start)
    assert all(starts.values())  # every shard is drawn from
    for k, s in starts.items():
        assert len({st % L for st in s}) == 1, f"shard {k}: several phases {sorted({st % L for st in s})}"
        assert len(set(s)) == len(s), f"shard {k}: a window was repeated before the shard was exhausted"


def test_loader_epoch_is_a_permutation_of_windows_then_reshuffles(tmp_path):
    """On one shard, each run of n_windows draws covers phase + L*arange(n_windows) once; phases may change."""
    L, n = 16, 600
    files = arange_shards(tmp_path, [n])
    loader = tg.TrainLoader(files, L, 4, 0, 1, 3, 65536, CPU)
    starts = [int(v) for x, _ in draw(loader, 60) for v in x[:, 0]]  # 240 draws: several epochs
    pos, epochs, phases = 0, 0, set()
    while True:
        phase = starts[pos] % L
        n_windows = (n - phase - 1) // L
        if pos + n_windows > len(starts):
            break
        assert sorted(starts[pos : pos + n_windows]) == [phase + L * j for j in range(n_windows)]
        pos, epochs = pos + n_windows, epochs + 1
        phases.add(phase)
    assert epochs >= 5 and len(phases) >= 2


@pytest.mark.parametrize("n_files", [2, 3, 4])
def test_loader_ranks_read_disjoint_shards(tmp_path, n_files):
    """With world_size=2 and >= 2 shards, rank r reads shards r, r+2, ... and nothing else."""
    files = arange_shards(tmp_path, [400] * n_files)
    seen = []
    for rank in (0, 1):
        loader = tg.TrainLoader(files, 16, 8, rank, 2, 1337, 65536, CPU)
        assert loader.files == files[rank::2]
        seen.append({int(v) // STRIDE for x, _ in draw(loader, 10) for v in x[:, 0]})
        assert seen[-1] == set(range(rank, n_files, 2))
    assert not seen[0] & seen[1]


# ---------------------------------------------------------------------------------------------------- errors


def write_raw(path, magic=20240520, version=1, n=10, n_written=None, header_bytes=1024):
    header = np.zeros(256, dtype="<i4")
    header[:3] = (magic, version, n)
    body = np.arange(n if n_written is None else n_written, dtype="<u2")
    path.write_bytes(header.tobytes()[:header_bytes] + (body.tobytes() if header_bytes == 1024 else b""))
    return path


def test_shard_header_ok_and_load(tmp_path):
    """A well-formed shard loads: its token count and its uint16 values."""
    path = write_raw(tmp_path / "ok.bin", n=10)
    assert tg.read_shard_header(path) == 10
    assert tg.load_data_shard(path).tolist() == list(range(10))
    assert tg.map_data_shard(path).tolist() == list(range(10))


@pytest.mark.parametrize("kind,kwargs,pattern", [
    ("magic", dict(magic=12345), r"magic/version 12345/1"),
    ("version", dict(version=2), r"magic/version 20240520/2"),
    ("size_short", dict(n=10, n_written=9), r"1042 bytes, but the header says 10 tokens, i.e. 1044"),
    ("size_long", dict(n=10, n_written=11), r"1046 bytes, but the header says 10 tokens"),
    ("negative_n", dict(n=-1, n_written=0), r"header says -1 tokens"),
    ("truncated_header", dict(header_bytes=100), r"100 bytes, shorter than the 1024-byte header"),
])
def test_shard_format_errors_name_the_file(tmp_path, kind, kwargs, pattern):
    """Bad magic, version, size or a truncated header raise ValueError naming the file."""
    path = write_raw(tmp_path / f"fineweb_train_{kind}.bin", **kwargs)
    for fn in (tg.read_shard_header, tg.load_data_shard, tg.map_data_shard):
        with pytest.raises(ValueError, match=pattern) as e:
            fn(path)
        assert str(path) in str(e.value)


def test_missing_shard_names_the_file(tmp_path):
    """A missing shard raises FileNotFoundError naming it."""
    path = tmp_path / "fineweb_val_000042.bin"
    with pytest.raises(FileNotFoundError, match="shard file not found") as e:
        tg.load_data_shard(path)
    assert str(path) in str(e.value)


def test_loader_rejects_short_shards_and_out_of_vocab_tokens(tmp_path):
    """TrainLoader names a too-short shard, and a token >= VOCAB_SIZE, and an empty file list."""
    short = arange_shards(tmp_path, [20])
    with pytest.raises(ValueError, match="too short for TRAIN_SEQ_LEN=16") as e:
        tg.TrainLoader(short, 16, 2, 0, 1, 0, 65536, CPU)
    assert str(short[0]) in str(e.value)
    files = arange_shards(tmp_path, [400, 400])
    with pytest.raises(ValueError, match="VOCAB_SIZE=5000"):
        tg.TrainLoader(files, 16, 2, 0, 1, 0, 5000, CPU).next_batch()
    with pytest.raises(FileNotFoundError, match="DATA_DIR"):
        tg.TrainLoader([], 16, 2, 0, 1, 0, 64, CPU)


def test_dataset_files_never_returns_sidecars_as_tokens(tiny_data):
    """The val pattern matches fineweb_val_NNNNNN.bin only; sidecars come only under val_bytes."""
    val = tg.dataset_files(str(tiny_data), 64, "val")
    side = tg.dataset_files(str(tiny_data), 64, "val_bytes")
    assert [p.name for p in val] == ["fineweb_val_000000.bin"]
    assert [p.name for p in side] == ["fineweb_val_bytes_000000.bin"]
    assert [p.name for p in tg.dataset_files(str(tiny_data), 64, "train")] == \
        ["fineweb_train_000000.bin", "fineweb_train_000001.bin"]
    assert tg.dataset_files(str(tiny_data / "nowhere"), 64, "train") == []


def test_load_validation_truncates_and_checks_sidecar(tmp_path, tiny_h):
    """load_validation keeps a multiple of EVAL_SEQ_LEN plus one; a sidecar of another length is named."""
    root = tinydata.make_dataset(tmp_path, n_train_docs=50, n_val_docs=20)
    ds = root / "datasets" / "fineweb10B_sp64"
    h = tiny_h(data_dir=str(root), eval_seq_len=32)
    raw = tg.load_data_shard(ds / "fineweb_val_000000.bin")
    val = tg.load_validation(h, CPU, None)
    usable = (raw.numel() - 1) // 32 * 32
    assert val.tokens.numel() == usable + 1 and val.tokens.dtype == torch.int32
    assert torch.equal(val.tokens, raw[: usable + 1].to(torch.int32))
    assert torch.equal(val.sidecar, tg.load_data_shard(ds / "fineweb_val_bytes_000000.bin")[: usable + 1].int())
    tinydata.write_shard(ds / "fineweb_val_bytes_000000.bin", np.ones(raw.numel() - 1))
    with pytest.raises(ValueError, match=rf"byte sidecar has {raw.numel() - 1} entries .* {raw.numel()} tokens") as e:
        tg.load_validation(h, CPU, None)
    assert str(ds) in str(e.value)  # names the sidecar's folder (there may be several sidecar files)
    bad = tmp_path / "bad"
    tinydata.write_shard(bad / "datasets" / "fineweb10B_sp64" / "fineweb_val_000000.bin", [1] * 5 + [70] + [1] * 40)
    with pytest.raises(ValueError, match="validation token 70 >= VOCAB_SIZE=64"):
        tg.load_validation(tiny_h(data_dir=str(bad)), CPU, None)
    tinydata.write_shard(bad / "datasets" / "fineweb10B_sp64" / "fineweb_val_000000.bin", [1] * 32)
    with pytest.raises(ValueError, match=r"32 validation tokens, fewer than EVAL_SEQ_LEN\+1=33"):
        tg.load_validation(tiny_h(data_dir=str(bad)), CPU, None)
    with pytest.raises(FileNotFoundError, match="DATA_DIR="):
        tg.load_validation(tiny_h(data_dir=str(tmp_path / "none")), CPU, None)


def test_tokenizer_vocab_mismatch_names_tokenizer_path(tiny_data):
    """load_tokenizer raises naming TOKENIZER_PATH when the vocabulary differs or the file is missing."""
    path = str(tiny_data / "tokenizers" / "fineweb_64_bpe.model")
    assert tg.load_tokenizer(path, 64).vocab_size() == 64
    with pytest.raises(ValueError, match=rf"TOKENIZER_PATH={path}: vocabulary of 64 pieces, but VOCAB_SIZE=8192"):
        tg.load_tokenizer(path, 8192)
    with pytest.raises(FileNotFoundError, match="TOKENIZER_PATH=.*missing.model"):
        tg.load_tokenizer(str(tiny_data / "missing.model"), 64)


@pytest.mark.parametrize("env,pattern", [
    (dict(MODEL_DIM="64", NUM_HEADS="3"), r"NUM_HEADS=3: expected a divisor of MODEL_DIM=64"),
    (dict(VOCAB_SIZE="abc"), r"VOCAB_SIZE='abc': expected int"),
    (dict(TRAIN_SEQ_LEN="64", TRAIN_BATCH_TOKENS="1000"), r"TRAIN_BATCH_TOKENS=1000: .*8\*TRAIN_SEQ_LEN=512"),
    (dict(NUM_KV_HEADS="3"), r"NUM_KV_HEADS=3"),
    (dict(EMA_DECAY="1.0"), r"EMA_DECAY=1.0"),
    (dict(SLIDING_WINDOW_ENABLED="yes"), r"SLIDING_WINDOW_ENABLED='yes': expected 0 or 1"),
    (dict(LOOP_END="11"), r"LOOP_START/LOOP_END"),
    (dict(EVAL_STRIDE="4096"), r"EVAL_STRIDE=4096"),
    (dict(LOGIT_SOFTCAP="100"), r"LOGIT_SOFTCAP=100.0: expected in \(0, 64\]"),
    (dict(LOGIT_SOFTCAP="0"), r"LOGIT_SOFTCAP=0.0"),
    (dict(MAX_WALLCLOCK_SECONDS="10", GPTQ_RESERVE_SECONDS="12"), r"GPTQ_RESERVE_SECONDS=12.0"),
    (dict(PREQUANT_TTT_GRAD_CLIP="-1"), r"PREQUANT_TTT_GRAD_CLIP=-1.0: expected >= 0 \(0 = no clipping\)"),
    (dict(TTT_GRAD_CLIP="-0.5"), r"TTT_GRAD_CLIP=-0.5"),
    (dict(MATRIX_LR="-0.01"), r"MATRIX_LR=-0.01: expected >= 0"),
    (dict(TTT_LR="-0.1"), r"TTT_LR=-0.1"),
    (dict(TTT_MOMENTUM="5"), r"TTT_MOMENTUM=5.0: expected in \[0, 1\)"),
    (dict(BETA2="2"), r"BETA2=2.0"),
    (dict(PREQUANT_TTT_MIN_LR_FRAC="-3"), r"PREQUANT_TTT_MIN_LR_FRAC=-3.0: expected in \[0, 1\]"),
    (dict(ADAM_EPS="-1"), r"ADAM_EPS=-1.0: expected > 0"),
    (dict(MATRIX_CLIP_SIGMAS="0"), r"MATRIX_CLIP_SIGMAS=0.0"),
])
def test_bad_env_values_name_the_variable(clean_env, env, pattern):
    """read_hyperparameters rejects bad values with a ValueError naming the variable."""
    for k, v in env.items():
        clean_env.setenv(k, v)
    with pytest.raises(ValueError, match=pattern):
        tg.read_hyperparameters()


def test_env_overrides_are_read(clean_env):
    """Valid env values override the defaults (and the defaults are as in SPEC)."""
    h = tg.read_hyperparameters()
    assert (h.vocab_size, h.num_layers, h.model_dim, h.train_batch_tokens, h.eval_stride) == (8192, 11, 512, 786432, 64)
    clean_env.setenv("NUM_LAYERS", "4")
    clean_env.setenv("SLIDING_WINDOW_ENABLED", "0")
    clean_env.setenv("XSA_LAST_N", "4")
    clean_env.setenv("LOOP_START", "1")
    clean_env.setenv("LOOP_END", "2")
    clean_env.setenv("ROPE_BASE", "500")
    h = tg.read_hyperparameters()
    assert (h.num_layers, h.xsa_last_n, h.loop_start, h.loop_end) == (4, 4, 1, 2)
    assert h.sliding_window_enabled is False and h.rope_base == 500.0


def test_world_size_must_divide_8(clean_env):
    """init_distributed rejects WORLD_SIZE=3 naming the variable (before touching any process group)."""
    clean_env.setenv("WORLD_SIZE", "3")
    with pytest.raises(ValueError, match="WORLD_SIZE=3"):
        tg.init_distributed()
    clean_env.setenv("WORLD_SIZE", "1")
    d = tg.init_distributed()
    assert (d.rank, d.world_size, d.grad_accum_steps, d.is_main) == (0, 1, 8, True)


def test_more_ranks_than_gpus_names_local_rank(clean_env, monkeypatch):
    """A rank without its own GPU (torchrun's --nproc_per_node above the GPU count) stops naming LOCAL_RANK."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    clean_env.setenv("WORLD_SIZE", "2")
    clean_env.setenv("LOCAL_RANK", "1")
    with pytest.raises(ValueError, match=r"LOCAL_RANK=1: 1 CUDA device\(s\) here"):
        tg.init_distributed()


def test_world_size_not_an_int_names_the_variable(clean_env):
    """A non-integer WORLD_SIZE raises naming the variable."""
    clean_env.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="WORLD_SIZE"):
        tg.init_distributed()


def test_main_without_data_names_data_dir(clean_env, tmp_path):
    """main() fails fast naming DATA_DIR when there are no training shards."""
    clean_env.chdir(tmp_path)
    clean_env.setenv("DATA_DIR", str(tmp_path / "empty"))
    clean_env.setenv("RUN_ID", "nodata")
    with pytest.raises(FileNotFoundError, match="DATA_DIR=.*empty.*fineweb_train"):
        tg.main()


# ---------------------------------------------------------------------------------------------------- BPB bytes


def lut_bytes_by_hand(sp, tokens: list[int]) -> list[int]:
    """Bytes charged for tokens[1:], from SPEC §2's rule written against the SentencePiece API."""
    def boundary(t):
        return sp.is_control(t) or sp.is_unknown(t) or sp.is_unused(t)

    out = []
    for prev, tok in zip(tokens[:-1], tokens[1:]):
        if boundary(tok):
            out.append(0)
        elif sp.is_byte(tok):
            out.append(1)
        else:
            piece = sp.id_to_piece(tok)
            lead = piece.startswith("\u2581")
            out.append(len(piece.removeprefix("\u2581").encode("utf-8")) + int(lead and not boundary(prev)))
    return out


def test_target_bytes_with_sidecar(tiny_data):
    """With a sidecar, the bytes of target idx are the sidecar entries at idx."""
    ds = tiny_data / "datasets" / "fineweb10B_sp64"
    tokens = tg.load_data_shard(ds / "fineweb_val_000000.bin").int()
    side = tg.load_data_shard(ds / "fineweb_val_bytes_000000.bin").int()
    idx = torch.arange(1, tokens.numel())
    got = tg.target_bytes(tokens, idx, side, None)
    assert got.dtype == torch.float64
    assert torch.equal(got, side[1:].double())
    perm = torch.randperm(tokens.numel() - 1)[:50] + 1
    assert torch.equal(tg.target_bytes(tokens, perm, side, None), side[perm].double())


def test_target_bytes_with_luts_matches_hand_count(tiny_data, tiny_sp):
    """LUT bytes equal the hand rule on the tiny tokenizer (leading ▁ +1 unless after a control/unk token)."""
    base, lead, boundary = tg.build_sentencepiece_luts(tiny_sp, 64, CPU)
    space, the, dot = (tiny_sp.piece_to_id(p) for p in ("\u2581", "\u2581the", "."))
    assert base[space] == 0 and lead[space] and not boundary[space]  # the bare "▁" piece: 0 + 1 byte
    assert base[the] == 3 and lead[the] and base[dot] == 1 and not lead[dot]
    assert boundary[:4].all() and not boundary[4:].any()  # pad, <s>, </s>, <unk>
    tokens = tg.load_data_shard(tiny_data / "datasets" / "fineweb10B_sp64" / "fineweb_val_000000.bin").int()
    extra = [3, the, 1, dot, the, 0, space]  # targets after <unk>, <s>, "." and <pad>
    tokens = torch.cat([tokens, torch.tensor(extra, dtype=torch.int32)])
    got = tg.target_bytes(tokens, torch.arange(1, tokens.numel()), None, (base, lead, boundary))
    assert got.tolist() == lut_bytes_by_hand(tiny_sp, tokens.tolist())
    assert got[-7:].tolist() == [0, 3, 0, 1, 4, 0, 0]  # ▁the after <unk> = 3; after "." = 4; ▁ after <pad> = 0


def test_lut_bytes_sum_to_document_length(tiny_sp):
    """Per document (BOS + pieces, dummy prefix on), LUT bytes sum to len(doc.encode()) exactly."""
    docs = tinydata.make_text(40, 5)
    tokens, _ = tinydata.encode_docs(tiny_sp, docs)
    tokens = torch.tensor(tokens, dtype=torch.int32)
    luts = tg.build_sentencepiece_luts(tiny_sp, 64, CPU)
    per_target = tg.target_bytes(tokens, torch.arange(1, tokens.numel()), None, luts)
    bos = (tokens == 1).nonzero().flatten().tolist() + [tokens.numel()]
    for doc, a, b in zip(docs, bos[:-1], bos[1:]):
        # targets a+1..b-1 are the document's pieces; the dummy-prefix "▁" follows BOS, so it is not charged
        assert tiny_sp.id_to_piece(int(tokens[a + 1])).startswith("\u2581")
        assert per_target[a : b - 1].sum().item() == len(doc.encode("utf-8")), doc


def test_luts_with_byte_fallback_tokenizer():
    """Byte-fallback pieces count 1 byte each, so a document with non-ASCII text still sums to its UTF-8 length."""
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(tinydata.make_text(400, 0)), model_writer=buf,
                                   vocab_size=300, model_type="bpe", bos_id=1, eos_id=2, unk_id=3, pad_id=0,
                                   byte_fallback=True, hard_vocab_limit=False, character_coverage=1.0, minloglevel=2)
    sp = spm.SentencePieceProcessor(model_proto=buf.getvalue())
    base, lead, boundary = tg.build_sentencepiece_luts(sp, sp.vocab_size(), CPU)
    byte_ids = [i for i in range(sp.vocab_size()) if sp.is_byte(i)]
    assert len(byte_ids) == 256
    assert (base[byte_ids] == 1).all() and not lead[byte_ids].any() and not boundary[byte_ids].any()
    doc = "Café naïve ☃ the cat sat"
    ids = [1] + sp.encode(doc)
    assert any(sp.is_byte(i) for i in ids)
    tokens = torch.tensor(ids, dtype=torch.int32)
    got = tg.target_bytes(tokens, torch.arange(1, len(ids)), None, (base, lead, boundary))
    assert got.tolist() == lut_bytes_by_hand(sp, ids)
    assert got.sum().item() == len(doc.encode("utf-8"))


def test_too_few_calibration_batches_for_the_ranks(clean_env, tiny_data):
    """GPTQ_CALIBRATION_BATCHES below the world size fails at start, naming the variable."""
    for k, v in {"DATA_DIR": str(tiny_data), "VOCAB_SIZE": "64", "GPTQ_CALIBRATION_BATCHES": "1",
                 "TRAIN_SEQ_LEN": "64", "EVAL_SEQ_LEN": "64", "TRAIN_BATCH_TOKENS": "4096"}.items():
        clean_env.setenv(k, v)
    h = tg.read_hyperparameters()
    d = tg.Dist(rank=0, world_size=2, local_rank=0, device=torch.device("cpu"), is_main=True, grad_accum_steps=4)
    with pytest.raises(ValueError, match="GPTQ_CALIBRATION_BATCHES=1"):
        tg.check_inputs(h, d)
