"""Shard format reader/writer (data/shards.py)."""

import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from data import shards  # noqa: E402


def test_write_read_round_trip(tmp_path):
    path = tmp_path / "fineweb_train_000000.bin"
    values = np.array([1, 2, 8191, 65535, 0], dtype=np.uint16)
    shards.write_shard(path, values)
    raw = path.read_bytes()
    assert len(raw) == 1024 + 2 * len(values)
    header = np.frombuffer(raw[:1024], dtype="<i4")
    assert header[:3].tolist() == [20240520, 1, 5] and not header[3:].any()
    assert np.frombuffer(raw[1024:], dtype="<u2").tolist() == values.tolist()
    assert shards.read_header(path) == 5
    assert shards.read_shard(path).tolist() == values.tolist()
    assert shards.read_shard(path, mmap=False).tolist() == values.tolist()
    assert not list(tmp_path.glob("*.tmp"))


def test_write_rejects_out_of_range(tmp_path):
    with pytest.raises(ValueError, match="uint16"):
        shards.write_shard(tmp_path / "x.bin", np.array([70000]))


@pytest.mark.parametrize("damage, message", [
    (lambda b: b[:100], "shorter than"),
    (lambda b: b"\x00\x00\x00\x00" + b[4:], "magic/version"),
    (lambda b: b[:4] + (2).to_bytes(4, "little") + b[8:], "magic/version"),
    (lambda b: b[:-2], "header says 10 tokens"),
    (lambda b: b + b"\x00", "header says 10 tokens"),
    (lambda b: b[:8] + (-1).to_bytes(4, "little", signed=True) + b[12:], "header says -1 tokens"),
])
def test_read_rejects_damaged_shards(tmp_path, damage, message):
    path = tmp_path / "fineweb_val_000000.bin"
    shards.write_shard(path, np.arange(10))
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(ValueError, match=message) as info:
        shards.read_shard(path)
    assert str(path) in str(info.value)


def test_missing_shard(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.bin"):
        shards.read_header(tmp_path / "nope.bin")


def test_shard_writer_splits_across_shards(tmp_path):
    writer = shards.ShardWriter(tmp_path, "val", shard_tokens=4)
    writer.write(np.arange(3))
    writer.write(np.arange(3, 10))
    assert writer.close() == [("fineweb_val_000000.bin", 4), ("fineweb_val_000001.bin", 4),
                              ("fineweb_val_000002.bin", 2)]
    found = shards.list_shards(tmp_path, "val")
    assert np.concatenate([shards.read_shard(p) for p in found]).tolist() == list(range(10))


def test_list_shards_keeps_kinds_apart(tmp_path):
    for name in ["fineweb_val_000000.bin", "fineweb_val_bytes_000000.bin", "fineweb_train_000001.bin",
                 "fineweb_train_000000.bin", "fineweb_val_1.bin", "fineweb_train_000002.bin.tmp"]:
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in shards.list_shards(tmp_path, "val")] == ["fineweb_val_000000.bin"]
    assert [p.name for p in shards.list_shards(tmp_path, "val_bytes")] == ["fineweb_val_bytes_000000.bin"]
    assert [p.name for p in shards.list_shards(tmp_path, "train")] == ["fineweb_train_000000.bin",
                                                                      "fineweb_train_000001.bin"]
