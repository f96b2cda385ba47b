"""CaseOps SP8192 record stack for the "10 minutes on 8xH100, 16 MB artifact" track.

11-layer recurrent XSA transformer trained with Muon + AdamW + EMA under a wallclock cap, evaluated with
byte-sidecar BPB (standard and sliding window). Everything is configured by environment variables
(see read_hyperparameters); all of them are logged at start.

Launch:
    torchrun --standalone --nproc_per_node=8 train_gpt.py     # the record run (N = 1, 2, 4, 8)
    python train_gpt.py                                       # one process, GPU or CPU
Tiny CPU run of the real code path (no CUDA, no compile, float32):
    DATA_DIR=/tmp/tiny VOCAB_SIZE=64 NUM_LAYERS=2 MODEL_DIM=64 NUM_HEADS=2 NUM_KV_HEADS=1 \
    TRAIN_SEQ_LEN=32 EVAL_SEQ_LEN=32 EVAL_STRIDE=8 TRAIN_BATCH_TOKENS=2048 ITERATIONS=20 \
    MAX_WALLCLOCK_SECONDS=0 WARMUP_STEPS=0 python train_gpt.py
"""
from __future__ import annotations

import contextlib
import copy
import math
import os
import re
import sys
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

# ----------------------------------------------------------------------------------------------------
# Hyperparameters: read from the environment when the run starts, validated before any GPU time is spent.


def _env(kind, name: str, default):
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        if kind is bool:
            if raw not in ("0", "1"):
                raise ValueError
            return raw == "1"
        return kind(raw)
    except ValueError:
        expected = "0 or 1" if kind is bool else kind.__name__
        raise ValueError(f"{name}={raw!r}: expected {expected}") from None


def read_hyperparameters() -> SimpleNamespace:
    # Data and run.
    DATA_DIR = _env(str, "DATA_DIR", "./data")
    VOCAB_SIZE = _env(int, "VOCAB_SIZE", 8192)
    TOKENIZER_PATH = _env(str, "TOKENIZER_PATH", f"{DATA_DIR}/tokenizers/fineweb_{VOCAB_SIZE}_bpe.model")
    SEED = _env(int, "SEED", 1337)
    RUN_ID = _env(str, "RUN_ID", uuid.uuid4().hex[:12])
    ITERATIONS = _env(int, "ITERATIONS", 20000)
    MAX_WALLCLOCK_SECONDS = _env(float, "MAX_WALLCLOCK_SECONDS", 600.0)
    GPTQ_RESERVE_SECONDS = _env(float, "GPTQ_RESERVE_SECONDS", 12.0)
    TRAIN_BATCH_TOKENS = _env(int, "TRAIN_BATCH_TOKENS", 786432)
    TRAIN_SEQ_LEN = _env(int, "TRAIN_SEQ_LEN", 2048)
    WARMUP_STEPS = _env(int, "WARMUP_STEPS", 20)
    TRAIN_LOG_EVERY = _env(int, "TRAIN_LOG_EVERY", 500)
    VAL_LOSS_EVERY = _env(int, "VAL_LOSS_EVERY", 4000)
    # Evaluation.
    EVAL_SEQ_LEN = _env(int, "EVAL_SEQ_LEN", 2048)
    EVAL_STRIDE = _env(int, "EVAL_STRIDE", 64)
    VAL_BATCH_TOKENS = _env(int, "VAL_BATCH_TOKENS", 524288)
    SLIDING_WINDOW_ENABLED = _env(bool, "SLIDING_WINDOW_ENABLED", True)
    # Model.
    NUM_LAYERS = _env(int, "NUM_LAYERS", 11)
    MODEL_DIM = _env(int, "MODEL_DIM", 512)
    NUM_HEADS = _env(int, "NUM_HEADS", 8)
    NUM_KV_HEADS = _env(int, "NUM_KV_HEADS", 4)
    MLP_MULT = _env(int, "MLP_MULT", 4)
    ROPE_DIMS = _env(int, "ROPE_DIMS", 16)
    ROPE_BASE = _env(float, "ROPE_BASE", 10000.0)
    QK_GAIN_INIT = _env(float, "QK_GAIN_INIT", 5.25)
    LOGIT_SOFTCAP = _env(float, "LOGIT_SOFTCAP", 30.0)
    TIED_EMBED_INIT_STD = _env(float, "TIED_EMBED_INIT_STD", 0.005)
    XSA_LAST_N = _env(int, "XSA_LAST_N", 11)
    NUM_LOOPS = _env(int, "NUM_LOOPS", 2)
    LOOP_START = _env(int, "LOOP_START", 3)
    LOOP_END = _env(int, "LOOP_END", 5)
    ENABLE_LOOPING_AT = _env(float, "ENABLE_LOOPING_AT", 0.35)
    PARALLEL_RESIDUAL_START = _env(int, "PARALLEL_RESIDUAL_START", 7)
    # Optimisation.
    MATRIX_LR = _env(float, "MATRIX_LR", 0.022)
    SCALAR_LR = _env(float, "SCALAR_LR", 0.02)
    TIED_EMBED_LR = _env(float, "TIED_EMBED_LR", 0.03)
    MUON_MOMENTUM = _env(float, "MUON_MOMENTUM", 0.99)
    MUON_MOMENTUM_WARMUP_START = _env(float, "MUON_MOMENTUM_WARMUP_START", 0.92)
    MUON_MOMENTUM_WARMUP_STEPS = _env(int, "MUON_MOMENTUM_WARMUP_STEPS", 1500)
    MUON_BACKEND_STEPS = _env(int, "MUON_BACKEND_STEPS", 5)
    MUON_WD = _env(float, "MUON_WD", 0.095)
    EMBED_WD = _env(float, "EMBED_WD", 0.085)
    ADAM_WD = _env(float, "ADAM_WD", 0.02)
    BETA1 = _env(float, "BETA1", 0.9)
    BETA2 = _env(float, "BETA2", 0.95)
    ADAM_EPS = _env(float, "ADAM_EPS", 1e-8)
    GRAD_CLIP_NORM = _env(float, "GRAD_CLIP_NORM", 0.3)
    WARMDOWN_FRAC = _env(float, "WARMDOWN_FRAC", 0.72)
    EMA_DECAY = _env(float, "EMA_DECAY", 0.9965)
    h = SimpleNamespace(**{k.lower(): v for k, v in locals().items()})
    validate_hyperparameters(h)
    return h


