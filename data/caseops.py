"""CaseOps v1: the bijective case transform of the CaseOps SP8192 export, and per-token byte counting.

The transform works on maximal runs of ASCII letters (A-Z, a-z) and leaves everything else alone:

- an all-lowercase run is unchanged;
- a run of two or more letters, all uppercase, becomes ALLCAPS + the run lowercased ("NASA" -> "\\ue002nasa");
- a run whose first letter is uppercase and the rest lowercase (a single capital included) becomes
  TITLE + the run lowercased ("Paris" -> "\\ue001paris", "I" -> "\\ue001i");
- any other mixed run becomes TITLE (only if its first letter is uppercase), then the run lowercased with
  CAPNEXT before every later letter that was uppercase ("iPhone" -> "i\\ue003phone",
  "McDonald" -> "\\ue001mc\\ue003donald");
- a literal operator character U+E001..U+E004 in the input becomes ESC + that character.

`decode` inverts `encode` exactly and accepts only canonical encodings: it raises ValueError on any
malformed or non-canonical operator sequence, so `encode(decode(x)) == x` whenever decode succeeds.

Byte sidecar: `document_tokens_and_bytes` tokenizes a document and returns, per token, the number of
ORIGINAL UTF-8 bytes its SentencePiece surface span covers. Spans come from SentencePiece itself (byte
offsets into the transformed text); operator characters count 0, an ESC counts 0 while the character it
escapes counts its own 3 bytes, every other character its UTF-8 length. The counting is linear in the
document length and checks its own invariants instead of ever returning a wrong count.
"""

from __future__ import annotations

import re
import string
from pathlib import Path

import numpy as np

TRANSFORM_NAME = "caseops_v1"

TITLE, ALLCAPS, CAPNEXT, ESC = "\ue001", "\ue002", "\ue003", "\ue004"
OPERATORS = (TITLE, ALLCAPS, CAPNEXT, ESC)
# Token ids of the operators in the CaseOps SP8192 tokenizer (user-defined pieces 4-7), and of <s>.
OPERATOR_TOKEN_IDS = {TITLE: 4, ALLCAPS: 5, CAPNEXT: 6, ESC: 7}
BOS_ID = 1
VOCAB_SIZE = 8192
OPERATOR_UTF8_BYTES = 3  # U+E001..U+E004 are three bytes each in UTF-8

# A maximal ASCII-letter run that contains an uppercase letter (all-lowercase runs need no change), or a
# literal operator character. The look-behind pins matches to run starts and the possessive quantifiers
# forbid backtracking, so the scan stays linear in the text length.
_ENCODE_RE = re.compile(r"(?<![A-Za-z])[a-z]*+[A-Z][A-Za-z]*+|[\ue001-\ue004]")
_CAPNEXT_TABLE = {ord(c): CAPNEXT + c.lower() for c in string.ascii_uppercase}

# One operator together with what it applies to. Groups: 1 escaped char, 2 ALLCAPS run, 3 TITLE letter,
# 4 CAPNEXT letter; each may be empty, which the callback reports as malformed.
_DECODE_RE = re.compile(r"\ue004([\s\S]?)|\ue002([a-z]*)|\ue001([a-z]?)|\ue003([a-z]?)")
_UPPER_ASCII_RE = re.compile(r"[A-Z]")
_LOWER_ASCII = frozenset(string.ascii_lowercase)

# Operator characters that stand for no original byte, in the UTF-8 of transformed text: ESC followed by
# an escaped character (only the ESC is zero; the escaped character is original text), or a lone operator.
_ZERO_OPERATOR_RE = re.compile(rb"\xee\x80\x84\xee\x80[\x81-\x84]|\xee\x80[\x81-\x84]")
_ASCII_WHITESPACE = b" \t\n\r\x0b\x0c"


