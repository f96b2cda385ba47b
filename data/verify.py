"""Checks a CaseOps SP8192 DATA_DIR before training on it.

    python data/verify.py DATA_DIR [--sample-docs 50] [--docs ORIGINAL.jsonl[.gz] ...]

Checks:
- the tokenizer (tokenizers/fineweb_8192_bpe.model) loads, has the expected vocabulary and the CaseOps
  operators at ids 4-7;
- every shard has the exact header (20240520, 1, n) and size 1024 + 2n; token ids are below the vocabulary
  size; train and validation data start with BOS;
- validation shards and byte sidecars pair up one to one with equal lengths; the sidecar is 0 at every BOS;
  operator tokens count 0 bytes, escaped operator characters 3;
- datasets/fineweb10B_sp8192/manifest.json, when present, matches the files (names, token, document and
  byte counts, tokenizer sha256);
- a sample of validation documents decodes (sp.decode, then the CaseOps decode). When the original
  documents are at hand (the manifest's sources, or --docs), each sampled document is re-encoded and must
  give the stored tokens and sidecar exactly, and the sidecar must sum to the document's UTF-8 length
  (less the leading/trailing whitespace the tokenizer drops). Without them, the decoded text's UTF-8 length
  is compared with the sidecar sum: the tokenizer's normalization (newlines and tabs become spaces, runs of
  spaces collapse, NFKC) changes a few bytes, so only a 2% aggregate tolerance is applied.

Prints one line per check and exits non-zero if any check fails.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from data import caseops, shards  # noqa: E402
from data.prepare_caseops import file_sha256, iter_documents  # noqa: E402

APPROX_TOLERANCE = 0.02


class Report:
    """Collects check results and prints them as they come."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stdout
        self.failures: list[str] = []

    def ok(self, name: str, message: str) -> None:
        print(f"  {name:<10} ok    {message}", file=self.stream)

    def fail(self, name: str, message: str) -> None:
        self.failures.append(f"{name}: {message}")
        print(f"  {name:<10} FAIL  {message}", file=self.stream)

    def note(self, name: str, message: str) -> None:
        print(f"  {name:<10} note  {message}", file=self.stream)


def _check_tokens(report: Report, kind: str, paths: list[Path], vocab_size: int) -> list[int] | None:
    """Header/size/range checks of token shards; returns the token counts, or None on failure."""
    if not paths:
        report.fail(kind, f"no fineweb_{kind}_NNNNNN.bin shards")
        return None
    counts, failed, max_id = [], False, -1
    for path in paths:
        try:
            data = shards.read_shard(path)
        except (ValueError, FileNotFoundError) as exc:
            report.fail(kind, str(exc))
            failed = True
            continue
        counts.append(len(data))
        if len(data):
            top = int(data.max())
            max_id = max(max_id, top)
            if top >= vocab_size:
                report.fail(kind, f"{path}: token id {top} >= vocabulary size {vocab_size}")
                failed = True
    if failed:
        return None
    first = shards.read_shard(paths[0])
    if len(first) == 0 or first[0] != caseops.BOS_ID:
        report.fail(kind, f"{paths[0]}: does not start with BOS ({caseops.BOS_ID})")
        return None
    report.ok(kind, f"{len(paths)} shard(s), {sum(counts):,} tokens, max id {max_id}")
    return counts


def _literal_operator_mask(tokens: np.ndarray) -> tuple[np.ndarray, str | None]:
    """Marks operator tokens that are escaped literal characters (the token after an operator ESC)."""
    literal = np.zeros(len(tokens), dtype=bool)
    esc_id = caseops.OPERATOR_TOKEN_IDS[caseops.ESC]
    for pos in np.flatnonzero(tokens == esc_id):
        if literal[pos]:
            continue  # this ESC token is itself an escaped character
        if pos + 1 >= len(tokens) or not 4 <= tokens[pos + 1] <= 7:
            return literal, f"ESC token at validation position {pos} is not followed by an operator token"
        literal[pos + 1] = True
    return literal, None