def _require(ok: bool, name: str, value, expected: str) -> None:
    if not ok:
        raise ValueError(f"{name}={value!r}: expected {expected}")


def validate_hyperparameters(h: SimpleNamespace) -> None:
    for name in ("vocab_size", "iterations", "train_seq_len", "eval_seq_len", "eval_stride", "num_layers",
                 "model_dim", "num_heads", "num_kv_heads", "mlp_mult", "val_batch_tokens", "train_log_every"):
        _require(getattr(h, name) > 0, name.upper(), getattr(h, name), "a positive integer")
    _require(h.vocab_size <= 65536, "VOCAB_SIZE", h.vocab_size, "at most 65536 (uint16 shards)")
    _require(h.train_batch_tokens > 0 and h.train_batch_tokens % (8 * h.train_seq_len) == 0, "TRAIN_BATCH_TOKENS",
             h.train_batch_tokens, f"a positive multiple of 8*TRAIN_SEQ_LEN={8 * h.train_seq_len}")
    _require(h.model_dim % h.num_heads == 0, "NUM_HEADS", h.num_heads, f"a divisor of MODEL_DIM={h.model_dim}")
    _require(h.num_heads % h.num_kv_heads == 0, "NUM_KV_HEADS", h.num_kv_heads, f"a divisor of NUM_HEADS={h.num_heads}")
    head_dim = h.model_dim // h.num_heads
    _require(0 <= h.rope_dims <= head_dim and h.rope_dims % 2 == 0 and h.rope_dims != 2, "ROPE_DIMS", h.rope_dims,
             f"0 or an even number in [4, head_dim={head_dim}]")
    _require(0 <= h.xsa_last_n <= h.num_layers, "XSA_LAST_N", h.xsa_last_n, f"in [0, NUM_LAYERS={h.num_layers}]")
    _require(h.num_loops >= 0, "NUM_LOOPS", h.num_loops, ">= 0")
    _require(0 <= h.loop_start <= h.loop_end < h.num_layers, "LOOP_START/LOOP_END", (h.loop_start, h.loop_end),
             f"0 <= LOOP_START <= LOOP_END < NUM_LAYERS={h.num_layers}")
    _require(0 <= h.parallel_residual_start, "PARALLEL_RESIDUAL_START", h.parallel_residual_start, ">= 0")
    _require(h.eval_stride <= h.eval_seq_len, "EVAL_STRIDE", h.eval_stride, f"<= EVAL_SEQ_LEN={h.eval_seq_len}")
    _require(h.val_batch_tokens >= h.eval_seq_len, "VAL_BATCH_TOKENS", h.val_batch_tokens,
             f">= EVAL_SEQ_LEN={h.eval_seq_len}")
    for name in ("warmdown_frac", "enable_looping_at"):
        _require(0.0 <= getattr(h, name) <= 1.0, name.upper(), getattr(h, name), "in [0, 1]")
    _require(0.0 <= h.ema_decay < 1.0, "EMA_DECAY", h.ema_decay, "in [0, 1)")
    _require(h.max_wallclock_seconds >= 0, "MAX_WALLCLOCK_SECONDS", h.max_wallclock_seconds, ">= 0 (0 = no cap)")
    _require(h.max_wallclock_seconds == 0 or 0 <= h.gptq_reserve_seconds < h.max_wallclock_seconds,
             "GPTQ_RESERVE_SECONDS", h.gptq_reserve_seconds, f"in [0, MAX_WALLCLOCK_SECONDS={h.max_wallclock_seconds})")
    for name in ("warmup_steps", "val_loss_every", "muon_momentum_warmup_steps", "muon_backend_steps"):
        _require(getattr(h, name) >= 0, name.upper(), getattr(h, name), ">= 0")
    _require(h.grad_clip_norm >= 0, "GRAD_CLIP_NORM", h.grad_clip_norm, ">= 0 (0 = no clipping)")


# ----------------------------------------------------------------------------------------------------
# Distributed and logging helpers: one process per GPU; everything global is reduced explicitly.


class Dist(SimpleNamespace):
    """rank, world_size, local_rank, device, is_main, grad_accum_steps."""


def init_distributed() -> Dist:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if world_size < 1 or 8 % world_size != 0:
        raise ValueError(f"WORLD_SIZE={world_size}: must divide 8 (grad accumulation is 8/WORLD_SIZE)")
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                device_id=device if device.type == "cuda" else None)
    return Dist(rank=rank, world_size=world_size, local_rank=local_rank, device=device, is_main=rank == 0,
                grad_accum_steps=8 // world_size)


def all_reduce_(t: Tensor, op=dist.ReduceOp.SUM) -> Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=op)
    return t


class Logger:
    """Rank-0 `key:value` lines to stdout and logs/<RUN_ID>.txt."""

    def __init__(self, run_id: str, enabled: bool):
        self.enabled = enabled
        self.path = Path("logs") / f"{run_id}.txt"
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def __call__(self, msg: str) -> None:
        if not self.enabled:
            return
        print(msg, flush=True)
        with self.path.open("a") as f:
            f.write(msg + "\n")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ----------------------------------------------------------------------------------------------------
# Data: strict uint16 shards, a shard-phase-randomised training loader, validation tokens + byte sidecars.

SHARD_MAGIC, SHARD_VERSION, HEADER_BYTES = 20240520, 1, 1024


