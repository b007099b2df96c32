"""The reference kernel: attention written out plainly in float math.

Every other backend is tested against this one. It follows Vaswani et al. (2017), Eq. 1,

    Attention(Q, K, V) = softmax(Q K^T * scale + bias) V,    scale = 1 / sqrt(d_k),

with masked keys removed from the softmax (not merely given a large negative logit, which
overflows in float16) so that a query with no key to attend to gets zero weights and a zero
output instead of NaN.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..masks import merge
from ._spec import AttentionResult, AttentionSpec, _logit_dtype


def masked_softmax(logits: Tensor, allowed: Tensor | None) -> Tensor:
    """Softmax over the last axis that ignores forbidden entries and gives an all-zero row when
    every entry is forbidden (or ``-inf``). Gradients stay finite in both cases.

    Example:
        >>> masked_softmax(torch.zeros(1, 2), torch.tensor([[False, False]]))
        tensor([[0., 0.]])
    """
    logits = merge(allowed, logits)
    dead = torch.isneginf(logits).all(dim=-1, keepdim=True)  # rows with nothing to attend to
    # A row of only -inf would make softmax return NaN, and NaN poisons the backward pass even
    # behind a torch.where. Give such rows finite logits, then zero their probabilities.
    weights = torch.softmax(logits.masked_fill(dead, 0.0), dim=-1)
    return weights.masked_fill(dead, 0.0)


def attention_weights(spec: AttentionSpec) -> Tensor:
    """Attention probabilities ``(B, H, Nq, Nk)`` in float32 (or float64 for float64 inputs)."""
    b, h, hkv, nq, nk, dk, _ = spec.shape
    dtype = _logit_dtype(spec.query.dtype)
    # Grouped-query attention without copying K: query heads are viewed as (Hkv, G) groups so
    # that each group of G = H / Hkv query heads meets its shared key head by broadcasting.
    q = spec.query.to(dtype).unflatten(1, (hkv, h // hkv))  # (B, Hkv, G, Nq, Dk)
    k = spec.key.to(dtype).unsqueeze(2)  # (B, Hkv, 1, Nk, Dk)
    logits = (q @ k.transpose(-1, -2)) * spec.scale  # (B, Hkv, G, Nq, Nk)
    logits = logits.flatten(1, 2)  # (B, H, Nq, Nk)
    allowed, bias = spec.split_mask()
    if allowed is None and bias is None:
        return torch.softmax(logits, dim=-1)  # no mask: no row can be empty
    if bias is not None:
        logits = logits + bias.to(dtype)
    return masked_softmax(logits, allowed)


def math_attention(spec: AttentionSpec) -> AttentionResult:
    """Reference attention; works for every input the contract allows, including float64."""
    _, h, hkv, _, _, _, _ = spec.shape
    weights = attention_weights(spec)  # (B, H, Nq, Nk), float32/64
    probs = F.dropout(weights, spec.dropout_p) if spec.dropout_p > 0 else weights
    v = spec.value.to(weights.dtype).unsqueeze(2)  # (B, Hkv, 1, Nk, Dv)
    out = probs.unflatten(1, (hkv, h // hkv)) @ v  # (B, Hkv, G, Nq, Dv)
    out = out.flatten(1, 2).to(spec.query.dtype)  # (B, H, Nq, Dv)
    return AttentionResult(out, weights.to(spec.query.dtype) if spec.need_weights else None)


def supports(spec: AttentionSpec) -> str | None:
    """The reference supports every call."""
    del spec
    return None