def _check_sidecar(report: Report, val_paths, side_paths, val_counts) -> tuple | None:
    """Pairs val shards with sidecars; returns the concatenated (tokens, sidecar) or None on failure."""
    if not side_paths:
        report.fail("sidecar", "no fineweb_val_bytes_NNNNNN.bin sidecar shards")
        return None
    val_ids = [p.name[len("fineweb_val_"):] for p in val_paths]
    side_ids = [p.name[len("fineweb_val_bytes_"):] for p in side_paths]
    if val_ids != side_ids:
        report.fail("sidecar", f"sidecar shards {side_ids} do not pair with validation shards {val_ids}")
        return None
    parts = []
    for path, expected in zip(side_paths, val_counts):
        try:
            data = shards.read_shard(path)
        except (ValueError, FileNotFoundError) as exc:
            report.fail("sidecar", str(exc))
            return None
        if len(data) != expected:
            report.fail("sidecar", f"{path}: {len(data):,} byte counts for {expected:,} validation tokens")
            return None
        parts.append(data)
    tokens = np.concatenate([shards.read_shard(p) for p in val_paths])
    sidecar = np.concatenate(parts)
    bos = tokens == caseops.BOS_ID
    if np.any(sidecar[bos] != 0):
        pos = int(np.flatnonzero(bos & (sidecar != 0))[0])
        report.fail("sidecar", f"non-zero byte count {int(sidecar[pos])} at the BOS at validation position {pos}")
        return None
    total = int(sidecar.sum(dtype=np.int64))
    report.ok("sidecar", f"{len(side_paths)} shard(s) aligned with validation; 0 at all {int(bos.sum()):,} BOS; "
                         f"{total:,} bytes, {total / max(len(tokens) - int(bos.sum()), 1):.3f} bytes/token")
    ops = (tokens >= 4) & (tokens <= 7)
    literal, error = _literal_operator_mask(tokens)
    if error:
        report.fail("operators", error)
        return tokens, sidecar
    expected = np.where(literal, caseops.OPERATOR_UTF8_BYTES, 0)[ops]
    if np.any(sidecar[ops] != expected):
        pos = int(np.flatnonzero(ops)[np.flatnonzero(sidecar[ops] != expected)[0]])
        report.fail("operators", f"operator token {int(tokens[pos])} at validation position {pos} counts "
                                 f"{int(sidecar[pos])} bytes, expected {int(np.where(literal, 3, 0)[pos])}")
    else:
        report.ok("operators", f"{int(ops.sum()):,} operator tokens count 0 bytes "
                               f"({int(literal.sum())} escaped literal(s) count 3)")
    return tokens, sidecar


def _check_manifest(report: Report, root: Path, found: dict, val: tuple | None, tokenizer: Path):
    path = root / shards.MANIFEST_RELPATH
    if not path.is_file():
        report.note("manifest", "no manifest.json (e.g. a downloaded export); skipped")
        return None
    try:
        manifest = json.loads(path.read_text())
        splits = manifest["splits"]
        listed = {"train": splits["train"]["shards"], "val": splits["val"]["shards"],
                  "val_bytes": splits["val"]["sidecar_shards"]}
    except (ValueError, KeyError, TypeError) as exc:
        report.fail("manifest", f"{path}: unreadable ({exc!r})")
        return None
    problems = []
    for kind, entries in listed.items():
        names = [e["name"] for e in entries]
        if names != [p.name for p in found[kind]]:
            problems.append(f"{kind} shards {names} != files {[p.name for p in found[kind]]}")
        else:
            for entry, shard in zip(entries, found[kind]):
                try:
                    n_tokens = shards.read_header(shard)
                except (ValueError, FileNotFoundError):
                    continue  # already reported by the shard checks
                if entry["tokens"] != n_tokens:
                    problems.append(f"{shard}: manifest says {entry['tokens']} tokens, the file {n_tokens}")
    if val is not None:
        tokens, sidecar = val
        if splits["val"]["documents"] != int((tokens == caseops.BOS_ID).sum()):
            problems.append(f"{splits['val']['documents']} validation documents listed, "
                            f"{int((tokens == caseops.BOS_ID).sum())} BOS found")
        if splits["val"].get("sidecar_bytes") != int(sidecar.sum(dtype=np.int64)):
            problems.append(f"sidecar_bytes {splits['val'].get('sidecar_bytes')} != "
                            f"{int(sidecar.sum(dtype=np.int64))} in the sidecar files")
    sha = manifest.get("tokenizer", {}).get("sha256")
    if tokenizer.is_file() and sha and sha != file_sha256(tokenizer):
        problems.append(f"{tokenizer}: sha256 differs from the manifest's {sha[:12]}...")
    if problems:
        for problem in problems:
            report.fail("manifest", problem)
    else:
        report.ok("manifest", "shard names, token/document/byte counts and tokenizer sha256 match")
    return manifest


def _original_documents(wanted: set[int], sources: list[str], text_key: str) -> dict[int, str]:
    """Texts of the documents with the wanted stream indices (val documents are the first ones)."""
    found, last = {}, max(wanted)
    for index, (_, _, text) in enumerate(iter_documents(sources, text_key)):
        if index in wanted:
            found[index] = text
        if index >= last:
            break
    return found


