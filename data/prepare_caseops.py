"""Raw documents (JSON lines) -> CaseOps SP8192 token shards, validation byte sidecars and a manifest.

    python data/prepare_caseops.py --docs docs_selected.jsonl --out DATA_DIR [--val-docs 50000]
        [--tokenizer MODEL] [--workers N] [--shard-tokens 10000000]

Several --docs files are read in order as one stream of documents (one JSON object per line, the text
under --text-key; .gz files are decompressed on the fly). The first --val-docs documents are the
validation split, all later ones training. Every document becomes [BOS=1] + tokens (no EOS). Output, under
DATA_DIR:

    datasets/fineweb10B_sp8192/fineweb_train_NNNNNN.bin      training tokens
    datasets/fineweb10B_sp8192/fineweb_val_NNNNNN.bin        validation tokens
    datasets/fineweb10B_sp8192/fineweb_val_bytes_NNNNNN.bin  original UTF-8 bytes per validation token
    datasets/fineweb10B_sp8192/manifest.json                 sources, counts, shard names, tokenizer sha256
    tokenizers/fineweb_8192_bpe.model                        copy of the tokenizer

Documents are streamed (a bounded number of chunks in flight) and encoded by worker processes in order.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import hashlib
import io
import itertools
import json
import multiprocessing
import os
import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from data import caseops, shards  # noqa: E402

DEFAULT_TOKENIZER = (Path(__file__).resolve().parent.parent.parent / "shared" / "tokenizers"
                     / "fineweb_8192_bpe_lossless_caps_caseops_v1_reserved.model")
CHUNK_DOCS = 64           # documents per worker task, at most
CHUNK_BYTES = 1 << 19     # ... and about this much JSON per task
INFLIGHT_PER_WORKER = 4   # tasks queued per worker: bounds memory while keeping workers busy


class Chunk:
    """A run of consecutive documents from one source file, all in the same split."""

    __slots__ = ("split", "source", "line_numbers", "lines")

    def __init__(self, split: str, source: str, line_numbers: list[int], lines: list[str]):
        self.split, self.source, self.line_numbers, self.lines = split, source, line_numbers, lines


class ChunkResult:
    """Encoded chunk: uint16 tokens ([BOS] + ids per document), the sidecar for validation chunks."""

    __slots__ = ("split", "source", "tokens", "sidecar", "documents", "text_bytes")

    def __init__(self, split, source, tokens, sidecar, documents, text_bytes):
        self.split, self.source, self.tokens, self.sidecar = split, source, tokens, sidecar
        self.documents, self.text_bytes = documents, text_bytes


class _InputStream:
    """Reads the lines of the --docs files in order, tracking how many input bytes were consumed."""

    def __init__(self, paths: list[Path]):
        self.paths = paths
        self.total_bytes = sum(p.stat().st_size for p in paths)
        self._done_bytes = 0
        self._raw = None

    def position(self) -> int:
        """Input bytes consumed so far (compressed bytes for .gz files)."""
        return self._done_bytes + (self._raw.tell() if self._raw is not None and not self._raw.closed else 0)

    def lines(self):
        """Yields (path, line_number, line) over all files, in order."""
        for path in self.paths:
            with open(path, "rb") as raw:
                self._raw = raw
                binary = gzip.GzipFile(fileobj=raw) if path.suffix == ".gz" else raw
                text = io.TextIOWrapper(binary, encoding="utf-8", newline="\n")
                number = 0
                try:
                    for number, line in enumerate(text, 1):
                        yield path, number, line
                except UnicodeDecodeError as exc:
                    raise ValueError(f"{path}: invalid UTF-8 after line {number} ({exc})") from None
            self._raw = None
            self._done_bytes += path.stat().st_size


def iter_documents(paths, text_key: str = "text"):
    """Yields (source, line_number, text) of every document of the --docs files, in export order."""
    for path, number, line in _InputStream([Path(p) for p in paths]).lines():
        if line and not line.isspace():
            yield str(path), number, _parse(str(path), number, line, text_key)


def iter_chunks(stream: _InputStream, val_docs: int, chunk_docs: int = CHUNK_DOCS,
                chunk_bytes: int = CHUNK_BYTES):
    """Groups non-blank lines into Chunks; a chunk never spans two files or the val/train boundary."""
    doc_index = 0
    split, source, numbers, lines, size = None, None, [], [], 0
    for path, number, line in stream.lines():
        if not line or line.isspace():
            continue
        doc_split = "val" if doc_index < val_docs else "train"
        if lines and (doc_split != split or str(path) != source):
            yield Chunk(split, source, numbers, lines)
            numbers, lines, size = [], [], 0
        split, source = doc_split, str(path)
        numbers.append(number)
        lines.append(line)
        size += len(line)
        doc_index += 1
        if len(lines) >= chunk_docs or size >= chunk_bytes:
            yield Chunk(split, source, numbers, lines)
            numbers, lines, size = [], [], 0
    if lines:
        yield Chunk(split, source, numbers, lines)


# ---------------------------------------------------------------------------------------------------
# Worker side.

_WORKER: dict = {}


def _init_worker(tokenizer: str, vocab_size: int, text_key: str) -> None:
    _WORKER["sp"] = caseops.load_tokenizer(tokenizer, vocab_size)
    _WORKER["text_key"] = text_key


def _parse(source: str, number: int, line: str, key: str) -> str:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{source}:{number}: not a JSON line ({exc})") from None
    text = record.get(key) if isinstance(record, dict) else None
    if not isinstance(text, str):
        raise ValueError(f"{source}:{number}: no string field {key!r}")
    return text


def encode_chunk(chunk: Chunk) -> ChunkResult:
    """Parses and encodes one chunk (in a worker, after _init_worker)."""
    sp, key = _WORKER["sp"], _WORKER["text_key"]
    docs = [_parse(chunk.source, n, line, key) for n, line in zip(chunk.line_numbers, chunk.lines)]
    try:
        text_bytes = sum(len(d.encode("utf-8")) for d in docs)
    except UnicodeEncodeError as exc:
        raise ValueError(f"{chunk.source}: a document in lines {chunk.line_numbers[0]}-"
                         f"{chunk.line_numbers[-1]} is not valid Unicode ({exc})") from None
    bos = np.array([caseops.BOS_ID], dtype=np.int64)
    if chunk.split == "train":
        ids = caseops.encode_documents(sp, docs)
        total = sum(map(len, ids)) + len(ids)
        flat = itertools.chain.from_iterable(itertools.chain((caseops.BOS_ID,), d) for d in ids)
        tokens = np.fromiter(flat, dtype=np.uint16, count=total)
        return ChunkResult("train", chunk.source, tokens, None, len(docs), text_bytes)
    token_parts, byte_parts = [], []
    zero = np.zeros(1, dtype=np.int64)
    for number, doc in zip(chunk.line_numbers, docs):
        try:
            ids, counts = caseops.document_tokens_and_bytes(sp, doc)
        except ValueError as exc:
            raise ValueError(f"{chunk.source}:{number}: {exc}") from None
        if counts.size and counts.max() > 0xFFFF:
            raise ValueError(f"{chunk.source}:{number}: a token covers {int(counts.max())} bytes, "
                             "more than a uint16 sidecar can hold")
        token_parts += (bos, ids)
        byte_parts += (zero, counts)
    tokens = np.concatenate(token_parts).astype(np.uint16)
    sidecar = np.concatenate(byte_parts).astype(np.uint16)
    return ChunkResult("val", chunk.source, tokens, sidecar, len(docs), text_bytes)


# ---------------------------------------------------------------------------------------------------
# Main process.


class Progress:
    """One status line on stderr: rewritten in place on a terminal, a new line every 30 s otherwise."""

    def __init__(self, total_bytes: int, enabled: bool = True, stream=None):
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = enabled and self.stream.isatty()
        self.total_bytes = total_bytes
        self.start = time.perf_counter()
        self.last = 0.0

    def update(self, docs: int, text_bytes: int, tokens: int, position: int, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if not force and now - self.last < (0.5 if self.tty else 30.0):
            return
        self.last = now
        elapsed = max(now - self.start, 1e-9)
        line = (f"{docs:,} docs  {text_bytes / 1e6:,.1f} MB  {tokens:,} tokens  "
                f"{docs / elapsed:,.0f} docs/s  {text_bytes / 1e6 / elapsed:.2f} MB/s")
        if self.total_bytes and 0 < position < self.total_bytes:
            eta = elapsed * (self.total_bytes / position - 1)
            line += f"  {100 * position / self.total_bytes:.1f}%  ETA {eta:,.0f} s"
        if self.tty:
            self.stream.write("\r" + line + "\033[K")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def _ordered_results(chunks, workers: int, init_args: tuple):
    """Encodes chunks in order: inline for workers <= 1, else in a process pool with a bounded number of
    tasks in flight (Pool.imap would read the whole input ahead into memory)."""
    if workers <= 1:
        _init_worker(*init_args)
        for chunk in chunks:
            yield encode_chunk(chunk)
        return
    with multiprocessing.Pool(workers, initializer=_init_worker, initargs=init_args) as pool:
        pending = collections.deque()
        for chunk in chunks:
            pending.append(pool.apply_async(encode_chunk, (chunk,)))
            if len(pending) >= INFLIGHT_PER_WORKER * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


def file_sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _clear_dataset_dir(dataset_dir: Path, overwrite: bool) -> None:
    """Refuses to mix with an earlier export's files; with overwrite, removes them (and its manifest)."""
    existing = sorted(p for p in dataset_dir.iterdir()
                      if p.name.startswith("fineweb_") or p.name == shards.MANIFEST_RELPATH.name)
    if existing and not overwrite:
        raise FileExistsError(f"{dataset_dir}: already holds {len(existing)} fineweb_* files "
                              f"(e.g. {existing[0].name}); pass --overwrite to replace them")
    for path in existing:
        path.unlink()


