"""The one description of an attention call that every backend receives."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import NamedTuple

import torch
from torch import Tensor

from ..masks import Window, merge, structural_mask


class AttentionResult(NamedTuple):
    """What :func:`multihead.functional.attention` returns.

    ``output`` is ``(B, H, Nq, Dv)``; ``weights`` is ``(B, H, Nq, Nk)`` (taken before dropout)
    when ``need_weights=True`` and ``None`` otherwise.
    """

    output: Tensor
    weights: Tensor | None


@dataclass(frozen=True, eq=False)
class AttentionSpec:
    """A validated attention call, already in the kernel layout.

    ``mask`` is the caller's mask as a 4-D tensor (bool: ``True`` = may attend; float: additive),
    kept separate from ``causal``/``window`` so a backend can treat structure cheaply (skip
    blocks, use a fused causal kernel) instead of reading a dense mask.
    """

    query: Tensor  # (B, H, Nq, Dk)
    key: Tensor  # (B, Hkv, Nk, Dk)
    value: Tensor  # (B, Hkv, Nk, Dv)
    mask: Tensor | None  # (B|1, H|1, Nq|1, Nk|1), bool or float
    causal: bool
    window: Window | None
    scale: float
    dropout_p: float
    need_weights: bool
    # ALiBi (Press et al., 2022): (H,) slopes m_h, adding -m_h * |i - j| to the logits, with
    # query i bottom-right aligned (at key position i + Nk - Nq). Kept as slopes, not as a
    # dense (H, Nq, Nk) bias, so block kernels make only the blocks they visit.
    alibi_slopes: Tensor | None = None

    def replace(self, **changes: object) -> AttentionSpec:
        """A copy with ``changes`` applied (the spec is frozen)."""
        return replace(self, **changes)  # type: ignore[arg-type]

    @property
    def shape(self) -> tuple[int, int, int, int, int, int, int]:
        """``(B, H, Hkv, Nq, Nk, Dk, Dv)``."""
        b, h, nq, dk = self.query.shape
        hkv, nk, dv = self.key.shape[1], self.key.shape[2], self.value.shape[3]
        return b, h, hkv, nq, nk, dk, dv

    def structure(self) -> Tensor | None:
        """Bool ``(Nq, Nk)`` mask for ``causal``/``window``, or ``None``."""
        _, _, _, nq, nk, _, _ = self.shape
        return structural_mask(
            nq, nk, causal=self.causal, window=self.window, device=self.query.device
        )

    def split_mask(self) -> tuple[Tensor | None, Tensor | None]:
        """``(allowed, bias)``: the bool part (caller's bool mask AND structure) and the float
        part (caller's additive mask plus ALiBi), each 4-D and broadcastable, or ``None``."""
        allowed = self.structure()
        if allowed is not None:
            allowed = allowed[None, None]
        bias = None
        if self.mask is not None:
            if self.mask.dtype == torch.bool:
                allowed = self.mask if allowed is None else allowed & self.mask
            else:
                bias = self.mask
        if self.alibi_slopes is not None:
            _, _, _, nq, nk, _, _ = self.shape
            alibi = alibi_bias(self.alibi_slopes, nq, nk, _logit_dtype(self.query.dtype))
            bias = alibi if bias is None else bias + alibi
        return allowed, bias

    def merged_mask(self) -> Tensor | None:
        """One 4-D mask for kernels that take a single ``attn_mask``: bool when no float part
        exists, else a float bias with ``-inf`` where the bool part forbids."""
        allowed, bias = self.split_mask()
        if bias is None:
            return allowed
        return merge(allowed, bias.to(_logit_dtype(self.query.dtype)))


def alibi_bias(slopes: Tensor, nq: int, nk: int, dtype: torch.dtype) -> Tensor:
    """ALiBi's ``(1, H, Nq, Nk)`` bias ``-m_h |i + Nk - Nq - j|`` (queries bottom-right)."""
    device = slopes.device
    distance = torch.arange(nk - nq, nk, device=device)[:, None] - torch.arange(nk, device=device)
    return -(slopes.to(dtype)[:, None, None] * distance.abs().to(dtype))[None]


def _logit_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def dead_rows(mask: Tensor | None) -> Tensor | None:
    """Bool ``(..., Nq, 1)``: rows of a merged mask in which no key may be attended."""
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        return ~mask.any(dim=-1, keepdim=True)
    return torch.isneginf(mask).all(dim=-1, keepdim=True)
