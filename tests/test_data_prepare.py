"""End to end: data/prepare_caseops.py on a few documents, then data/verify.py, plus error cases."""

import gzip
import io
import itertools
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from data import caseops, prepare_caseops, shards, verify  # noqa: E402

from shared_paths import FINEWEB, TOKENIZER  # noqa: E402
pytestmark = pytest.mark.skipif(not TOKENIZER.is_file(), reason=f"{TOKENIZER} not present")

N_DOCS, VAL_DOCS, SHARD_TOKENS = 24, 8, 5000


def _documents():
    """A few real FineWeb documents when ../shared/corpus is present, else generated ones."""
    if FINEWEB.is_file():
        with gzip.open(FINEWEB, "rt", encoding="utf-8") as f:
            return [json.loads(line)["text"][:3000] for line in itertools.islice(f, N_DOCS)]
    words = ["The", "NASA", "iPhone", "data", "of", "McDonald", "Élan", "straße", "42", "\ue001", "ok."]
    return [" ".join(words[(i + j) % len(words)] for j in range(50 + 7 * i)) + "\n" for i in range(N_DOCS)]


@pytest.fixture(scope="module")
def docs():
    return _documents()


@pytest.fixture(scope="module")
def doc_files(tmp_path_factory, docs):
    """The documents split over a plain .jsonl (with a blank line) and a .jsonl.gz file."""
    root = tmp_path_factory.mktemp("docs")
    first, second = root / "a.jsonl", root / "b.jsonl.gz"
    lines = [json.dumps({"text": d, "id": i}) + "\n" for i, d in enumerate(docs)]
    first.write_text("".join(lines[:10]) + "\n")
    with gzip.open(second, "wt", encoding="utf-8") as f:
        f.writelines(lines[10:])
    return [first, second]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, doc_files):
    """The export, made through the command line with two worker processes."""
    out = tmp_path_factory.mktemp("prepared")
    cmd = [sys.executable, str(REPO / "data" / "prepare_caseops.py"), "--docs", str(doc_files[0]),
           "--docs", str(doc_files[1]), "--out", str(out), "--val-docs", str(VAL_DOCS),
           "--tokenizer", str(TOKENIZER), "--workers", "2", "--shard-tokens", str(SHARD_TOKENS)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "docs/s" in result.stderr and "MB/s" in result.stderr
    return out


def _read(out, kind):
    return np.concatenate([shards.read_shard(p) for p in
                           shards.list_shards(out / shards.DATASET_SUBDIR, kind)]).astype(np.int64)


def test_layout_and_manifest(prepared, docs):
    dataset = prepared / shards.DATASET_SUBDIR
    assert (prepared / "tokenizers" / "fineweb_8192_bpe.model").read_bytes() == TOKENIZER.read_bytes()
    manifest = json.loads((prepared / shards.MANIFEST_RELPATH).read_text())
    assert manifest["transform"] == "caseops_v1"
    val, train = manifest["splits"]["val"], manifest["splits"]["train"]
    assert (val["documents"], train["documents"]) == (VAL_DOCS, N_DOCS - VAL_DOCS)
    assert [s["documents"] for s in manifest["sources"]] == [10, N_DOCS - 10]
    assert len(train["shards"]) > 1  # small shards: documents span shard boundaries
    assert [s["name"] for s in train["shards"]] == [p.name for p in shards.list_shards(dataset, "train")]
    assert all(s["tokens"] == SHARD_TOKENS for s in train["shards"][:-1])
    assert val["sidecar_bytes"] == sum(len(d.strip(" \t\n\r").encode()) for d in docs[:VAL_DOCS])


def test_contents_match_encoding(prepared, docs):
    sp = caseops.load_tokenizer(TOKENIZER)
    val, sidecar, train = _read(prepared, "val"), _read(prepared, "val_bytes"), _read(prepared, "train")
    want_val, want_side = [], []
    for doc in docs[:VAL_DOCS]:
        ids, counts = caseops.document_tokens_and_bytes(sp, doc)
        want_val += [1] + ids.tolist()
        want_side += [0] + counts.tolist()
    assert val.tolist() == want_val and sidecar.tolist() == want_side
    want_train = [t for d in caseops.encode_documents(sp, docs[VAL_DOCS:]) for t in [1] + d]
    assert train.tolist() == want_train  # the rest, in order: no overlap with validation


def test_verify_passes(prepared):
    result = subprocess.run([sys.executable, str(REPO / "data" / "verify.py"), str(prepared),
                             "--sample-docs", "5"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "re-encoding the originals exactly" in result.stdout and result.stdout.rstrip().endswith("OK")


def test_single_worker_gives_identical_files(prepared, doc_files, tmp_path):
    prepare_caseops.prepare(doc_files, tmp_path, val_docs=VAL_DOCS, tokenizer=TOKENIZER, workers=1,
                            shard_tokens=SHARD_TOKENS, progress=False)
    for path in sorted((prepared / shards.DATASET_SUBDIR).glob("*.bin")):
        assert (tmp_path / shards.DATASET_SUBDIR / path.name).read_bytes() == path.read_bytes()


def test_train_gpt_loads_the_shards(prepared):
    try:
        import train_gpt
    except ImportError as exc:  # train_gpt.py (or torch) not there yet
        pytest.skip(f"train_gpt not importable: {exc}")
    dataset = prepared / shards.DATASET_SUBDIR
    for path in sorted(dataset.glob("fineweb_*.bin")):
        assert train_gpt.load_data_shard(path).numpy().tolist() == shards.read_shard(path).tolist()
    if hasattr(train_gpt, "dataset_files"):
        for kind in shards.SHARD_KINDS:
            assert train_gpt.dataset_files(str(prepared), 8192, kind) == shards.list_shards(dataset, kind)


@pytest.fixture
def copy_of(prepared, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(prepared, out)
    return out


def _failures(out, **kwargs):
    return verify.verify(out, stream=io.StringIO(), **kwargs)


def test_corrupted_header_is_named(copy_of):
    shard = copy_of / shards.DATASET_SUBDIR / "fineweb_val_000000.bin"
    data = bytearray(shard.read_bytes())
    data[0:4] = (12345).to_bytes(4, "little")
    shard.write_bytes(bytes(data))
    failures = _failures(copy_of)
    assert any("fineweb_val_000000.bin" in f and "magic/version 12345/1" in f for f in failures)
    try:
        import train_gpt
    except ImportError:
        return
    with pytest.raises(ValueError, match="fineweb_val_000000.bin"):
        train_gpt.load_data_shard(shard)


def test_truncated_sidecar_is_named(copy_of):
    sidecar = copy_of / shards.DATASET_SUBDIR / "fineweb_val_bytes_000000.bin"
    sidecar.write_bytes(sidecar.read_bytes()[:-2])
    assert any("fineweb_val_bytes_000000.bin" in f and "header says" in f for f in _failures(copy_of))


def test_sidecar_length_mismatch_is_named(copy_of):
    sidecar = copy_of / shards.DATASET_SUBDIR / "fineweb_val_bytes_000000.bin"
    shards.write_shard(sidecar, shards.read_shard(sidecar, mmap=False)[:-1])
    assert any("fineweb_val_bytes_000000.bin" in f and "byte counts for" in f for f in _failures(copy_of))


def test_wrong_sidecar_values_are_caught(copy_of):
    sidecar = copy_of / shards.DATASET_SUBDIR / "fineweb_val_bytes_000000.bin"
    values = shards.read_shard(sidecar, mmap=False)
    values[5] += 1
    shards.write_shard(sidecar, values)
    failures = _failures(copy_of)
    assert any("differs from the original" in f for f in failures)
    assert any("sidecar_bytes" in f for f in failures)  # the manifest total no longer matches
    values[5] -= 1
    values[0] = 4  # a BOS must count 0 bytes
    shards.write_shard(sidecar, values)
    assert any("at the BOS at validation position 0" in f for f in _failures(copy_of))


def test_token_out_of_vocabulary_is_named(copy_of):
    shard = shards.list_shards(copy_of / shards.DATASET_SUBDIR, "train")[-1]
    values = shards.read_shard(shard, mmap=False)
    values[-1] = 9000
    shards.write_shard(shard, values)
    assert any(shard.name in f and "token id 9000" in f for f in _failures(copy_of))


def test_missing_sidecar(copy_of):
    sidecars = shards.list_shards(copy_of / shards.DATASET_SUBDIR, "val_bytes")
    assert len(sidecars) > 1
    sidecars[-1].unlink()
    assert any("do not pair with validation shards" in f for f in _failures(copy_of))
    for path in sidecars[:-1]:
        path.unlink()
    assert any("no fineweb_val_bytes" in f for f in _failures(copy_of))


def test_verify_without_originals(copy_of):
    (copy_of / shards.MANIFEST_RELPATH).unlink()
    out = io.StringIO()
    assert verify.verify(copy_of, stream=out) == []
    assert "approximate check" in out.getvalue()


@pytest.fixture(scope="module")
def tiny_tokenizer(tmp_path_factory):
    """A SentencePiece model with a 300-piece vocabulary: the wrong tokenizer."""
    import sentencepiece as spm

    root = tmp_path_factory.mktemp("tiny")
    (root / "text.txt").write_text("\n".join(_documents()))
    spm.SentencePieceTrainer.train(input=str(root / "text.txt"), model_prefix=str(root / "tiny"),
                                   vocab_size=300, model_type="bpe", hard_vocab_limit=False,
                                   minloglevel=2)
    return root / "tiny.model"


def test_wrong_tokenizer_vocabulary(tiny_tokenizer, doc_files, tmp_path, capsys):
    with pytest.raises(ValueError, match=r"tiny\.model: tokenizer vocabulary has 300 pieces, expected 8192"):
        prepare_caseops.prepare(doc_files, tmp_path / "a", val_docs=2, tokenizer=tiny_tokenizer, progress=False)
    args = ["--docs", str(doc_files[0]), "--out", str(tmp_path / "b"), "--tokenizer", str(tiny_tokenizer)]
    assert prepare_caseops.main(args) == 1
    assert "tiny.model: tokenizer vocabulary has 300 pieces" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"tiny\.model: piece 4 .* not a CaseOps tokenizer"):
        prepare_caseops.prepare(doc_files, tmp_path / "c", val_docs=2, tokenizer=tiny_tokenizer,
                                vocab_size=300, progress=False)


def test_verify_rejects_wrong_tokenizer(copy_of, tiny_tokenizer):
    shutil.copyfile(tiny_tokenizer, copy_of / shards.TOKENIZER_RELPATH)
    failures = _failures(copy_of)
    assert any("fineweb_8192_bpe.model: tokenizer vocabulary has 300 pieces" in f for f in failures)
    assert any("sha256" in f for f in failures)


def test_prepare_input_errors(doc_files, tmp_path):
    kwargs = dict(tokenizer=TOKENIZER, progress=False)
    with pytest.raises(ValueError, match="not enough for 50 validation documents"):
        prepare_caseops.prepare(doc_files, tmp_path / "few", val_docs=50, **kwargs)
    prepare_caseops.prepare(doc_files[:1], tmp_path / "twice", val_docs=2, **kwargs)
    with pytest.raises(FileExistsError, match="--overwrite"):
        prepare_caseops.prepare(doc_files[:1], tmp_path / "twice", val_docs=2, **kwargs)
    prepare_caseops.prepare(doc_files[:1], tmp_path / "twice", val_docs=2, overwrite=True, **kwargs)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": "fine"}\n{"text": broken\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:3: not a JSON line"):
        prepare_caseops.prepare([bad], tmp_path / "bad", val_docs=1, **kwargs)
    bad.write_text('{"text": "fine"}\n{"body": "no text"}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: no string field 'text'"):
        prepare_caseops.prepare([bad], tmp_path / "bad2", val_docs=1, workers=2, **kwargs)
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        prepare_caseops.prepare([tmp_path / "missing.jsonl"], tmp_path / "m", **kwargs)


def test_progress_line():
    stream = io.StringIO()
    meter = prepare_caseops.Progress(total_bytes=1000, stream=stream)
    meter.update(10, 2_000_000, 500, 250, force=True)
    assert "10 docs" in stream.getvalue() and "MB/s" in stream.getvalue() and "ETA" in stream.getvalue()


def test_bench_script_runs(doc_files, capsys):
    from data import bench_prepare

    assert bench_prepare.main(["--docs", str(doc_files[0]), "--val-docs", "2", "--workers", "1",
                               "--tokenizer", str(TOKENIZER)]) == 0
    out = capsys.readouterr().out
    assert "sp.encode raw text (floor)" in out and "prepare_caseops --workers 1" in out