def read_shard_header(path) -> int:
    """Returns the token count of a shard after checking magic, version and exact file size."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: shard file not found")
    size = path.stat().st_size
    if size < HEADER_BYTES:
        raise ValueError(f"{path}: {size} bytes, shorter than the {HEADER_BYTES}-byte header")
    header = np.fromfile(path, dtype="<i4", count=HEADER_BYTES // 4)
    if int(header[0]) != SHARD_MAGIC or int(header[1]) != SHARD_VERSION:
        raise ValueError(f"{path}: header magic/version {int(header[0])}/{int(header[1])}, "
                         f"expected {SHARD_MAGIC}/{SHARD_VERSION}")
    n = int(header[2])
    if n < 0 or size != HEADER_BYTES + 2 * n:
        raise ValueError(f"{path}: {size} bytes, but the header says {n} tokens, i.e. {HEADER_BYTES + 2 * n} bytes")
    return n


def load_data_shard(path) -> Tensor:
    """Whole shard as a uint16 tensor (tokens, or byte counts for a sidecar)."""
    n = read_shard_header(path)
    return torch.from_numpy(np.fromfile(path, dtype="<u2", count=n, offset=HEADER_BYTES))


def map_data_shard(path) -> np.ndarray:
    n = read_shard_header(path)
    return np.memmap(path, dtype="<u2", mode="r", offset=HEADER_BYTES, shape=(n,))


def dataset_files(data_dir: str, vocab_size: int, kind: str) -> list[Path]:
    """kind: train, val or val_bytes. The val pattern never matches sidecars (fineweb_val_bytes_*)."""
    root = Path(data_dir) / "datasets" / f"fineweb10B_sp{vocab_size}"
    pattern = re.compile(rf"fineweb_{kind}_\d+\.bin")
    return sorted(p for p in root.glob("*.bin") if pattern.fullmatch(p.name)) if root.is_dir() else []


def load_tokenizer(path: str, vocab_size: int):
    import sentencepiece as spm

    if not Path(path).is_file():
        raise FileNotFoundError(f"TOKENIZER_PATH={path}: tokenizer model not found")
    sp = spm.SentencePieceProcessor(model_file=str(path))
    if sp.vocab_size() != vocab_size:
        raise ValueError(f"TOKENIZER_PATH={path}: vocabulary of {sp.vocab_size()} pieces, but VOCAB_SIZE={vocab_size}")
    return sp


def build_sentencepiece_luts(sp, vocab_size: int, device) -> tuple[Tensor, Tensor, Tensor]:
    """Per-token UTF-8 byte counts for data without a sidecar: (base_bytes, has_leading_space, is_boundary)."""
    base = torch.zeros(vocab_size, dtype=torch.int32)
    lead = torch.zeros(vocab_size, dtype=torch.bool)
    boundary = torch.ones(vocab_size, dtype=torch.bool)
    for i in range(sp.vocab_size()):
        if sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i):
            continue
        boundary[i] = False
        if sp.is_byte(i):
            base[i] = 1
            continue
        piece = sp.id_to_piece(i)
        if piece.startswith("\u2581"):
            lead[i] = True
            piece = piece[1:]
        base[i] = len(piece.encode("utf-8"))
    return base.to(device), lead.to(device), boundary.to(device)


def target_bytes(tokens: Tensor, idx: Tensor, sidecar: Tensor | None, luts) -> Tensor:
    """UTF-8 bytes charged for predicting tokens[idx] (idx >= 1): the sidecar, else the vocabulary LUT."""
    if sidecar is not None:
        return sidecar[idx].to(torch.float64)
    base, lead, boundary = luts
    y, x = tokens[idx].long(), tokens[idx - 1].long()
    return (base[y] + (lead[y] & ~boundary[x]).to(torch.int32)).to(torch.float64)


class ValData(SimpleNamespace):
    """tokens (int32, length n_targets+1), sidecar (float or None), luts, files."""


def load_validation(h, device, luts) -> ValData:
    files = dataset_files(h.data_dir, h.vocab_size, "val")
    if not files:
        raise FileNotFoundError(f"DATA_DIR={h.data_dir}: no fineweb_val_NNNNNN.bin under datasets/fineweb10B_sp{h.vocab_size}")
    tokens = torch.cat([load_data_shard(f) for f in files])
    side_files = dataset_files(h.data_dir, h.vocab_size, "val_bytes")
    sidecar = None
    if side_files:
        sidecar = torch.cat([load_data_shard(f) for f in side_files])
        if sidecar.numel() != tokens.numel():
            raise ValueError(f"{side_files[0].parent}: byte sidecar has {sidecar.numel()} entries but the validation "
                             f"shards have {tokens.numel()} tokens")
    usable = ((tokens.numel() - 1) // h.eval_seq_len) * h.eval_seq_len
    if usable <= 0:
        raise ValueError(f"{files[0]}: {tokens.numel()} validation tokens, fewer than EVAL_SEQ_LEN+1={h.eval_seq_len + 1}")
    tokens = tokens[: usable + 1].to(torch.int32)
    if int(tokens.max()) >= h.vocab_size:
        raise ValueError(f"{files[0].parent}: validation token {int(tokens.max())} >= VOCAB_SIZE={h.vocab_size}")
    if sidecar is not None:
        sidecar = sidecar[: usable + 1].to(torch.int32).to(device)
    return ValData(tokens=tokens.to(device), sidecar=sidecar, luts=luts, files=files)


class TrainLoader:
    """Random seq_len-aligned windows from this rank's shards (SPEC §2).

    Each shard gets a random phase in [0, seq_len) and a permutation of its windows; every sequence of a
    batch comes from a shard drawn with probability proportional to its remaining windows; an exhausted shard
    is re-shuffled. Deterministic for (SEED, rank). Returns int64 (inputs, targets) of shape (B, seq_len).
    """

    def __init__(self, files, seq_len: int, batch_seqs: int, rank: int, world_size: int, seed: int,
                 vocab_size: int, device):
        if not files:
            raise FileNotFoundError("no fineweb_train_NNNNNN.bin shards found (check DATA_DIR)")
        self.files = list(files[rank::world_size]) if len(files) >= world_size else list(files)
        self.shards = [map_data_shard(f) for f in self.files]
        for f, s in zip(self.files, self.shards):
            if len(s) < 2 * seq_len + 1:
                raise ValueError(f"{f}: {len(s)} tokens, too short for TRAIN_SEQ_LEN={seq_len}")
        self.seq_len, self.batch_seqs, self.vocab_size, self.device = seq_len, batch_seqs, vocab_size, device
        self.rng = np.random.default_rng([seed, rank])
        self.starts: list[np.ndarray] = [np.empty(0, np.int64)] * len(self.shards)
        self.pos = [0] * len(self.shards)
        for i in range(len(self.shards)):
            self._shuffle(i)
        pin = device.type == "cuda"
        self.host = [torch.empty((batch_seqs, seq_len + 1), dtype=torch.int32, pin_memory=pin) for _ in range(2)]
        self.copied = [None, None]
        self.flip = 0

    def _shuffle(self, i: int) -> None:
        phase = int(self.rng.integers(self.seq_len))
        n_windows = (len(self.shards[i]) - phase - 1) // self.seq_len
        self.starts[i] = phase + self.rng.permutation(n_windows).astype(np.int64) * self.seq_len
        self.pos[i] = 0

    def next_batch(self) -> tuple[Tensor, Tensor]:
        buf_i = self.flip
        self.flip ^= 1
        if self.copied[buf_i] is not None:
            self.copied[buf_i].synchronize()  # the previous copy out of this pinned buffer must be done
        buf = self.host[buf_i].numpy()
        remaining = np.array([len(s) - p for s, p in zip(self.starts, self.pos)], dtype=np.float64)
        for b in range(self.batch_seqs):
            i = int(np.searchsorted(np.cumsum(remaining), self.rng.random() * remaining.sum(), side="right"))
            i = min(i, len(self.shards) - 1)
            start = int(self.starts[i][self.pos[i]])
            buf[b] = self.shards[i][start : start + self.seq_len + 1]
            self.pos[i] += 1
            if self.pos[i] == len(self.starts[i]):
                self._shuffle(i)
            remaining[i] = len(self.starts[i]) - self.pos[i]
        if int(buf.max()) >= self.vocab_size:
            raise ValueError(f"training shards {self.files[0].parent}: token {int(buf.max())} >= VOCAB_SIZE={self.vocab_size}")
        dev = self.host[buf_i].to(self.device, non_blocking=True)
        if self.device.type == "cuda":
            self.copied[buf_i] = torch.cuda.Event()
            self.copied[buf_i].record()
        dev = dev.long()
        return dev[:, :-1], dev[:, 1:]


# ----------------------------------------------------------------------------------------------------
# Model: tied-embedding GPT with partial RoPE, XSA, parallel late layers, depth recurrence and U-Net skips.


def attention_backend() -> str:
    try:
        import flash_attn_interface  # noqa: F401

        return "flash_attn_3"
    except ImportError:
        return "sdpa"


class CastedLinear(nn.Linear):
    """fp32 master weight, computed in the activation dtype (bf16 under autocast)."""

    def __init__(self, in_features: int, out_features: int, zero_init: bool = False):
        super().__init__(in_features, out_features, bias=False)
        self.zero_init = zero_init

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight.to(x.dtype))


def rotary_cos_sin(seq_len: int, rope_dims: int, base: float, train_seq_len: int, device) -> tuple[Tensor, Tensor]:
    """(seq_len, rope_dims/2) tables; past the training length the base grows NTK-style by scale^(d/(d-2))."""
    if seq_len > train_seq_len:
        base = base * (seq_len / train_seq_len) ** (rope_dims / (rope_dims - 2))
    inv_freq = 1.0 / base ** (torch.arange(0, rope_dims, 2, dtype=torch.float32, device=device) / rope_dims)
    freqs = torch.outer(torch.arange(seq_len, dtype=torch.float32, device=device), inv_freq)
    return freqs.cos(), freqs.sin()


def apply_partial_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x: (B, T, H, D); rotates the first 2*cos.size(-1) dims with the half-split convention."""
    half = cos.size(-1)
    if half == 0:
        return x
    cos, sin = cos[:, None, :].to(x.dtype), sin[:, None, :].to(x.dtype)
    x1, x2, rest = x[..., :half], x[..., half : 2 * half], x[..., 2 * half :]
    return torch.cat((x1 * cos + x2 * sin, x2 * cos - x1 * sin, rest), dim=-1)