def _encode_run(match: re.Match) -> str:
    s = match.group()
    first = s[0]
    if first >= "\ue001":  # a literal operator character
        return ESC + first
    if s.isupper():  # every letter uppercase (the run is ASCII letters only)
        return (ALLCAPS if len(s) > 1 else TITLE) + s.lower()
    if first <= "Z":  # uppercase first letter, some lowercase later
        rest = s[1:]
        if rest.islower():
            return TITLE + s.lower()
        return TITLE + first.lower() + rest.translate(_CAPNEXT_TABLE)
    return s.translate(_CAPNEXT_TABLE)  # lowercase first letter, an uppercase one later


def encode(text: str) -> str:
    """Applies the CaseOps v1 transform to `text` (see the module docstring)."""
    return _ENCODE_RE.sub(_encode_run, text)


def _decode_lenient(match: re.Match) -> str:
    op = match.group()[0]
    operand = match.group({ESC: 1, ALLCAPS: 2, TITLE: 3, CAPNEXT: 4}[op])
    return operand if op == ESC else operand.upper()


def decode(text: str, strict: bool = True) -> str:
    """Inverts `encode`. Raises ValueError on malformed or non-canonical operator sequences.

    strict=False is for text that went through the tokenizer's NFKC normalizer after the transform
    (sp.decode of a token stream): normalization can create uppercase ASCII ("\u2122" -> "TM") or put
    letters next to operators ("\ufb01" -> "fi"), so the lenient mode applies every operator to what
    follows it, drops operators that have nothing to apply to, and never raises."""
    if not strict:
        return _DECODE_RE.sub(_decode_lenient, text)
    upper = _UPPER_ASCII_RE.search(text)
    if upper:
        raise ValueError(f"CaseOps decode: uppercase ASCII letter {upper.group()!r} at position "
                         f"{upper.start()}; encoded text has only lowercase ASCII letters")

    def after_letter(pos: int) -> bool:
        return pos > 0 and text[pos - 1] in _LOWER_ASCII

    def replace(match: re.Match) -> str:
        op, pos = match.group()[0], match.start()
        if op == ESC:
            escaped = match.group(1)
            if not escaped:
                raise ValueError(f"CaseOps decode: dangling ESC at position {pos} (end of text)")
            if escaped not in OPERATORS:
                raise ValueError(f"CaseOps decode: ESC at position {pos} followed by {escaped!r}, "
                                 "which is not an operator character")
            return escaped
        if op == ALLCAPS:
            run = match.group(2)
            if after_letter(pos):
                raise ValueError(f"CaseOps decode: ALLCAPS at position {pos} inside a letter run")
            if len(run) < 2:
                raise ValueError(f"CaseOps decode: ALLCAPS at position {pos} followed by {len(run)} "
                                 "lowercase letter(s); it needs a run of at least 2")
            end = match.end()
            if end < len(text) and text[end] == CAPNEXT:
                raise ValueError(f"CaseOps decode: ALLCAPS run at position {pos} continues with CAPNEXT")
            return run.upper()
        letter = match.group(3) if op == TITLE else match.group(4)
        name = "TITLE" if op == TITLE else "CAPNEXT"
        if not letter:
            raise ValueError(f"CaseOps decode: {name} at position {pos} not followed by a lowercase "
                             "ASCII letter")
        if op == TITLE and after_letter(pos):
            raise ValueError(f"CaseOps decode: TITLE at position {pos} inside a letter run")
        if op == CAPNEXT and not after_letter(pos):
            raise ValueError(f"CaseOps decode: CAPNEXT at position {pos} at the start of a letter run")
        return letter.upper()

    decoded = _DECODE_RE.sub(replace, text)
    if encode(decoded) != text:
        raise ValueError("CaseOps decode: not the canonical encoding of its decoded text "
                         f"(decoded {decoded[:60]!r})")
    return decoded


# ---------------------------------------------------------------------------------------------------
# Tokenizer, spans and byte counts.


