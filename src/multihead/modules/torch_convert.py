"""Conversions between :class:`~multihead.modules.attention.MultiHeadAttention` and
``torch.nn.MultiheadAttention``: the bodies of ``MultiHeadAttention.from_torch`` and
``to_torch``. The weights are copied; the modules compute the same outputs and gradients.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from .attention import MultiHeadAttention

__all__ = ["from_torch", "to_torch"]


def from_torch(cls: type[MultiHeadAttention], module: nn.MultiheadAttention) -> MultiHeadAttention:
    """See :meth:`MultiHeadAttention.from_torch`."""
    if not isinstance(module, nn.MultiheadAttention):
        raise TypeError(
            f"module must be a torch.nn.MultiheadAttention, got {type(module).__name__}"
        )
    if module.bias_k is not None or module.bias_v is not None:
        raise ValueError("add_bias_kv=True is not supported by multihead.MultiHeadAttention")
    if module.add_zero_attn:
        raise ValueError("add_zero_attn=True is not supported by multihead.MultiHeadAttention")
    e = module.embed_dim
    ref = module.out_proj.weight
    mha = cls(
        e,
        module.num_heads,
        kdim=module.kdim,
        vdim=module.vdim,
        bias=module.in_proj_bias is not None,
        dropout=module.dropout,
        device=ref.device,
        dtype=ref.dtype,
    )
    with torch.no_grad():
        if module._qkv_same_embed_dim:
            wq, wk, wv = module.in_proj_weight.chunk(3)
        else:
            wq, wk, wv = module.q_proj_weight, module.k_proj_weight, module.v_proj_weight
        for proj, w in ((mha.q_proj, wq), (mha.k_proj, wk), (mha.v_proj, wv)):
            proj.weight.copy_(w)
        mha.out_proj.weight.copy_(module.out_proj.weight)
        if module.in_proj_bias is not None:
            for proj, bias in zip(
                (mha.q_proj, mha.k_proj, mha.v_proj), module.in_proj_bias.chunk(3), strict=True
            ):
                proj.bias.copy_(bias)
            mha.out_proj.bias.copy_(module.out_proj.bias)
    mha.train(module.training)
    return mha


def to_torch(self: MultiHeadAttention) -> nn.MultiheadAttention:
    """See :meth:`MultiHeadAttention.to_torch`."""
    problems = []
    if self.num_kv_heads != self.num_heads:
        problems.append(f"num_kv_heads={self.num_kv_heads} != num_heads={self.num_heads}")
    if self.head_dim * self.num_heads != self.embed_dim:
        problems.append(f"head_dim={self.head_dim} is not embed_dim // num_heads")
    if self.v_head_dim != self.head_dim:
        problems.append(f"v_head_dim={self.v_head_dim} != head_dim={self.head_dim}")
    if self.score != "dot":
        problems.append(f"score={self.score!r}")
    if problems:
        raise ValueError("cannot convert to torch.nn.MultiheadAttention: " + "; ".join(problems))
    ref = self.out_proj.weight
    module = nn.MultiheadAttention(
        self.embed_dim,
        self.num_heads,
        dropout=self.dropout,
        bias=self.bias,
        kdim=self.kdim,
        vdim=self.vdim,
        batch_first=True,
        device=ref.device,
        dtype=ref.dtype,
    )
    with torch.no_grad():
        weights = (self.q_proj.weight, self.k_proj.weight, self.v_proj.weight)
        if module._qkv_same_embed_dim:
            module.in_proj_weight.copy_(torch.cat(weights))
        else:
            module.q_proj_weight.copy_(weights[0])
            module.k_proj_weight.copy_(weights[1])
            module.v_proj_weight.copy_(weights[2])
        module.out_proj.weight.copy_(self.out_proj.weight)
        if self.bias:
            module.in_proj_bias.copy_(
                torch.cat([self.q_proj.bias, self.k_proj.bias, self.v_proj.bias])
            )
            module.out_proj.bias.copy_(self.out_proj.bias)
    module.train(self.training)
    return module
