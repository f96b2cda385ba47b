"""FlashAttention-4 (CuTe DSL, flash-attn-4 on PyPI) as torch custom ops, so that torch.compile(fullgraph=True)
holds it as one opaque node. Layout (B, T, H, D) / (B, T, Hkv, D), bf16, causal (bottom-right aligned like FA3).
FA4_MODE=fa4 (default): FA4 forward and backward. FA4_MODE=hybrid: cuDNN's forward (its log-sum-exp) with FA4's
backward; shorter query blocks (scoring's last rows) use FA4's forward. FWD_KW: FA4 forward tile options, from
FA4_TILE=m,n FA4_RS=0|1 FA4_OL=0|1 FA4_PACK=0|1 when set."""
import os

import torch
from torch import Tensor
from flash_attn.cute.interface import _flash_attn_bwd, _flash_attn_fwd

MODE = os.environ.get("FA4_MODE", "fa4")
FWD_KW = {}
if os.environ.get("FA4_TILE"):
    FWD_KW["tile_mn"] = tuple(int(x) for x in os.environ["FA4_TILE"].split(","))
for env, key in (("FA4_RS", "mma_pv_is_rs"), ("FA4_OL", "intra_wg_overlap"), ("FA4_PACK", "pack_gqa")):
    if os.environ.get(env):
        FWD_KW[key] = os.environ[env] == "1"


@torch.library.custom_op("golf::fa4_fwd", mutates_args=())
def fa4_fwd(q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    out, lse = _flash_attn_fwd(q, k, v, causal=True, return_lse=True, **FWD_KW)[:2]
    return out, lse


@torch.library.custom_op("golf::cudnn_fwd", mutates_args=())
def cudnn_fwd(q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    B, T, H, D = q.shape
    o, lse = torch.ops.aten._scaled_dot_product_cudnn_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), None, True, 0.0, True, False)[:2]
    return o.transpose(1, 2).contiguous(), lse.reshape(B, H, T).contiguous()


def _fake_fwd(q, k, v):
    B, T, H, D = q.shape
    return torch.empty_like(q), q.new_empty((B, H, T), dtype=torch.float32)


fa4_fwd.register_fake(_fake_fwd)
cudnn_fwd.register_fake(_fake_fwd)


@torch.library.custom_op("golf::fa4_bwd", mutates_args=())
def fa4_bwd(q: Tensor, k: Tensor, v: Tensor, out: Tensor, dout: Tensor, lse: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    dq, dk, dv = _flash_attn_bwd(q, k, v, out, dout, lse, causal=True)[:3]
    return dq, dk, dv


@fa4_bwd.register_fake
def _(q, k, v, out, dout, lse):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs, *output)


def _backward(ctx, dout, dlse):
    q, k, v, out, lse = ctx.saved_tensors
    return fa4_bwd(q, k, v, out, dout.contiguous(), lse)


fa4_fwd.register_autograd(_backward, setup_context=_setup)
cudnn_fwd.register_autograd(_backward, setup_context=_setup)


def attention(q: Tensor, k: Tensor, v: Tensor, mode: str | None = None) -> Tensor:
    mode = mode or MODE
    fwd = cudnn_fwd if mode == "hybrid" and q.size(1) == k.size(1) else fa4_fwd
    return fwd(q.contiguous(), k.contiguous(), v.contiguous())[0]
