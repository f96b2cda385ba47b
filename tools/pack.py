"""Writes the self-extracting record copy of train_gpt.py (the form whose bytes count toward the artifact).

    python tools/pack.py RECORD_DIR            # writes RECORD_DIR/train_gpt.py
    python tools/pack.py RECORD_DIR --source other/train_gpt.py
    python tools/pack.py RECORD_DIR --check-log logs/RUN_ID.txt   # refuse unless the size matches the run's

The packed file is train_gpt's own pack_source(): the minified program (no comments or docstrings), raw LZMA2,
base85, inside an `exec` wrapper. It runs exactly like the source and counts itself as it is.

A run of the source budgets the artifact with the counted size it computes for its own packed form (its log's
`code_bytes ... counted:N` line), so the record's packed copy must have exactly N bytes: --check-log compares
the two and writes nothing when they differ (another liblzma or Python version can pack differently).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

import train_gpt  # noqa: E402  (importing it has no side effects)
from submission import PATTERNS  # noqa: E402  (the log line formats, read in one place)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out_dir", type=Path, help="record folder to write train_gpt.py into")
    ap.add_argument("--source", type=Path, default=ROOT / "train_gpt.py", help="script to pack")
    ap.add_argument("--check-log", type=Path, help="a train_gpt.py log whose counted code bytes the copy must match")
    args = ap.parse_args(argv)
    source = args.source.read_text(encoding="utf-8")
    if source.startswith(train_gpt.PACK_PREFIX):
        ap.error(f"{args.source} is already packed")
    packed = train_gpt.pack_source(source)
    compile(packed, "packed", "exec")
    if args.check_log:
        lines = [line.rstrip() for line in args.check_log.read_text(encoding="utf-8").splitlines()]
        found = [m["counted"] for m in map(PATTERNS["code_bytes"].fullmatch, lines) if m]
        if len(set(found)) != 1:
            ap.error(f"{args.check_log}: expected one `code_bytes source:N counted:M` value, found {sorted(set(found))}")
        if int(found[0]) != len(packed.encode()):
            ap.error(f"{args.check_log}: the run budgeted {found[0]} counted code bytes, but this copy has "
                     f"{len(packed.encode())}: pack with the source and Python/liblzma the run used, or rerun")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    out = args.out_dir / "train_gpt.py"
    if out.resolve() == args.source.resolve():
        ap.error("refusing to overwrite the source with its packed form")
    out.write_text(packed, encoding="utf-8")
    src_bytes, counted = train_gpt.code_bytes(out)
    print(f"{out}: {counted} bytes counted (minified program {src_bytes} bytes, source {len(source.encode())} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
