"""Independent float64 references written plainly for the tests (not shared with the library).

Attention is deliberately naive: K/V are repeated per query head, masks are fully
materialized, and the softmax is computed per row over the allowed keys only.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import Tensor, nn


def allowed_matrix(
    nq: int, nk: int, *, causal: bool, window: int | tuple[int, int] | None
) -> Tensor:
    """(Nq, Nk) bool, bottom-right aligned, written with explicit loops."""
    out = torch.ones(nq, nk, dtype=torch.bool)
    if window is None:
        left = right = None
    elif isinstance(window, int):
        left = right = window
    else:
        left, right = window
    for i in range(nq):
        p = i + nk - nq
        for j in range(nk):
            ok = True
            if causal and j > p:
                ok = False
            if left is not None and j < p - left:
                ok = False
            if right is not None and not causal and j > p + right:
                ok = False
            out[i, j] = ok
    return out


def attention64(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None = None,
    *,
    causal: bool = False,
    window: int | tuple[int, int] | None = None,
    scale: float | None = None,
    cosine: bool = False,
) -> tuple[Tensor, Tensor]:
    """Returns (output (B,H,Nq,Dv), weights (B,H,Nq,Nk)) in float64."""
    q, k, v = q.double(), k.double(), v.double()
    b, h, nq, dk = q.shape
    hkv, nk = k.shape[1], k.shape[2]
    k = k.repeat_interleave(h // hkv, dim=1)
    v = v.repeat_interleave(h // hkv, dim=1)
    if cosine:
        q = q / q.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        k = k / k.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        scale = math.sqrt(dk) if scale is None else scale
    elif scale is None:
        scale = 1.0 / math.sqrt(dk)
    logits = torch.einsum("bhid,bhjd->bhij", q, k) * scale
    allowed = allowed_matrix(nq, nk, causal=causal, window=window).expand(b, h, nq, nk).clone()
    if mask is not None:
        if mask.dim() == 2:
            mask = mask[None, None]
        mask = mask.expand(b, h, nq, nk)
        if mask.dtype == torch.bool:
            allowed &= mask
        else:
            logits = logits + mask.double()
            allowed &= ~torch.isneginf(mask)
    weights = torch.zeros_like(logits)
    for idx in torch.nonzero(allowed.any(-1)).tolist():
        bi, hi, qi = idx
        row_ok = allowed[bi, hi, qi]
        row = logits[bi, hi, qi][row_ok]
        weights[bi, hi, qi, row_ok] = torch.softmax(row, dim=-1)
    out = torch.einsum("bhij,bhjd->bhid", weights, torch.where(allowed.any(-2)[..., None], v, 0))
    return out, weights


def int8_dequantized64(float_model: nn.Module, quantized: nn.Module) -> nn.Module:
    """A float64 copy of ``float_model`` whose linear weights are ``quantized``'s int8 codes
    times their scales, per row ``(N,)`` or per row and group of input channels ``(N, G)``
    (its fused q/k/v copy aside): the model the int8 layers stand for, computed plainly. The
    head gets its own matrix (the quantized head is not tied)."""
    reference = copy.deepcopy(float_model).double()
    head = reference.lm_head
    reference.lm_head = nn.Linear(head.in_features, head.out_features, bias=False).double()
    for name, module in quantized.named_modules():
        if hasattr(module, "qweight") and hasattr(module, "scale") and "qkv_proj" not in name:
            codes = module.qweight.double().cpu()
            scale = module.scale.double().cpu().reshape(codes.shape[0], -1)  # (N, groups)
            weight = codes * scale.repeat_interleave(codes.shape[1] // scale.shape[1], dim=1)
            with torch.no_grad():
                reference.get_submodule(name).weight.copy_(weight)
    return reference