def load_tokenizer(path, vocab_size: int = VOCAB_SIZE):
    """Loads a SentencePiece model and checks that it is a CaseOps tokenizer of `vocab_size` pieces:
    <s> is id 1 and ids 4-7 are the operators U+E001..U+E004. Errors name the file."""
    import sentencepiece as spm

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: tokenizer model not found")
    try:
        sp = spm.SentencePieceProcessor(model_file=str(path))
    except Exception as exc:  # sentencepiece raises OSError/RuntimeError depending on version
        raise ValueError(f"{path}: not a loadable SentencePiece model ({exc})") from exc
    if sp.vocab_size() != vocab_size:
        raise ValueError(f"{path}: tokenizer vocabulary has {sp.vocab_size()} pieces, expected {vocab_size}")
    if sp.bos_id() != BOS_ID:
        raise ValueError(f"{path}: tokenizer BOS id is {sp.bos_id()}, expected {BOS_ID}")
    for op, token_id in OPERATOR_TOKEN_IDS.items():
        piece = sp.id_to_piece(token_id)
        if piece != op:
            raise ValueError(f"{path}: piece {token_id} is {piece!r}, expected the CaseOps operator "
                             f"U+{ord(op):04X}; not a CaseOps tokenizer")
    return sp


_SPAN_API: str | None = None


def _span_api(sp) -> str:
    """Which SentencePiece API gives piece spans: 'offset_mapping' (0.2.2+; byte offsets with
    return_bytes=True) or 'immutable_proto' (0.1.99-0.2.1; spans in Unicode code points)."""
    global _SPAN_API
    if _SPAN_API is None:
        try:
            sp.encode("a", return_type="offset_mapping", return_bytes=True)
            _SPAN_API = "offset_mapping"
        except (TypeError, ValueError):
            try:
                sp.encode("a", out_type="immutable_proto").pieces  # noqa: B018 - probing the API
                _SPAN_API = "immutable_proto"
            except (TypeError, ValueError, AttributeError) as exc:
                import sentencepiece as spm

                raise RuntimeError(f"sentencepiece {spm.__version__} offers neither "
                                   "return_type='offset_mapping' nor out_type='immutable_proto'; "
                                   "piece spans are needed for the byte sidecar") from exc
    return _SPAN_API


def char_to_byte_offsets(text: str, char_offsets) -> np.ndarray:
    """Maps code-point offsets into `text` to byte offsets into text.encode('utf-8')."""
    cps = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    prefix = np.zeros(len(cps) + 1, dtype=np.int64)
    np.cumsum(1 + (cps >= 0x80).astype(np.int64) + (cps >= 0x800) + (cps >= 0x10000), out=prefix[1:])
    return prefix[np.asarray(char_offsets, dtype=np.int64)]


