"""Export throughput of data/prepare_caseops.py against the plain SentencePiece floor.

    python data/bench_prepare.py [--docs FILE.jsonl.gz] [--val-docs 200] [--workers 2]

Prints MB of raw document text (UTF-8) per second of wall time and per CPU-second (all processes'
user + system time, which is what one core delivers, unaffected by other load on the machine) for:
  sp.encode raw text          ids only, untransformed text: the tokenizer floor
  sp.encode transformed text  ids only, on CaseOps-transformed text (what the export tokenizes)
  caseops.encode              the case transform alone
  train path                  transform + encode, ids only (encode_documents)
  val path                    transform + encode with spans + byte sidecar (document_tokens_and_bytes)
  prepare_caseops             the whole export with --workers processes (main process + workers)
The single-process rows run in this process on all documents; the export writes to a temporary folder
(under $TMPDIR, default /tmp) that is removed afterwards.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from data import caseops, prepare_caseops  # noqa: E402

DEFAULT_DOCS = Path(__file__).resolve().parent.parent.parent / "shared" / "corpus" / "fineweb_sample.jsonl.gz"


def _cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _timed(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process and its finished children) spent in fn()."""
    start, cpu = time.perf_counter(), _cpu_seconds()
    fn()
    return time.perf_counter() - start, _cpu_seconds() - cpu


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", default=str(DEFAULT_DOCS), help="JSON-lines documents (.gz ok)")
    parser.add_argument("--val-docs", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--tokenizer", default=str(prepare_caseops.DEFAULT_TOKENIZER))
    args = parser.parse_args(argv)

    import sentencepiece

    sp = caseops.load_tokenizer(args.tokenizer)
    docs = [text for _, _, text in prepare_caseops.iter_documents([args.docs])]
    mb = sum(len(d.encode("utf-8")) for d in docs) / 1e6
    transformed = [caseops.encode(d) for d in docs]
    print(f"{len(docs):,} documents, {mb:.2f} MB of text from {args.docs}")
    print(f"sentencepiece {sentencepiece.__version__} (span API: {caseops._span_api(sp)}), "
          f"{os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.2f} before the run")

    rows = [
        ("sp.encode raw text (floor)", _timed(lambda: sp.encode(docs, out_type=int, num_threads=1))),
        ("sp.encode transformed text", _timed(lambda: sp.encode(transformed, out_type=int, num_threads=1))),
        ("caseops.encode (transform only)", _timed(lambda: [caseops.encode(d) for d in docs])),
        ("train path (transform + ids)", _timed(lambda: caseops.encode_documents(sp, docs))),
        ("val path (+ spans + sidecar)", _timed(lambda: [caseops.document_tokens_and_bytes(sp, d) for d in docs])),
    ]
    result = {}
    with tempfile.TemporaryDirectory(prefix="bench_prepare_") as out:
        timing = _timed(lambda: result.update(prepare_caseops.prepare(
            [args.docs], out, val_docs=args.val_docs, tokenizer=args.tokenizer, workers=args.workers,
            progress=False)))
    rows.append((f"prepare_caseops --workers {args.workers}", timing))

    print(f"{'stage':<34} {'wall s':>7} {'CPU s':>7} {'MB/s wall':>10} {'MB/CPU-s':>9}")
    for name, (wall, cpu) in rows:
        print(f"{name:<34} {wall:>7.2f} {cpu:>7.2f} {mb / wall:>10.2f} {mb / cpu:>9.2f}")
    manifest = result
    val, train = manifest["splits"]["val"], manifest["splits"]["train"]
    print(f"export: {val['documents']} val docs / {val['tokens']:,} tokens "
          f"({val['sidecar_bytes'] / (val['tokens'] - val['documents']):.3f} bytes/token), "
          f"{train['documents']} train docs / {train['tokens']:,} tokens")
    return 0


if __name__ == "__main__":
    sys.exit(main())
