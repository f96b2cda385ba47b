"""CaseOps transform, strict decoding and per-token original-byte counting (data/caseops.py)."""

import gzip
import itertools
import json
import random
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from data import caseops  # noqa: E402
from data.caseops import ALLCAPS, CAPNEXT, ESC, TITLE  # noqa: E402

from shared_paths import FINEWEB, TOKENIZER  # noqa: E402
needs_tokenizer = pytest.mark.skipif(not TOKENIZER.is_file(), reason=f"{TOKENIZER} not present")


@pytest.fixture(scope="module")
def sp():
    return caseops.load_tokenizer(TOKENIZER)


# ---------------------------------------------------------------------------------------------------
# The transform.

CASES = [
    ("", ""),
    ("a", "a"),
    ("A", TITLE + "a"),
    ("I am", TITLE + "i am"),
    ("NASA", ALLCAPS + "nasa"),
    ("Paris", TITLE + "paris"),
    ("iPhone", "i" + CAPNEXT + "phone"),
    ("McDonald", TITLE + "mc" + CAPNEXT + "donald"),
    ("eBay", "e" + CAPNEXT + "bay"),
    ("ABCdef", TITLE + "a" + CAPNEXT + "b" + CAPNEXT + "cdef"),
    ("aB", "a" + CAPNEXT + "b"),
    ("AB", ALLCAPS + "ab"),
    ("Ab", TITLE + "ab"),
    ("HTTPServer", TITLE + "h" + "".join(CAPNEXT + c for c in "ttps") + "erver"),
    ("USA2024Go", ALLCAPS + "usa2024" + TITLE + "go"),
    ("x_Y", "x_" + TITLE + "y"),
    ("Élan", "Élan"),  # É is not ASCII: "lan" is the run
    ("straße STRASSE", "straße " + ALLCAPS + "strasse"),
    ("ÀB", "À" + TITLE + "b"),  # the run is the single letter B
    (TITLE, ESC + TITLE),
    (TITLE + ALLCAPS + CAPNEXT + ESC, ESC + TITLE + ESC + ALLCAPS + ESC + CAPNEXT + ESC + ESC),
    (ESC + "A", ESC + ESC + TITLE + "a"),
    ("x" + CAPNEXT + "Y", "x" + ESC + CAPNEXT + TITLE + "y"),
    ("Ünïcödé ΑΒΓ ＡＢＣ", "Ünïcödé ΑΒΓ ＡＢＣ"),
]


@pytest.mark.parametrize("text, encoded", CASES)
def test_known_encodings_round_trip(text, encoded):
    assert caseops.encode(text) == encoded
    assert caseops.decode(encoded) == text


def test_encoded_text_has_no_uppercase_ascii():
    assert not any(c.isascii() and c.isupper() for c in caseops.encode("The NASA iPhone McDonald A B C"))


MALFORMED = [
    (TITLE, "TITLE"),                                  # TITLE at the end
    (TITLE + " a", "TITLE"),                           # TITLE not before a letter
    (TITLE + "é", "TITLE"),                            # ... nor before a non-ASCII letter
    ("ab" + TITLE + "c", "inside a letter run"),       # TITLE in the middle of a run
    (TITLE + TITLE + "a", "TITLE"),
    (ALLCAPS, "ALLCAPS"),
    (ALLCAPS + "a", "at least 2"),                     # single-letter ALLCAPS is TITLE
    (ALLCAPS + "a b", "at least 2"),
    ("x" + ALLCAPS + "ab", "inside a letter run"),
    (ALLCAPS + "ab" + CAPNEXT + "c", "continues with CAPNEXT"),
    (CAPNEXT + "a", "start of a letter run"),          # CAPNEXT at run start
    (" " + CAPNEXT + "a", "start of a letter run"),
    ("a" + CAPNEXT, "CAPNEXT"),                        # CAPNEXT at the end
    ("a" + CAPNEXT + " b", "CAPNEXT"),                 # CAPNEXT not before a letter
    ("a" + CAPNEXT + CAPNEXT + "b", "CAPNEXT"),
    (ESC, "dangling ESC"),
    ("abc" + ESC, "dangling ESC"),
    (ESC + "x", "not an operator"),
    (ESC + "A", "uppercase"),
    ("Hello", "uppercase"),                            # raw uppercase ASCII never appears encoded
    (TITLE + "a" + CAPNEXT + "b", "canonical"),        # "AB" must be ALLCAPS ab
    (TITLE + "a" + CAPNEXT + "b" + CAPNEXT + "c", "canonical"),
]


@pytest.mark.parametrize("text, message", MALFORMED)
def test_decode_rejects_malformed(text, message):
    with pytest.raises(ValueError, match=message):
        caseops.decode(text)


def test_lenient_decode_never_raises_and_applies_operators():
    assert caseops.decode(TITLE + "a" + CAPNEXT + "b™TM", strict=False) == "AB™TM"
    assert caseops.decode(ESC + TITLE + CAPNEXT + ALLCAPS + "x", strict=False) == TITLE + "X"


