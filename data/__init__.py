"""Data tooling for the CaseOps SentencePiece SP8192 export: the case transform, shard I/O, export,
download and verification (see data/README.md). Nothing here needs torch."""