def _check_sample(report: Report, sp, tokens, sidecar, n_sample: int, sources: list[str] | None,
                  text_key: str) -> None:
    starts = np.flatnonzero(tokens == caseops.BOS_ID)
    ends = np.append(starts[1:], len(tokens))
    picks = sorted(set(np.linspace(0, len(starts) - 1, min(n_sample, len(starts))).round().astype(int)))
    originals = None
    if sources:
        try:
            originals = _original_documents(set(picks), sources, text_key)
        except (OSError, ValueError) as exc:
            report.fail("sample", f"original documents unreadable: {exc}")
            return
    decoded_bytes = sidecar_bytes = strict_ok = 0
    for doc in picks:
        ids = tokens[starts[doc] + 1:ends[doc]].tolist()
        counts = sidecar[starts[doc]:ends[doc]].astype(np.int64)
        normalized = sp.decode(ids)
        text = caseops.decode(normalized, strict=False)
        try:
            caseops.decode(normalized)
            strict_ok += 1
        except ValueError:
            pass  # normalization artifacts (e.g. "™" -> "TM"); the lenient decode is what we compare
        decoded_bytes += len(text.encode("utf-8"))
        sidecar_bytes += int(counts.sum())
        if originals is None:
            continue
        if doc not in originals:
            report.fail("sample", f"validation document {doc} not found in the original sources")
            return
        want_ids, want_counts = caseops.document_tokens_and_bytes(sp, originals[doc])
        if want_ids.tolist() != ids:
            report.fail("sample", f"validation document {doc}: stored tokens differ from re-encoding the original")
            return
        if not np.array_equal(np.concatenate([[0], want_counts]), counts):
            report.fail("sample", f"validation document {doc}: stored sidecar differs from the original's byte counts")
            return
    summary = (f"{len(picks)} documents decoded ({strict_ok} also strictly); decoded text {decoded_bytes:,} "
               f"bytes vs sidecar {sidecar_bytes:,}")
    if originals is not None:
        report.ok("sample", summary + "; tokens and sidecars equal re-encoding the originals exactly")
        return
    deviation = abs(decoded_bytes - sidecar_bytes) / max(sidecar_bytes, 1)
    summary += f" ({100 * deviation:.2f}% apart; originals not available, approximate check)"
    (report.ok if deviation <= APPROX_TOLERANCE else report.fail)("sample", summary)


def verify(data_dir, sample_docs: int = 50, docs: list[str] | None = None, tokenizer=None,
           vocab_size: int = caseops.VOCAB_SIZE, stream=None) -> list[str]:
    """Runs all checks on DATA_DIR; returns the failures (empty when the folder is good)."""
    root = Path(data_dir)
    report = Report(stream)
    print(f"verify {root}", file=report.stream)
    tokenizer = Path(tokenizer) if tokenizer else root / shards.TOKENIZER_RELPATH
    try:
        sp = caseops.load_tokenizer(tokenizer, vocab_size)
        report.ok("tokenizer", f"{tokenizer}: {vocab_size} pieces, CaseOps operators at ids 4-7")
    except (ValueError, FileNotFoundError) as exc:
        sp = None
        report.fail("tokenizer", str(exc))
    dataset_dir = root / shards.DATASET_SUBDIR
    found = {kind: shards.list_shards(dataset_dir, kind) for kind in shards.SHARD_KINDS}
    strays = sorted(p.name for p in dataset_dir.glob("fineweb_*")
                    if not any(p in paths for paths in found.values())) if dataset_dir.is_dir() else []
    if strays:
        report.note("files", f"ignored, not shard names: {', '.join(strays[:5])}")
    _check_tokens(report, "train", found["train"], vocab_size)
    val_counts = _check_tokens(report, "val", found["val"], vocab_size)
    val = _check_sidecar(report, found["val"], found["val_bytes"], val_counts) if val_counts else None
    manifest = _check_manifest(report, root, found, val, tokenizer)
    if sp is not None and val is not None and sample_docs > 0:
        sources, text_key = docs, "text"
        missing = [d for d in docs or [] if not Path(d).is_file()]
        if missing:
            report.fail("sample", f"--docs file(s) not found: {', '.join(missing)}")
            sources = None
        elif sources is None and manifest is not None:
            text_key = manifest.get("text_key", "text")
            sources = [s["path"] for s in manifest.get("sources", [])]
            if not all(Path(s).is_file() for s in sources):
                report.note("sample", "the manifest's source files are not here; pass --docs for the exact check")
                sources = None
        _check_sample(report, sp, *val, sample_docs, sources, text_key)
    print("OK" if not report.failures else f"FAILED: {len(report.failures)} problem(s)", file=report.stream)
    return report.failures


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data_dir", help="DATA_DIR holding datasets/ and tokenizers/")
    parser.add_argument("--sample-docs", type=int, default=50, help="validation documents to decode")
    parser.add_argument("--docs", action="append", help="original documents (default: manifest sources)")
    parser.add_argument("--tokenizer", help="tokenizer model (default: DATA_DIR/tokenizers/...)")
    parser.add_argument("--vocab-size", type=int, default=caseops.VOCAB_SIZE)
    args = parser.parse_args(argv)
    failures = verify(args.data_dir, args.sample_docs, args.docs, args.tokenizer, args.vocab_size)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
