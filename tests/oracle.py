"""Independent float64 attention written plainly for the tests (not shared with the library).

Deliberately naive: K/V are repeated per query head, masks are fully materialized, and the
softmax is computed per row over the allowed keys only.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


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