def encode_with_byte_spans(sp, text: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tokenizes `text` (already transformed). Returns ids (int64) and each piece's [begin, end) byte span
    in text.encode('utf-8'), as SentencePiece reports it for the original (pre-normalization) input."""
    if _span_api(sp) == "offset_mapping":
        result = sp.encode(text, return_type="offset_mapping", return_bytes=True)
        ids = np.asarray(result["ids"], dtype=np.int64)
        spans = np.asarray(result["offsets"], dtype=np.int64).reshape(-1, 2)
        return ids, spans[:, 0].copy(), spans[:, 1].copy()
    pieces = sp.encode(text, out_type="immutable_proto").pieces
    ids = np.fromiter((p.id for p in pieces), dtype=np.int64, count=len(pieces))
    begins = np.fromiter((p.begin for p in pieces), dtype=np.int64, count=len(pieces))
    ends = np.fromiter((p.end for p in pieces), dtype=np.int64, count=len(pieces))
    return ids, char_to_byte_offsets(text, begins), char_to_byte_offsets(text, ends)


def _zero_operator_positions(data: bytes, raw: np.ndarray) -> np.ndarray:
    """Sorted byte offsets of the operator characters in `data` that stand for no original byte."""
    lead = np.flatnonzero(raw[:-2] == 0xEE)  # operators are EE 80 81..84
    ops = lead[(raw[lead + 1] == 0x80) & (raw[lead + 2] >= 0x81) & (raw[lead + 2] <= 0x84)]
    if not np.any(raw[ops + 2] == 0x84):
        return ops  # no ESC: every operator is a zero-byte operator
    return np.fromiter((m.start() for m in _ZERO_OPERATOR_RE.finditer(data)), dtype=np.int64)


def piece_byte_counts(data: bytes, begins, ends) -> np.ndarray:
    """Original UTF-8 bytes covered by each piece span [begins[i], ends[i]) of `data`, the UTF-8 of a
    CaseOps-transformed text: span bytes minus 3 for every operator character in it that stands for no
    original byte (an escaped operator character is original text and counts 3).

    The spans must tile one contiguous range of `data` in order, with every boundary on a character start;
    anything else raises ValueError. Linear in len(data) + number of pieces."""
    begins = np.asarray(begins, dtype=np.int64)
    ends = np.asarray(ends, dtype=np.int64)
    n = len(begins)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    if len(ends) != n:
        raise ValueError(f"{n} span begins but {len(ends)} span ends")
    if begins[0] < 0 or ends[-1] > len(data) or np.any(ends < begins):
        raise ValueError(f"piece spans out of range or reversed for a {len(data)}-byte text")
    if n > 1 and np.any(begins[1:] != ends[:-1]):
        i = int(np.flatnonzero(begins[1:] != ends[:-1])[0])
        raise ValueError(f"piece spans are not contiguous: piece {i} ends at byte {int(ends[i])}, "
                         f"piece {i + 1} begins at byte {int(begins[i + 1])}")
    raw = np.frombuffer(data, dtype=np.uint8)
    bounds = np.concatenate([begins, ends[-1:]])
    inner = bounds[bounds < len(data)]
    if np.any((raw[inner] & 0xC0) == 0x80):
        raise ValueError("a piece boundary falls inside a UTF-8 character")
    zero = _zero_operator_positions(data, raw)
    inside = np.searchsorted(zero, ends) - np.searchsorted(zero, begins)
    return (ends - begins) - OPERATOR_UTF8_BYTES * inside


def _check_dropped(sp, edge: bytes, where: str) -> None:
    """Text before the first or after the last piece must be text the normalizer removes."""
    if not edge.strip(_ASCII_WHITESPACE):
        return
    text = edge.decode("utf-8")
    if len(sp.encode(text)):
        raise ValueError(f"{len(edge)} bytes at the {where} of the document ({text[:40]!r}) are covered by "
                         "no piece, yet the tokenizer does not drop them")


def document_tokens_and_bytes(sp, doc: str) -> tuple[np.ndarray, np.ndarray]:
    """Transforms and tokenizes one document. Returns its token ids (no BOS) and, per token, the number of
    original UTF-8 bytes it covers. Their sum equals the UTF-8 length of `doc` less the leading and
    trailing text the normalizer drops (whitespace); this is checked, and a violation raises ValueError."""
    text = encode(doc)
    data = text.encode("utf-8")
    ids, begins, ends = encode_with_byte_spans(sp, text)
    counts = piece_byte_counts(data, begins, ends)
    lead_end = int(begins[0]) if len(ids) else len(data)
    trail_start = int(ends[-1]) if len(ids) else len(data)
    _check_dropped(sp, data[:lead_end], "start")
    _check_dropped(sp, data[trail_start:], "end")
    # The dropped edges hold no operator (operators always become tokens), so they are original bytes.
    expected = len(doc.encode("utf-8")) - lead_end - (len(data) - trail_start)
    total = int(counts.sum())
    if total != expected:
        raise ValueError(f"byte counts sum to {total}, expected {expected} for a "
                         f"{len(doc.encode('utf-8'))}-byte document")
    return ids, counts


def encode_documents(sp, docs: list[str]) -> list[list[int]]:
    """Token ids (no BOS) of each transformed document; the fast path for training data (no spans)."""
    return sp.encode([encode(d) for d in docs], out_type=int, num_threads=1)
