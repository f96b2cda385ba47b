"""Builds a tiny CaseOps-free dataset (tokenizer, shards, byte sidecar) in a folder, for CPU tests."""
from __future__ import annotations

import io
import random
from pathlib import Path

import numpy as np

WORDS = ("the cat sat on a mat while dogs ran far away and birds sang in trees near the old red barn "
         "under blue skies with green grass all day long").split()


def make_text(n_sentences: int, seed: int) -> list[str]:
    """Documents from a small Markov-ish grammar: learnable, so the loss must fall."""
    rng = random.Random(seed)
    docs = []
    for _ in range(n_sentences):
        start = rng.randrange(len(WORDS))
        words = [WORDS[(start + i + (i % 3 == 2)) % len(WORDS)] for i in range(rng.randint(8, 30))]
        docs.append(" ".join(words).capitalize() + ".")
    return docs


def train_tokenizer(path: Path, vocab_size: int) -> None:
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(make_text(400, 0)), model_writer=buf, vocab_size=vocab_size,
                                   model_type="bpe", bos_id=1, eos_id=2, unk_id=3, pad_id=0, hard_vocab_limit=False,
                                   character_coverage=1.0, minloglevel=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue())


def write_shard(path: Path, values) -> None:
    values = np.asarray(values, dtype="<u2")
    header = np.zeros(256, dtype="<i4")
    header[:3] = (20240520, 1, len(values))
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(values.tobytes())


def encode_docs(sp, docs: list[str]) -> tuple[list[int], list[int]]:
    """BOS + tokens per document, and the UTF-8 bytes of each token's surface (BOS 0; the dummy-prefix space
    SentencePiece adds before a document is not in the text, so it counts 0)."""
    tokens, nbytes = [], []
    for doc in docs:
        tokens.append(1)
        nbytes.append(0)
        for i, piece_id in enumerate(sp.encode(doc)):
            surface = sp.id_to_piece(piece_id).replace("\u2581", " ")
            tokens.append(piece_id)
            nbytes.append(len((surface[1:] if i == 0 and surface.startswith(" ") else surface).encode("utf-8")))
    return tokens, nbytes


def make_dataset(root: Path, vocab_size: int = 64, n_train_docs: int = 3000, n_val_docs: int = 120,
                 train_shards: int = 2, sidecar: bool = True) -> Path:
    import sentencepiece as spm

    root = Path(root)
    tok_path = root / "tokenizers" / f"fineweb_{vocab_size}_bpe.model"
    train_tokenizer(tok_path, vocab_size)
    sp = spm.SentencePieceProcessor(model_file=str(tok_path))
    assert sp.vocab_size() == vocab_size, sp.vocab_size()
    ds = root / "datasets" / f"fineweb10B_sp{vocab_size}"
    val_tokens, val_bytes = encode_docs(sp, make_text(n_val_docs, 1))
    write_shard(ds / "fineweb_val_000000.bin", val_tokens)
    if sidecar:
        write_shard(ds / "fineweb_val_bytes_000000.bin", val_bytes)
    train_tokens, _ = encode_docs(sp, make_text(n_train_docs, 2))
    for i, part in enumerate(np.array_split(np.asarray(train_tokens), train_shards)):
        write_shard(ds / f"fineweb_train_{i:06d}.bin", part)
    return root