def xsa_project_out(y: Tensor, v: Tensor) -> Tensor:
    """Removes from each head's output its component along the normalised own-position value of its KV group.

    y: (B, T, H, D), v: (B, T, Hkv, D); query heads h*G..h*G+G-1 share KV head h (GQA grouping).
    """
    B, T, H, D = y.shape
    hkv = v.size(2)
    vn = F.normalize(v, dim=-1).unsqueeze(3)  # (B, T, Hkv, 1, D)
    yg = y.view(B, T, hkv, H // hkv, D)
    return (yg - (yg * vn).sum(-1, keepdim=True) * vn).view(B, T, H, D)


def causal_attention(q: Tensor, k: Tensor, v: Tensor, backend: str) -> Tensor:
    """(B, T, H, D) x (B, T, Hkv, D) -> (B, T, H, D), causal, grouped KV heads."""
    if backend == "flash_attn_3":
        from flash_attn_interface import flash_attn_func

        out = flash_attn_func(q, k, v, causal=True)
        return out[0] if isinstance(out, tuple) else out
    y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True,
                                       enable_gqa=k.size(2) != q.size(2))
    return y.transpose(1, 2)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, num_kv_heads: int, qk_gain_init: float, xsa: bool, backend: str):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, dim // num_heads
        kv_dim = num_kv_heads * self.head_dim
        self.c_q, self.c_k, self.c_v = CastedLinear(dim, dim), CastedLinear(dim, kv_dim), CastedLinear(dim, kv_dim)
        self.proj = CastedLinear(dim, dim, zero_init=True)
        self.q_gain = nn.Parameter(torch.full((num_heads,), qk_gain_init, dtype=torch.float32))
        self.xsa, self.backend = xsa, backend

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        B, T, _ = x.shape
        q = self.c_q(x).view(B, T, self.num_heads, self.head_dim)
        k = self.c_k(x).view(B, T, self.num_kv_heads, self.head_dim)
        v = self.c_v(x).view(B, T, self.num_kv_heads, self.head_dim)
        q = apply_partial_rotary(F.rms_norm(q, (self.head_dim,)), cos, sin)
        k = apply_partial_rotary(F.rms_norm(k, (self.head_dim,)), cos, sin)
        q = q * self.q_gain.to(q.dtype)[:, None]
        y = causal_attention(q, k, v, self.backend)
        if self.xsa:
            y = xsa_project_out(y, v)
        return self.proj(y.reshape(B, T, -1))


