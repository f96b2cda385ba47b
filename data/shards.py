"""Token shard files and the dataset folder layout.

A shard is a 256-int32 little-endian header ([0] = 20240520, [1] = 1, [2] = n_tokens, the rest 0) followed
by n_tokens little-endian uint16 values; the file is exactly 1024 + 2 * n_tokens bytes. Validation byte
sidecars (fineweb_val_bytes_*.bin) use the same format, one byte count per validation token. Reading goes
through train_gpt's own checked reader (read_shard_header), so the data tools and training agree exactly:
any deviation raises ValueError naming the file.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from train_gpt import HEADER_BYTES, SHARD_MAGIC, SHARD_VERSION, map_data_shard
from train_gpt import read_shard_header as read_header

HEADER_INTS = HEADER_BYTES // 4
DEFAULT_SHARD_TOKENS = 10_000_000

DATASET_SUBDIR = Path("datasets") / "fineweb10B_sp8192"
TOKENIZER_RELPATH = Path("tokenizers") / "fineweb_8192_bpe.model"
# The manifest lives next to the shards it describes: with DATA_DIR=./data (train_gpt's default) it stays
# inside the git-ignored data/datasets/ folder.
MANIFEST_RELPATH = DATASET_SUBDIR / "manifest.json"

# kind -> file name pattern. The val pattern cannot match sidecars (fineweb_val_bytes_*): a sidecar must
# never be read as tokens.
SHARD_KINDS = ("train", "val", "val_bytes")
_SHARD_NAME_RE = {kind: re.compile(rf"fineweb_{kind}_(\d{{6}})\.bin") for kind in SHARD_KINDS}


def shard_name(kind: str, index: int) -> str:
    """File name of shard `index` of `kind` ('train', 'val' or 'val_bytes')."""
    if kind not in SHARD_KINDS:
        raise ValueError(f"unknown shard kind {kind!r}")
    return f"fineweb_{kind}_{index:06d}.bin"


def list_shards(dataset_dir, kind: str) -> list[Path]:
    """Shards of `kind` in `dataset_dir`, sorted by index; names must match fineweb_{kind}_NNNNNN.bin."""
    pattern = _SHARD_NAME_RE[kind]
    root = Path(dataset_dir)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if pattern.fullmatch(p.name))


def read_shard(path, mmap: bool = True) -> np.ndarray:
    """The uint16 payload of a checked shard (memory-mapped read-only unless mmap=False)."""
    n = read_header(path)
    if mmap and n:
        return map_data_shard(path)
    return np.fromfile(path, dtype="<u2", count=n, offset=HEADER_BYTES)


def write_shard(path, values) -> None:
    """Writes `values` (integers in [0, 65535]) as a shard; atomically, via a temporary file."""
    values = np.asarray(values)
    if values.ndim != 1:
        raise ValueError(f"{path}: shard payload must be 1-D, got shape {values.shape}")
    if values.size and (values.min() < 0 or values.max() > 0xFFFF):
        raise ValueError(f"{path}: values outside the uint16 range [{values.min()}, {values.max()}]")
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[:3] = (SHARD_MAGIC, SHARD_VERSION, values.size)
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(header.tobytes())
        f.write(values.astype("<u2", copy=False).tobytes())
    os.replace(tmp, path)


class ShardWriter:
    """Appends uint16 values to consecutive shards of `shard_tokens` values each (the last may be shorter).
    Values are split across shard boundaries as they come, so documents may span two shards."""

    def __init__(self, directory, kind: str, shard_tokens: int = DEFAULT_SHARD_TOKENS):
        if shard_tokens <= 0:
            raise ValueError(f"shard_tokens must be positive, got {shard_tokens}")
        self.directory = Path(directory)
        self.kind = kind
        self.shard_tokens = shard_tokens
        self.shards: list[tuple[str, int]] = []  # (file name, token count) of written shards
        self.total = 0
        self._parts: list[np.ndarray] = []
        self._buffered = 0

    def write(self, values: np.ndarray) -> None:
        """Queues `values` (uint16) and writes every shard that becomes full."""
        values = np.asarray(values, dtype=np.uint16)
        self.total += values.size
        while values.size:
            take = min(values.size, self.shard_tokens - self._buffered)
            self._parts.append(values[:take])
            self._buffered += take
            values = values[take:]
            if self._buffered == self.shard_tokens:
                self._flush()

    def close(self) -> list[tuple[str, int]]:
        """Writes the last partial shard; returns [(name, tokens)] of all shards written."""
        if self._buffered:
            self._flush()
        return self.shards

    def _flush(self) -> None:
        name = shard_name(self.kind, len(self.shards))
        write_shard(self.directory / name, np.concatenate(self._parts))
        self.shards.append((name, self._buffered))
        self._parts, self._buffered = [], 0