# Text that stresses the transform: ASCII letters of both cases, operators, non-ASCII letters, digits.
_ALPHABET = st.sampled_from(list("aAbBzZ") + [TITLE, ALLCAPS, CAPNEXT, ESC] + list(" 1_éÉßΣ\n"))
tricky_text = st.lists(_ALPHABET, max_size=40).map("".join)


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.text(max_size=80), tricky_text))
def test_round_trip_property(text):
    encoded = caseops.encode(text)
    assert caseops.decode(encoded) == text
    assert not any("A" <= c <= "Z" for c in encoded)


@settings(max_examples=400, deadline=None)
@given(tricky_text)
def test_decode_accepts_only_canonical_encodings(text):
    """Any string decode accepts is the encoding of its decoding: the mapping is a bijection."""
    try:
        decoded = caseops.decode(text)
    except ValueError:
        return
    assert caseops.encode(decoded) == text


def test_transform_is_linear_on_pathological_runs():
    long_runs = ["a" * 400_000 + "B", "aB" * 200_000, "A" * 400_000, TITLE * 200_000, "Ab " * 130_000]
    start = time.perf_counter()
    for text in long_runs:
        assert caseops.decode(caseops.encode(text)) == text
    assert time.perf_counter() - start < 10  # a quadratic scan would take hours


# ---------------------------------------------------------------------------------------------------
# Byte counting.


def codepoint_spans(sp, text):
    """ids and code-point [begin, end) spans of the pieces, from whichever API this sentencepiece has."""
    try:
        result = sp.encode(text, return_type="offset_mapping", return_bytes=False)
        return result["ids"], [tuple(o) for o in result["offsets"]]
    except TypeError:  # sentencepiece <= 0.2.1
        pieces = sp.encode(text, out_type="immutable_proto").pieces
        return [p.id for p in pieces], [(p.begin, p.end) for p in pieces]


def reference_counts(sp, doc):
    """Independent, slow reference: per-character weights over code-point spans of each piece."""
    text = caseops.encode(doc)
    ids, offsets = codepoint_spans(sp, text)
    weights, escaped = [], False
    for ch in text:
        if escaped:
            weights.append(len(ch.encode()))
            escaped = False
        elif ch in caseops.OPERATORS:
            weights.append(0)
            escaped = ch == ESC
        else:
            weights.append(len(ch.encode()))
    return ids, [sum(weights[b:e]) for b, e in offsets], offsets


def test_piece_byte_counts_operators_and_escapes():
    text = TITLE + "ab " + ESC + TITLE + "é"
    data = text.encode()
    # pieces: TITLE | "ab " | ESC | TITLE (literal) | "é"
    bounds = [0, 3, 6, 9, 12, 14]
    counts = caseops.piece_byte_counts(data, bounds[:-1], bounds[1:])
    assert counts.tolist() == [0, 3, 0, 3, 2] and len(data) == 14
    assert caseops.piece_byte_counts(data, [3], [12]).tolist() == [6]  # "ab " + ESC + literal TITLE


def test_piece_byte_counts_rejects_bad_spans():
    data = "héllo".encode()
    with pytest.raises(ValueError, match="contiguous"):
        caseops.piece_byte_counts(data, [0, 3], [2, 6])
    with pytest.raises(ValueError, match="inside a UTF-8 character"):
        caseops.piece_byte_counts(data, [0, 2], [2, 6])
    with pytest.raises(ValueError, match="out of range"):
        caseops.piece_byte_counts(data, [0], [7])


def test_char_to_byte_offsets():
    text = "aé€😀b"
    assert caseops.char_to_byte_offsets(text, [0, 1, 2, 3, 4, 5]).tolist() == [0, 1, 3, 6, 10, 11]


def test_piece_byte_counts_is_linear():
    data = ("x" + TITLE) * 500_000
    raw = data.encode()
    ends = np.cumsum(np.tile([1, 3], 500_000))
    begins = np.concatenate([[0], ends[:-1]])
    start = time.perf_counter()
    counts = caseops.piece_byte_counts(raw, begins, ends)
    assert time.perf_counter() - start < 5
    assert counts.sum() == 500_000


def _generated_docs(n, seed=0, plain=False):
    """Random documents; plain=True keeps to visible words and ASCII whitespace."""
    rng = random.Random(seed)
    words = ["the", "The", "NASA", "iPhone", "McDonald", "A", "I", "eBay", "straße", "Élan", "ﬁnance",
             "x²", "日本語", "😀", TITLE, ESC + ALLCAPS, "ABCdef", "42", "3.14", "don't", "C++"]
    seps = [" ", "  ", "\n", "\n\n", "\t", " \n ", ", ", ". "]
    if not plain:
        words += ["①", "㍿", "e\u0301", "\u200b", "\x01", "fullwidth ＡＢＣ", "™"]
        seps += ["\u3000"]
    docs = []
    for _ in range(n):
        parts = [rng.choice(words) + rng.choice(seps) for _ in range(rng.randint(0, 60))]
        docs.append(rng.choice(["", " ", "\n"]) + "".join(parts))
    return docs