class MLP(nn.Module):
    def __init__(self, dim: int, mult: int):
        super().__init__()
        self.fc, self.proj = CastedLinear(dim, mult * dim), CastedLinear(mult * dim, dim, zero_init=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(F.leaky_relu(self.fc(x), negative_slope=0.5).square())


class Block(nn.Module):
    """Sequential (attention, then MLP on the updated stream) or parallel (both read the same input)."""

    def __init__(self, h, layer_idx: int, backend: str):
        super().__init__()
        dim = h.model_dim
        self.attn = Attention(dim, h.num_heads, h.num_kv_heads, h.qk_gain_init,
                              xsa=layer_idx >= h.num_layers - h.xsa_last_n, backend=backend)
        self.mlp = MLP(dim, h.mlp_mult)
        self.attn_scale = nn.Parameter(torch.ones(dim))
        self.mlp_scale = nn.Parameter(torch.ones(dim))
        self.resid_mix = nn.Parameter(torch.stack((torch.ones(dim), torch.zeros(dim))))
        self.ln_scale = 1.0 / math.sqrt(layer_idx + 1)
        self.parallel = layer_idx >= h.parallel_residual_start

    def forward(self, x: Tensor, x0: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        mix = self.resid_mix.to(x.dtype)
        x = mix[0] * x + mix[1] * x0
        d = (x.size(-1),)
        n = F.rms_norm(x, d) * self.ln_scale
        a = self.attn(n, cos, sin)
        if self.parallel:
            m = self.mlp(n)
            return x + self.attn_scale.to(x.dtype) * a + self.mlp_scale.to(x.dtype) * m
        x = x + self.attn_scale.to(x.dtype) * a
        return x + self.mlp_scale.to(x.dtype) * self.mlp(F.rms_norm(x, d) * self.ln_scale)


def layer_orders(num_layers: int, num_loops: int, loop_start: int, loop_end: int) -> tuple[list[int], list[int]]:
    """(plain order, recurrent order): layers loop_start..loop_end run 1+num_loops times in the latter."""
    plain = list(range(num_layers))
    looped = plain[:loop_start] + plain[loop_start : loop_end + 1] * (num_loops + 1) + plain[loop_end + 1 :]
    return plain, looped


def encoder_decoder(order: list[int]) -> tuple[list[int], list[int]]:
    n_enc = len(order) // 2
    return order[:n_enc], order[n_enc:]


class GPT(nn.Module):
    def __init__(self, h, backend: str = "sdpa"):
        super().__init__()
        self.dim, self.vocab_size, self.softcap = h.model_dim, h.vocab_size, h.logit_softcap
        self.rope_dims, self.rope_base, self.train_seq_len = h.rope_dims, h.rope_base, h.train_seq_len
        self.tok_emb = nn.Embedding(h.vocab_size, h.model_dim)
        self.blocks = nn.ModuleList(Block(h, i, backend) for i in range(h.num_layers))
        self.orders = layer_orders(h.num_layers, h.num_loops, h.loop_start, h.loop_end)
        num_skips = max(min(len(e), len(d)) for e, d in map(encoder_decoder, self.orders))
        self.skip_weights = nn.Parameter(torch.ones(num_skips, h.model_dim))
        self.skip_gates = nn.Parameter(torch.zeros(num_skips, h.model_dim))
        self.looping = False
        self._init_weights(h.tied_embed_init_std)

    def _init_weights(self, embed_std: float) -> None:
        nn.init.normal_(self.tok_emb.weight, std=embed_std)
        for m in self.modules():
            if isinstance(m, CastedLinear):
                if m.zero_init:
                    nn.init.zeros_(m.weight)
                elif min(m.weight.shape) >= 64:
                    nn.init.orthogonal_(m.weight, gain=1.0)

    def layer_order(self) -> list[int]:
        return self.orders[1] if self.looping else self.orders[0]

    def hidden(self, idx: Tensor) -> Tensor:
        """(B, T) token ids -> (B, T, dim) final-normed hidden states."""
        d = (self.dim,)
        x = F.rms_norm(self.tok_emb(idx), d)
        x0 = x
        cos, sin = rotary_cos_sin(idx.size(1), self.rope_dims, self.rope_base, self.train_seq_len, idx.device)
        encoder, decoder = encoder_decoder(self.layer_order())
        skips = []
        for li in encoder:
            x = self.blocks[li](x, x0, cos, sin)
            skips.append(x)
        for j, li in enumerate(decoder):
            if skips:
                skip = self.skip_weights[j].to(x.dtype) * skips.pop()
                x = torch.lerp(skip, x, torch.sigmoid(self.skip_gates[j]).to(x.dtype))
            x = self.blocks[li](x, x0, cos, sin)
        return F.rms_norm(x, d)

    def logits(self, hidden: Tensor) -> Tensor:
        z = F.linear(hidden, self.tok_emb.weight.to(hidden.dtype)).float()
        return self.softcap * torch.tanh(z / self.softcap)

    def forward(self, idx: Tensor, targets: Tensor) -> Tensor:
        logits = self.logits(self.hidden(idx))
        return F.cross_entropy(logits.view(-1, self.vocab_size), targets.reshape(-1))

    def token_nll(self, idx: Tensor, targets: Tensor, last: int) -> Tensor:
        """Per-token NLL (nats, fp32) of the last `last` positions: (B, last)."""
        hid = self.hidden(idx)[:, -last:]
        logits = self.logits(hid)
        return F.cross_entropy(logits.reshape(-1, self.vocab_size), targets[:, -last:].reshape(-1),
                               reduction="none").view(idx.size(0), last)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------------------------------
# Optimizers: Muon (MuonEq-R, one rank per matrix) for block matrices, AdamW for embedding and scalars.

NS_COEFFS = (3.4445, -4.7750, 2.0315)


def newton_schulz5(g: Tensor, steps: int = 5, eps: float = 1e-7, dtype=torch.bfloat16) -> Tensor:
    """Approximate orthogonal factor U V^T of g (..., m, n) by the quintic Newton-Schulz iteration."""
    a, b, c = NS_COEFFS
    x = g.to(dtype)
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + eps)
    transposed = g.size(-2) > g.size(-1)
    if transposed:
        x = x.mT
    for _ in range(steps):
        s = x @ x.mT
        x = a * x + (b * s + c * s @ s) @ x
    return x.mT if transposed else x


def muon_update(grad: Tensor, steps: int) -> Tensor:
    """MuonEq-R direction: row-normalise, orthogonalise, scale by sqrt(max(1, rows/cols))."""
    g = grad / (grad.norm(dim=-1, keepdim=True) + 1e-7)
    return newton_schulz5(g, steps) * math.sqrt(max(1.0, grad.size(-2) / grad.size(-1)))


class Muon(torch.optim.Optimizer):
    """Nesterov momentum + MuonEq-R, decoupled weight decay: p <- p*(1 - lr*wd) - lr*update.

    Matrix i is orthogonalised by rank i % world_size; a flat all-reduce shares the results.
    """

    def __init__(self, params, lr: float, momentum: float, backend_steps: int, weight_decay: float,
                 rank: int = 0, world_size: int = 1):
        super().__init__(params, dict(lr=lr, momentum=momentum, backend_steps=backend_steps, weight_decay=weight_decay))
        self.rank, self.world_size = rank, world_size

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            params = group["params"]
            lr, mom, wd = group["lr"], group["momentum"], group["weight_decay"]
            flat = torch.zeros(sum(p.numel() for p in params), device=params[0].device, dtype=torch.float32)
            offset = 0
            for i, p in enumerate(params):
                if i % self.world_size == self.rank and p.grad is not None:
                    buf = self.state[p].setdefault("momentum_buffer", torch.zeros_like(p.grad))
                    buf.mul_(mom).add_(p.grad)
                    g = p.grad.add(buf, alpha=mom)
                    flat[offset : offset + p.numel()] = muon_update(g, group["backend_steps"]).flatten().float()
                offset += p.numel()
            if self.world_size > 1:
                all_reduce_(flat)
            offset = 0
            for p in params:
                p.mul_(1.0 - lr * wd).add_(flat[offset : offset + p.numel()].view_as(p), alpha=-lr)
                offset += p.numel()


def split_parameters(model: GPT) -> tuple[list, list, list]:
    """(block matrices -> Muon, embedding -> AdamW, scalars/control tensors -> AdamW)."""
    matrices, scalars = [], []
    for name, p in model.named_parameters():
        if name == "tok_emb.weight":
            continue
        if name.startswith("blocks.") and p.ndim == 2 and "resid_mix" not in name:
            matrices.append(p)
        else:
            scalars.append(p)
    return matrices, [model.tok_emb.weight], scalars


def build_optimizers(h, model: GPT, d: Dist) -> tuple[Muon, torch.optim.AdamW]:
    matrices, embed, scalars = split_parameters(model)
    muon = Muon(matrices, lr=h.matrix_lr, momentum=h.muon_momentum, backend_steps=h.muon_backend_steps,
                weight_decay=h.muon_wd, rank=d.rank, world_size=d.world_size)
    adam = torch.optim.AdamW([dict(params=embed, lr=h.tied_embed_lr, weight_decay=h.embed_wd),
                              dict(params=scalars, lr=h.scalar_lr, weight_decay=h.adam_wd)],
                             betas=(h.beta1, h.beta2), eps=h.adam_eps, fused=d.device.type == "cuda")
    for opt in (muon, adam):
        for group in opt.param_groups:
            group["base_lr"] = group["lr"]
    return muon, adam


def lr_multiplier(progress: float, warmdown_frac: float) -> float:
    """1, then linear decay to 0 over the last warmdown_frac of training progress."""
    if warmdown_frac <= 0 or progress < 1.0 - warmdown_frac:
        return 1.0
    return max(0.0, (1.0 - progress) / warmdown_frac)


def muon_momentum(step: int, h) -> float:
    if h.muon_momentum_warmup_steps == 0:
        return h.muon_momentum
    frac = min(1.0, step / h.muon_momentum_warmup_steps)
    return (1 - frac) * h.muon_momentum_warmup_start + frac * h.muon_momentum


def ema_decay(step: int, max_decay: float) -> float:
    """Warmed-up EMA decay, so short runs average trained weights rather than the initialisation."""
    return min(max_decay, (1.0 + step) / (10.0 + step))


class EMA:
    """fp32 exponential moving average of every parameter."""

    def __init__(self, model: nn.Module):
        self.params = list(model.parameters())
        self.shadow = [p.detach().float().clone() for p in self.params]

    @torch.no_grad()
    def update(self, step: int, max_decay: float) -> None:
        torch._foreach_lerp_(self.shadow, [p.detach().float() for p in self.params], 1.0 - ema_decay(step, max_decay))

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        for p, s in zip(model.parameters(), self.shadow):
            p.copy_(s.to(p.dtype))


def all_reduce_grads(params: list[Tensor], world_size: int) -> None:
    """Averages gradients across ranks in one flat buffer (parameters unused this step count as zero)."""
    if world_size == 1:
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.flatten() for p in params])
    all_reduce_(flat)
    flat /= world_size
    offset = 0
    for p in params:
        p.grad.copy_(flat[offset : offset + p.numel()].view_as(p.grad))
        offset += p.numel()