def prepare(docs: list, out: str, val_docs: int = 50_000, tokenizer=DEFAULT_TOKENIZER, workers: int = 1,
            shard_tokens: int = shards.DEFAULT_SHARD_TOKENS, vocab_size: int = caseops.VOCAB_SIZE,
            text_key: str = "text", overwrite: bool = False, progress: bool = True) -> dict:
    """Runs the export; returns the manifest (also written to OUT/datasets/fineweb10B_sp8192/manifest.json)."""
    if val_docs < 0:
        raise ValueError(f"--val-docs must be >= 0, got {val_docs}")
    paths = [Path(p) for p in docs]
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"{path}: documents file not found")
    tokenizer = Path(tokenizer)
    sp = caseops.load_tokenizer(tokenizer, vocab_size)  # fail early, with the file's name
    out = Path(out)
    dataset_dir = out / shards.DATASET_SUBDIR
    dataset_dir.mkdir(parents=True, exist_ok=True)
    _clear_dataset_dir(dataset_dir, overwrite)

    writers = {"train": shards.ShardWriter(dataset_dir, "train", shard_tokens),
               "val": shards.ShardWriter(dataset_dir, "val", shard_tokens)}
    sidecar_writer = shards.ShardWriter(dataset_dir, "val_bytes", shard_tokens)
    stats = {split: {"documents": 0, "tokens": 0, "text_bytes": 0} for split in writers}
    per_source = collections.Counter()
    sidecar_total = 0
    stream = _InputStream(paths)
    meter = Progress(stream.total_bytes, enabled=progress)
    start = time.perf_counter()
    try:
        results = _ordered_results(iter_chunks(stream, val_docs), workers,
                                   (str(tokenizer), vocab_size, text_key))
        for result in results:
            writers[result.split].write(result.tokens)
            if result.sidecar is not None:
                sidecar_writer.write(result.sidecar)
                sidecar_total += int(result.sidecar.sum(dtype=np.int64))
            split_stats = stats[result.split]
            split_stats["documents"] += result.documents
            split_stats["tokens"] += result.tokens.size
            split_stats["text_bytes"] += result.text_bytes
            per_source[result.source] += result.documents
            meter.update(sum(s["documents"] for s in stats.values()),
                         sum(s["text_bytes"] for s in stats.values()),
                         sum(s["tokens"] for s in stats.values()), stream.position())
        meter.update(sum(s["documents"] for s in stats.values()), sum(s["text_bytes"] for s in stats.values()),
                     sum(s["tokens"] for s in stats.values()), stream.position(), force=True)
    finally:
        meter.close()
    seconds = time.perf_counter() - start
    written = {split: writer.close() for split, writer in writers.items()}
    sidecar_shards = sidecar_writer.close()

    n_val, n_train = stats["val"]["documents"], stats["train"]["documents"]
    if n_val < val_docs or n_train == 0:
        raise ValueError(f"the input holds {n_val + n_train} documents: not enough for {val_docs} "
                         "validation documents and at least one training document")

    tokenizer_out = out / shards.TOKENIZER_RELPATH
    tokenizer_out.parent.mkdir(parents=True, exist_ok=True)
    if not (tokenizer_out.exists() and tokenizer_out.resolve() == tokenizer.resolve()):
        shutil.copyfile(tokenizer, tokenizer_out)

    import sentencepiece

    manifest = {
        "transform": caseops.TRANSFORM_NAME,
        "tokenizer": {"path": str(shards.TOKENIZER_RELPATH), "source": str(tokenizer.resolve()),
                      "sha256": file_sha256(tokenizer_out), "vocab_size": sp.vocab_size(),
                      "bos_id": caseops.BOS_ID},
        "sources": [{"path": str(p.resolve()), "bytes": p.stat().st_size,
                     "documents": per_source[str(p)]} for p in paths],
        "text_key": text_key,
        "document_format": "[BOS=1] + tokens, no EOS",
        "shard_format": {"header_int32": shards.HEADER_INTS, "magic": shards.SHARD_MAGIC,
                         "version": shards.SHARD_VERSION, "dtype": "uint16 little-endian",
                         "shard_tokens": shard_tokens},
        "dataset_dir": str(shards.DATASET_SUBDIR),
        "splits": {
            "val": {**stats["val"], "sidecar_bytes": sidecar_total,
                    "shards": [{"name": n, "tokens": t} for n, t in written["val"]],
                    "sidecar_shards": [{"name": n, "tokens": t} for n, t in sidecar_shards]},
            "train": {**stats["train"], "shards": [{"name": n, "tokens": t} for n, t in written["train"]]},
        },
        "sentencepiece_version": sentencepiece.__version__,
        "workers": workers,
        "seconds": round(seconds, 2),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    manifest_path = out / shards.MANIFEST_RELPATH
    tmp = manifest_path.with_name(manifest_path.name + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, manifest_path)
    return manifest


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", action="append", required=True,
                        help="JSON-lines documents file (.jsonl or .jsonl.gz); repeat to append more")
    parser.add_argument("--out", required=True, help="output DATA_DIR")
    parser.add_argument("--val-docs", type=int, default=50_000, help="leading documents used for validation")
    parser.add_argument("--tokenizer", default=str(DEFAULT_TOKENIZER), help="CaseOps SentencePiece model")
    parser.add_argument("--vocab-size", type=int, default=caseops.VOCAB_SIZE,
                        help="vocabulary size the tokenizer must have")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="encoding processes")
    parser.add_argument("--shard-tokens", type=int, default=shards.DEFAULT_SHARD_TOKENS,
                        help="tokens per shard file")
    parser.add_argument("--text-key", default="text", help="JSON field holding the document text")
    parser.add_argument("--overwrite", action="store_true", help="replace existing shards in OUT")
    parser.add_argument("--quiet", action="store_true", help="no progress line")
    args = parser.parse_args(argv)
    try:
        manifest = prepare(args.docs, args.out, val_docs=args.val_docs, tokenizer=args.tokenizer,
                           workers=args.workers, shard_tokens=args.shard_tokens, vocab_size=args.vocab_size,
                           text_key=args.text_key, overwrite=args.overwrite, progress=not args.quiet)
    except (ValueError, FileNotFoundError, FileExistsError) as exc:
        print(f"prepare_caseops: error: {exc}", file=sys.stderr)
        return 1
    val, train = manifest["splits"]["val"], manifest["splits"]["train"]
    text_mb = (val["text_bytes"] + train["text_bytes"]) / 1e6
    print(f"val: {val['documents']:,} docs, {val['tokens']:,} tokens in {len(val['shards'])} shard(s), "
          f"{val['sidecar_bytes'] / max(val['tokens'] - val['documents'], 1):.3f} bytes/token")
    print(f"train: {train['documents']:,} docs, {train['tokens']:,} tokens in {len(train['shards'])} shard(s)")
    print(f"{text_mb:,.1f} MB of text in {manifest['seconds']:.1f} s: "
          f"{text_mb / manifest['seconds']:.2f} MB/s with {args.workers} worker(s) -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