def _real_or_generated_docs(n):
    if FINEWEB.is_file():
        with gzip.open(FINEWEB, "rt", encoding="utf-8") as f:
            return [json.loads(line)["text"] for line in itertools.islice(f, n)]
    return _generated_docs(n, seed=1, plain=True)


@needs_tokenizer
def test_sidecar_sums_to_document_bytes_on_real_text(sp):
    """On FineWeb (or generated text when ../shared/corpus is absent), every document's byte counts
    equal the independent reference and sum to its UTF-8 length less the whitespace edges."""
    docs = _real_or_generated_docs(150)
    tokens = total = 0
    for doc in docs:
        ids, counts = caseops.document_tokens_and_bytes(sp, doc)
        ref_ids, ref_counts, _ = reference_counts(sp, doc)
        assert ids.tolist() == ref_ids and counts.tolist() == ref_counts
        edges_stripped = len(doc.encode()) - len(doc.strip(" \t\n\r").encode())
        assert counts.sum() == len(doc.encode()) - edges_stripped
        tokens, total = tokens + len(ids), total + counts.sum()
    if FINEWEB.is_file():
        assert 2.9 < total / tokens < 3.3  # SPEC: about 3.1 bytes per token


@needs_tokenizer
def test_sidecar_on_generated_hard_documents(sp):
    for doc in _generated_docs(200, seed=2):
        ids, counts = caseops.document_tokens_and_bytes(sp, doc)
        ref_ids, ref_counts, offsets = reference_counts(sp, doc)
        assert ids.tolist() == ref_ids and counts.tolist() == ref_counts
        text = caseops.encode(doc)
        lead = offsets[0][0] if offsets else len(text)
        trail = len(text) - offsets[-1][1] if offsets else 0
        dropped = len(text[:lead].encode()) + (len(text[len(text) - trail:].encode()) if trail else 0)
        assert counts.sum() == len(doc.encode()) - dropped


@needs_tokenizer
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(st.text(max_size=60), tricky_text))
def test_sidecar_property(sp, doc):
    ids, counts = caseops.document_tokens_and_bytes(sp, doc)
    ref_ids, ref_counts, _ = reference_counts(sp, doc)
    assert ids.tolist() == ref_ids and counts.tolist() == ref_counts
    assert (counts >= 0).all()


@needs_tokenizer
def test_immutable_proto_path_matches(sp, monkeypatch):
    """The code-point span path (sentencepiece <= 0.2.1, out_type='immutable_proto') gives the same counts;
    simulated here from the code-point offsets of offset_mapping where that API exists."""

    class Piece:
        def __init__(self, id_, begin, end):
            self.id, self.begin, self.end = id_, begin, end

    class Proto:
        def __init__(self, pieces):
            self.pieces = pieces

    class OldProcessor:
        def encode(self, text, out_type=None):
            assert out_type == "immutable_proto"
            ids, offsets = codepoint_spans(sp, text)
            return Proto([Piece(i, b, e) for i, (b, e) in zip(ids, offsets)])

    docs = _generated_docs(30, seed=3)
    expected = [caseops.document_tokens_and_bytes(sp, d) for d in docs]
    monkeypatch.setattr(caseops, "_SPAN_API", "immutable_proto")
    old = OldProcessor()
    for doc, (ids, counts) in zip(docs, expected):
        text = caseops.encode(doc)
        got_ids, begins, ends = caseops.encode_with_byte_spans(old, text)
        assert got_ids.tolist() == ids.tolist()
        assert caseops.piece_byte_counts(text.encode(), begins, ends).tolist() == counts.tolist()


@needs_tokenizer
def test_fast_path_matches_span_path(sp):
    docs = _generated_docs(40, seed=4)
    fast = caseops.encode_documents(sp, docs)
    assert fast == [caseops.document_tokens_and_bytes(sp, d)[0].tolist() for d in docs]


@needs_tokenizer
def test_operators_are_single_tokens(sp):
    ids, counts = caseops.document_tokens_and_bytes(sp, "NASA Paris iPhone " + TITLE)
    text_ids = [i for i in ids.tolist() if 4 <= i <= 7]
    assert text_ids == [5, 4, 6, 7, 4]
    assert counts[ids == 5].tolist() == [0] and counts[-1] == 3  # escaped TITLE counts its 3 bytes


def test_load_tokenizer_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.model"):
        caseops.load_tokenizer(tmp_path / "missing.model")
    bad = tmp_path / "garbage.model"
    bad.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="garbage.model"):
        caseops.load_tokenizer(bad)


@needs_tokenizer
def test_load_tokenizer_vocab_mismatch():
    with pytest.raises(ValueError, match=r"fineweb_8192.*8192 pieces, expected 4096"):
        caseops.load_tokenizer(TOKENIZER, vocab_size=4096)
