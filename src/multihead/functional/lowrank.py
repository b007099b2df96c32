r"""Linformer-style low-rank attention (Wang et al., 2020): keys and values projected to ``r`` rows.

Linformer (Sec. 4, Eq. 7) projects the ``Nk`` keys and values along the *sequence* axis with
``E, F`` of shape ``(r, Nk)`` before softmax attention:

.. math::
    \mathrm{softmax}\left(\mathrm{scale} \cdot Q (E K)^\top\right) (F V),

so the weights are ``(Nq, r)`` instead of ``(Nq, Nk)``: O(N·r) time and memory.

The functional backend has no parameters, so by default ``E = F`` mean-pools ``r`` contiguous
segments of the sequence (``r = min(rank, Nk)``; segment ``s`` holds keys ``j`` with
``floor(j·r / Nk) = s``). With ``r = Nk`` every segment is one key and the result is exact
attention. A module can pass learned ``proj_k``/``proj_v`` to :func:`lowrank_attention`.

Key padding (bool ``(B|1, 1|H, 1, Nk)``) removes padded keys from the pooling: a segment's
mean is over its real keys, and a segment without any is left out of the softmax. With learned
projections padded keys are zeroed before projecting. Causal masks, windows and masks that
vary by query have no meaning after keys are mixed across positions, so ``supports`` refuses
them. Registered as ``"lowrank"`` with ``exact=False``: auto never picks it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from ._prepare import KernelOptions, kernel_spec
from ._spec import AttentionResult, AttentionSpec, _logit_dtype
from .linear import key_weights, padding_reason
from .reference import masked_softmax

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["lowrank_attention", "lowrank_backend", "pooling_matrix", "supports"]

# Linformer reports quality close to full attention with k = 64..256 projected rows (Sec. 5).
DEFAULT_RANK = 64


def pooling_matrix(
    rank: int,
    length: int,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """0/1 ``(r, length)`` matrix, ``r = min(rank, length)``: row ``s`` marks segment ``s``.

    Example:
        >>> pooling_matrix(2, 5)
        tensor([[1., 1., 1., 0., 0.],
                [0., 0., 0., 1., 1.]])
    """
    r = min(rank, length)
    segment = torch.arange(length, device=device) * r // max(length, 1)  # (length,)
    return (
        F.one_hot(segment, r).to(dtype).T.contiguous()
        if length
        else torch.zeros(0, 0, dtype=dtype, device=device)
    )


def _run(spec: AttentionSpec, rank: int, proj_k: Tensor | None, proj_v: Tensor | None) -> Tensor:
    b, h, hkv, nq, nk, dk, dv = spec.shape
    g = h // hkv
    if nk == 0:
        return spec.query.new_zeros(b, h, nq, dv)
    work = _logit_dtype(spec.query.dtype)
    q = spec.query.to(work).view(b, hkv, g, nq, dk)  # (B, Hkv, G, Nq, Dk)
    k = spec.key.to(work).unsqueeze(2)  # (B, Hkv, 1, Nk, Dk)
    v = spec.value.to(work).unsqueeze(2)  # (B, Hkv, 1, Nk, Dv)
    weights = key_weights(spec.mask, h, hkv, nk, work)  # (B|1, Hkv|1, G|1, Nk, 1) or None
    if weights is not None:
        k, v = k * weights, v * weights

    if proj_k is None:
        pool = pooling_matrix(rank, nk, dtype=work, device=q.device)  # (r, Nk)
        counts = pool.sum(-1, keepdim=True) if weights is None else pool @ weights  # (..., r, 1)
        # Segments without a real key leave the softmax; (..., 1, r).
        alive = None if weights is None else (counts > 0).transpose(-1, -2)
        inv = 1.0 / counts.clamp(min=1.0)
        k_proj, v_proj = (pool @ k) * inv, (pool @ v) * inv  # segment means
    else:
        e = proj_k.to(work)
        f = (proj_v if proj_v is not None else proj_k).to(work)
        k_proj, v_proj = e @ k, f @ v  # (B, Hkv, G|1, r, D)
        # With learned mixing only "no real key at all" is distinguishable.
        alive = None if weights is None else (weights.sum(dim=-2, keepdim=True) > 0)
    logits = (q @ k_proj.transpose(-1, -2)) * spec.scale  # (B, Hkv, G, Nq, r)
    probs = masked_softmax(logits, alive)
    if spec.dropout_p > 0:
        probs = F.dropout(probs, spec.dropout_p)
    out = probs @ v_proj  # (B, Hkv, G, Nq, Dv)
    return out.reshape(b, h, nq, dv).to(spec.query.dtype)


def _check_projection(proj: Tensor | None, name: str, nk: int, rows: int | None) -> None:
    if proj is None:
        return
    if not isinstance(proj, Tensor) or not proj.is_floating_point():
        raise TypeError(
            f"{name} must be a floating tensor (rank, Nk), got {type(proj).__name__}"
            + (f" of dtype {proj.dtype}" if isinstance(proj, Tensor) else "")
        )
    if proj.dim() != 2 or proj.shape[1] != nk or (rows is not None and proj.shape[0] != rows):
        expected = f"({rows if rows is not None else 'rank'}, {nk})"
        raise ValueError(f"{name} must have shape (rank, Nk) = {expected}, got {tuple(proj.shape)}")


def lowrank_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    *,
    rank: int = DEFAULT_RANK,
    proj_k: Tensor | None = None,
    proj_v: Tensor | None = None,
    **options: Unpack[KernelOptions],
) -> Tensor:
    """Linformer attention: keys/values projected along the sequence to ``rank`` rows.

    Args:
        query, key, value: as in :func:`~multihead.functional.attention`.
        rank: segments of the default mean pooling (``min(rank, Nk)`` are used).
        proj_k: learned ``E`` ``(r, Nk)``; ``None`` for mean pooling.
        proj_v: learned ``F`` ``(r, Nk)``; default ``proj_k`` (Linformer's shared projection).
        options: the options of ``attention`` that apply (:class:`KernelOptions`): a bool key
            padding ``mask`` (``(B|1, 1|H, 1, Nk)``, ``True`` = real key), ``scale``,
            ``score`` and ``dropout_p`` (on the ``(Nq, r)`` probabilities). The others raise
            ``ValueError``.

    Returns:
        ``(B, H, Nq, Dv)``; rows with no real key are zeros.

    Example:
        >>> q = torch.randn(2, 4, 300, 16); kv = torch.randn(2, 4, 300, 16)
        >>> lowrank_attention(q, kv, kv, rank=32).shape
        torch.Size([2, 4, 300, 16])
    """
    if isinstance(rank, bool) or not isinstance(rank, int) or rank <= 0:
        raise ValueError(f"rank must be a positive int, got {rank!r}")
    nk = key.shape[2] if isinstance(key, Tensor) and key.dim() == 4 else -1
    if proj_v is not None and proj_k is None:
        raise ValueError("proj_v needs proj_k: pass both learned projections, or neither")
    _check_projection(proj_k, "proj_k", nk, None)
    _check_projection(proj_v, "proj_v", nk, None if proj_k is None else proj_k.shape[0])
    spec = kernel_spec(supports, query, key, value, alibi=False, **options)
    return _run(spec, rank, proj_k, proj_v)


def supports(spec: AttentionSpec) -> str | None:
    """``None`` if low-rank attention can run ``spec``, else the reason it cannot."""
    if spec.need_weights:
        return "low-rank attention forms (Nq, rank) weights, not (Nq, Nk) (need_weights=True)"
    if spec.causal:
        return "low-rank attention mixes keys across positions, so it cannot be causal"
    if spec.window is not None:
        return "low-rank attention mixes keys across positions, so it has no sliding window"
    return padding_reason(spec.mask, "low-rank")


def lowrank_backend(spec: AttentionSpec) -> AttentionResult:
    """Registry entry: mean-pooled :func:`lowrank_attention` with ``rank=64``."""
    return AttentionResult(_run(spec, DEFAULT_RANK, None, None), None)