# ----------------------------------------------------------------------------------------------------
# Evaluation: BPB over non-overlapping or sliding windows, every target scored exactly once.


def window_plan(n_targets: int, seq_len: int, stride: int) -> list[tuple[int, int, int]]:
    """(window start, first scored target, end) per window; targets are indices into tokens[1:].

    Windows start every `stride` while start + seq_len - stride < n_targets; the first window scores all of its
    targets, every later one only its last `stride` (stride = seq_len gives non-overlapping windows).
    """
    starts = range(0, max(n_targets - seq_len + stride, 1), stride)
    return [(s, s if s == 0 else s + seq_len - stride, min(s + seq_len, n_targets)) for s in starts]


def compiled_nll(model: GPT, device: torch.device):
    """Per-token NLL function for evaluate(): compiled on the GPU (fixed shapes), eager on the CPU."""
    return torch.compile(model.token_nll, dynamic=False) if device.type == "cuda" else model.token_nll


def autocast_context(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def evaluate(h, nll_fn, val: ValData, d: Dist, stride: int) -> tuple[float, float]:
    """Returns (val_loss in nats/token, val_bpb). nll_fn(x, y, last) -> (B, last) per-token NLL.

    Windows are padded to seq_len so every batch has one shape; pads are never scored.
    """
    L = h.eval_seq_len
    tokens = val.tokens
    n_targets = tokens.numel() - 1
    plan = window_plan(n_targets, L, stride)
    first_full = plan[0][1] == plan[0][0] and stride < L
    mine = plan[d.rank :: d.world_size]
    batch = max(1, h.val_batch_tokens // (L * d.world_size))
    stats = torch.zeros(3, dtype=torch.float64, device=tokens.device)  # nll, targets, bytes
    arange = torch.arange(L + 1, device=tokens.device)

    def score(windows, last):
        w = torch.tensor(windows, device=tokens.device)  # (B, 3): start, first scored target, end
        pos = (w[:, :1] + arange[None]).clamp_max(n_targets)
        seq = tokens[pos].long()
        with autocast_context(d.device):
            nll = nll_fn(seq[:, :-1], seq[:, 1:], last).double()
        tidx = w[:, :1] + (L - last) + torch.arange(last, device=tokens.device)  # target index per scored slot
        mask = (tidx >= w[:, 1:2]) & (tidx < w[:, 2:3])
        stats[0] += (nll * mask).sum()
        stats[1] += mask.sum()
        stats[2] += (target_bytes(tokens, (tidx + 1).clamp_max(n_targets), val.sidecar, val.luts) * mask).sum()

    def run(windows, last):
        rows = max(1, min(batch, 65536 // last))  # bounds the fp32 logits of one call to 64K rows
        for i in range(0, len(windows), rows):
            chunk = windows[i : i + rows]
            score(chunk + [(chunk[-1][0], 0, 0)] * (rows - len(chunk)), last)  # pads keep one shape, score nothing

    if first_full:
        run(mine[:1] if d.rank == 0 else [], L)
        mine = [w for w in mine if w[0] != 0]
    run(mine, stride)
    all_reduce_(stats)
    loss = (stats[0] / stats[1]).item()
    return loss, (stats[0] / math.log(2) / stats[2]).item()


# ----------------------------------------------------------------------------------------------------
# Training: compile warm-up with restore, wallclock-driven schedules, EMA, agreed stop.


def train(h, model: GPT, d: Dist, log, val: ValData) -> tuple[EMA, int, float]:
    """Trains in place; returns (EMA, steps, training ms)."""
    muon, adam = build_optimizers(h, model, d)
    params = list(model.parameters())
    compiled = torch.compile(model) if d.device.type == "cuda" else model
    local_seqs = h.train_batch_tokens // (d.world_size * d.grad_accum_steps * h.train_seq_len)
    files = dataset_files(h.data_dir, h.vocab_size, "train")

    def make_loader():
        return TrainLoader(files, h.train_seq_len, local_seqs, d.rank, d.world_size, h.seed, h.vocab_size, d.device)

    budget_ms = 1000 * (h.max_wallclock_seconds - h.gptq_reserve_seconds) if h.max_wallclock_seconds > 0 else 0.0

    def progress_of(step: int, elapsed_ms: float) -> float:
        return elapsed_ms / budget_ms if budget_ms > 0 else step / h.iterations

    def train_step(loader, step: int, mult: float) -> Tensor:
        for opt in (muon, adam):
            for group in opt.param_groups:
                group["lr"] = group["base_lr"] * mult
        for group in muon.param_groups:
            group["momentum"] = muon_momentum(step, h)
        total = torch.zeros((), device=d.device)
        for _ in range(d.grad_accum_steps):
            x, y = loader.next_batch()
            with autocast_context(d.device):
                loss = compiled(x, y)
            (loss / d.grad_accum_steps).backward()
            total += loss.detach()
        all_reduce_grads(params, d.world_size)
        if h.grad_clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, h.grad_clip_norm)
        muon.step()
        adam.step()
        model.zero_grad(set_to_none=True)
        return total / d.grad_accum_steps

    if h.warmup_steps > 0:  # compile both graphs, then restore so warm-up costs no training progress
        init_state = copy.deepcopy(model.state_dict())
        opt_states = [copy.deepcopy(o.state_dict()) for o in (muon, adam)]
        loader = make_loader()
        for looping in (False, True):
            model.looping = looping
            for _ in range(h.warmup_steps):
                train_step(loader, 0, 1.0)
        synchronize(d.device)
        model.load_state_dict(init_state)
        for o, s in zip((muon, adam), opt_states):
            o.load_state_dict(s)
        model.looping = False
        log(f"warmup_done steps:{h.warmup_steps} per_mode")
    loader = make_loader()
    ema = EMA(model)
    nll_fn = compiled_nll(model, d.device)
    train_ms, step, stop_after = 0.0, 0, None
    last_log, loop_switch = (0, 0.0), None  # (step, train ms) at the last log line / recurrence switch
    synchronize(d.device)
    t0 = time.perf_counter()
    while True:
        last_step = step == h.iterations or stop_after == step
        if last_step or (h.val_loss_every > 0 and step > 0 and step % h.val_loss_every == 0):
            synchronize(d.device)
            train_ms += 1000 * (time.perf_counter() - t0)
            vl, vb = evaluate(h, nll_fn, val, d, h.eval_seq_len)
            log(f"{step}/{h.iterations} val_loss: {vl:.4f} val_bpb: {vb:.4f} train_time: {train_ms:.0f}ms")
            synchronize(d.device)
            t0 = time.perf_counter()
        if last_step:
            break
        elapsed = train_ms + 1000 * (time.perf_counter() - t0)
        if not model.looping and h.num_loops > 0 and progress_of(step, elapsed) >= h.enable_looping_at:
            model.looping = True
            loop_switch = (step, elapsed)
            log(f"recurrence:on step:{step} train_time:{elapsed:.0f}ms layers:{','.join(map(str, model.layer_order()))}")
        loss = train_step(loader, step, lr_multiplier(progress_of(step, elapsed), h.warmdown_frac))
        ema.update(step, h.ema_decay)
        step += 1
        synchronize(d.device)  # the clock measures finished GPU work, and every rank stops on the same step
        elapsed = train_ms + 1000 * (time.perf_counter() - t0)
        if step <= 5 or step % h.train_log_every == 0:
            tps = (step - last_log[0]) * h.train_batch_tokens / max(1e-9, (elapsed - last_log[1]) / 1000)
            log(f"{step}/{h.iterations} train_loss: {loss.item():.4f} train_time: {elapsed / 60000:.2f}m "
                f"step_avg: {elapsed / step:.2f}ms tok/s: {tps:.0f}")
            last_log = (step, elapsed)
        if stop_after is None and budget_ms > 0:
            flag = all_reduce_(torch.tensor([float(elapsed >= budget_ms)], device=d.device), dist.ReduceOp.MAX)
            if flag.item() > 0:
                stop_after = step
                log(f"stopping_early: wallclock_cap train_time: {elapsed:.0f}ms step: {step}/{h.iterations}")
    phases = [(0, 0.0), loop_switch or (step, train_ms), (step, train_ms)]
    for looping in (0, 1):
        n, ms = phases[looping + 1][0] - phases[looping][0], phases[looping + 1][1] - phases[looping][1]
        if n > 0:
            log(f"throughput recurrence:{looping} steps:{n} tok/s:{n * h.train_batch_tokens / (ms / 1000):.0f}")
    if d.device.type == "cuda":
        log(f"peak memory allocated: {torch.cuda.max_memory_allocated() // 2**20} MiB "
            f"reserved: {torch.cuda.max_memory_reserved() // 2**20} MiB")
    return ema, step, train_ms


# ----------------------------------------------------------------------------------------------------
# Main: validate inputs, train, evaluate the EMA model.


def main() -> None:
    h = read_hyperparameters()
    d = init_distributed()
    log = Logger(h.run_id, d.is_main)
    backend = attention_backend()
    log(f"run_id:{h.run_id} world_size:{d.world_size} grad_accum_steps:{d.grad_accum_steps} device:{d.device} "
        f"torch:{torch.__version__} attention:{backend}")
    for k, v in sorted(vars(h).items()):
        log(f"hparam {k}:{v}")
    # Inputs are checked before any GPU time is spent.
    if not dataset_files(h.data_dir, h.vocab_size, "train"):
        raise FileNotFoundError(f"DATA_DIR={h.data_dir}: no fineweb_train_NNNNNN.bin under datasets/fineweb10B_sp{h.vocab_size}")
    for f in dataset_files(h.data_dir, h.vocab_size, "train"):
        read_shard_header(f)
    sp = load_tokenizer(h.tokenizer_path, h.vocab_size)
    val = load_validation(h, d.device, build_sentencepiece_luts(sp, h.vocab_size, d.device))
    log(f"val_tokens:{val.tokens.numel() - 1} byte_sidecar:{val.sidecar is not None}")
    torch.manual_seed(h.seed)
    np.random.seed(h.seed)
    if d.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    model = GPT(h, backend).to(d.device)
    log(f"model_params:{count_parameters(model)}")
    ema, steps, train_ms = train(h, model, d, log, val)
    ema.copy_to(model)
    model.looping = h.num_loops > 0
    nll = compiled_nll(model, d.device)
    t0 = time.perf_counter()
    vl, vb = evaluate(h, nll, val, d, h.eval_seq_len)
    log(f"pre-quantization post-ema val_loss:{vl:.8f} val_bpb:{vb:.8f} eval_time:{1000 * (time.perf_counter() - t0):.0f}ms")
    if h.sliding_window_enabled:
        t0 = time.perf_counter()
        vl, vb = evaluate(h, nll, val, d, h.eval_stride)
        log(f"unquantized_sliding_window val_loss:{vl:.8f} val_bpb:{vb:.8f} "
            f"eval_time:{1000 * (time.perf_counter() - t0):.0f}ms")
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
