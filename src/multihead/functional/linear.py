r"""Kernelized linear attention (Katharopoulos et al., 2020): O(N) time and memory.

Softmax similarity ``exp(q·k)`` is replaced by ``phi(q)·phi(k)`` with the positive feature map
``phi(x) = elu(x) + 1`` (Eq. 7), so the sums over keys factor out of each query (Eq. 4–6):

.. math::
    o_i = \frac{\phi(q_i)^\top \sum_j \phi(k_j) v_j^\top}{\phi(q_i)^\top \sum_j \phi(k_j)}.

Non-causal: the ``(Dk, Dv)`` state ``sum_j phi(k_j) v_j^T`` and normaliser ``sum_j phi(k_j)``
are computed once (Eq. 6). Causal (Sec. 3.3): positions are cut into chunks of ``C``; inside a
chunk the masked quadratic form ``(phi(Q) phi(K)^T ∘ tril) V`` is used, and across chunks each
query adds the state of all earlier chunks (prefix sums of per-chunk states). Memory is
``N·C`` for the chunk products plus ``(N / C)·Dk·Dv`` for the states, i.e. O(N·D) for
``C ≈ D``; no per-position ``(N, Dk, Dv)`` cumulative tensor exists.

This is **not** softmax attention: registered as ``"linear"`` with ``exact=False``, so auto never
picks it. ``scale`` has no effect (``phi`` is not a function of scaled logits; rescaling ``q``
would only change the approximation). Only key padding masks (bool, ``(B|1, 1|H, 1, Nk)``) are
supported: padded keys get zero features and drop out of both sums.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from ._prepare import KernelOptions, kernel_spec
from ._spec import AttentionResult, AttentionSpec, _logit_dtype

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["linear_attention", "linear_backend", "supports"]

# Chunk length for the causal form; about Dk keeps the N·C chunk products and the
# (N/C)·Dk·Dv states both near N·D.
DEFAULT_CHUNK = 64


def feature_map(x: Tensor) -> Tensor:
    """``elu(x) + 1`` (Katharopoulos et al., 2020, Eq. 7): positive, so normalisers are > 0."""
    return F.elu(x) + 1.0


def padding_reason(mask: Tensor | None, kernel: str) -> str | None:
    """Why ``kernel`` cannot use ``mask``, if it is anything but a bool key padding mask."""
    if mask is None:
        return None
    # "mask: " names the argument when a kernel's own entry point raises this.
    if mask.dtype != torch.bool:
        return (
            f"mask: {kernel} attention takes no float (additive) mask: it forms no logits to add to; "
            "only a bool key padding mask (B|1, 1|H, 1, Nk) is supported"
        )
    if mask.shape[2] != 1:
        return (
            f"mask: {kernel} attention supports only key padding masks (B|1, 1|H, 1, Nk), got a bool "
            f"mask of shape {tuple(mask.shape)} that varies by query"
        )
    return None


def key_weights(
    mask: Tensor | None, h: int, hkv: int, nk: int, dtype: torch.dtype
) -> Tensor | None:
    """A key padding mask ``(B|1, H|1, 1, Nk|1)`` as 0/1 weights ``(B|1, Hkv|1, G|1, Nk, 1)``."""
    if mask is None:
        return None
    keep = mask[:, :, 0].expand(mask.shape[0], mask.shape[1], nk).to(dtype)  # (B|1, H|1, Nk)
    keep = keep.unsqueeze(2) if keep.shape[1] == 1 else keep.unflatten(1, (hkv, h // hkv))
    return keep.unsqueeze(-1)


def _run(spec: AttentionSpec, chunk: int) -> Tensor:
    b, h, hkv, nq, nk, dk, dv = spec.shape
    g = h // hkv
    work = _logit_dtype(spec.query.dtype)
    if nk == 0:
        return spec.query.new_zeros(b, h, nq, dv)
    phi_q = feature_map(spec.query.to(work)).view(b, hkv, g, nq, dk)  # (B, Hkv, G, Nq, Dk)
    phi_k = feature_map(spec.key.to(work)).unsqueeze(2)  # (B, Hkv, 1, Nk, Dk)
    weights = key_weights(spec.mask, h, hkv, nk, work)
    if weights is not None:
        phi_k = phi_k * weights  # padded keys leave both sums; (B, Hkv, G|1, Nk, Dk)
    # A column of ones appended to V makes the same products carry the normaliser
    # sum_j phi(q_i)·phi(k_j) (the denominator of Eq. 6) next to the numerator.
    value = spec.value.to(work).unsqueeze(2)  # (B, Hkv, 1, Nk, Dv)
    value = torch.cat([value, torch.ones_like(value[..., :1])], dim=-1)  # (B, Hkv, 1, Nk, Dv+1)

    if spec.causal:
        both = _causal(phi_q, phi_k, value, nq, nk, chunk)
    else:
        # Eq. 5: the (Dk, Dv+1) state sum_j phi(k_j) [v_j, 1]^T, shared by every query.
        both = phi_q @ (phi_k.transpose(-1, -2) @ value)  # (B, Hkv, G, Nq, Dv+1)
    num, den = both[..., :dv], both[..., dv:]
    # den == 0 only where every key was padded away (num is 0 there too): zeros, not NaN.
    out = num / torch.where(den > 0, den, torch.ones_like(den))
    return out.reshape(b, h, nq, dv).to(spec.query.dtype)


def _causal(phi_q: Tensor, phi_k: Tensor, value: Tensor, nq: int, nk: int, chunk: int) -> Tensor:
    """``sum_{j <= p_i} (phi(q_i)·phi(k_j)) value_j`` as ``(B, Hkv, G, Nq, D)``.

    Bottom-right alignment: query ``i`` sees keys ``j <= i + Nk - Nq``. Queries are laid out at
    their key positions (``Nk`` slots); slots without a query are computed and dropped, and
    queries before key 0 (when ``Nq > Nk``) see nothing.
    """
    offset = nk - nq
    n_chunks = math.ceil(nk / chunk)
    tail = n_chunks * chunk - nk
    # Zero rows are padded onto features, never onto raw keys: phi(0) = 1 would count them.
    q_at = phi_q[:, :, :, max(-offset, 0) :]  # queries at key positions max(offset, 0)..Nk-1
    if offset > 0 or tail:
        q_at = F.pad(q_at, (0, 0, max(offset, 0), tail))
    k_at = F.pad(phi_k, (0, 0, 0, tail)) if tail else phi_k
    v_at = F.pad(value, (0, 0, 0, tail)) if tail else value
    qc = q_at.unflatten(3, (n_chunks, chunk))  # (B, Hkv, G, nc, C, Dk)
    kc = k_at.unflatten(3, (n_chunks, chunk))  # (B, Hkv, G|1, nc, C, Dk)
    vc = v_at.unflatten(3, (n_chunks, chunk))  # (B, Hkv, 1, nc, C, D)

    # Within a chunk: the quadratic form under a lower-triangular mask (Eq. 4 restricted to
    # j <= i, as in Sec. 3.3).
    tril = torch.ones(chunk, chunk, dtype=torch.bool, device=qc.device).tril()
    scores = (qc @ kc.transpose(-1, -2)).masked_fill_(~tril, 0.0)  # (B, Hkv, G, nc, C, C)
    out = scores @ vc  # (B, Hkv, G, nc, C, D)
    del scores
    if n_chunks > 1:
        # Across chunks: the running state S = sum_{j < chunk c} phi(k_j) value_j^T (Sec. 3.3),
        # one (Dk, D) matrix per chunk (prefix sums of per-chunk states), so memory is
        # (N / C)·Dk·D, not N·Dk·D.
        states = (kc.transpose(-1, -2) @ vc).cumsum(dim=3)  # (B, Hkv, G|1, nc, Dk, D)
        out[:, :, :, 1:] += qc[:, :, :, 1:] @ states[:, :, :, :-1]
    out = out.flatten(3, 4)[:, :, :, max(offset, 0) : nk]  # (B, Hkv, G, min(Nq, Nk), D)
    if offset < 0:  # queries before the first key: nothing to attend to
        out = F.pad(out, (0, 0, -offset, 0))
    return out


def linear_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    *,
    chunk_size: int = DEFAULT_CHUNK,
    **options: Unpack[KernelOptions],
) -> Tensor:
    """Linear attention with ``phi = elu + 1`` (Katharopoulos et al., 2020); an approximation.

    Args:
        query, key, value: as in :func:`~multihead.functional.attention`.
        chunk_size: positions per chunk of the causal form (see module docstring).
        options: the options of ``attention`` that apply (:class:`KernelOptions`): ``mask``,
            ``None`` or a bool key padding mask ``(B|1, 1|H, 1, Nk)`` (``True`` = real key);
            ``causal``, bottom-right aligned (query ``i`` sees keys ``j <= i + Nk - Nq``).
            The others, ``scale`` included (``phi(q) . phi(k)`` has no logit scale), raise
            ``ValueError``.

    Returns:
        ``(B, H, Nq, Dv)``; rows with no key to attend to are zeros.

    Example:
        >>> q = torch.randn(2, 4, 100, 16); kv = torch.randn(2, 2, 100, 16)
        >>> linear_attention(q, kv, kv, causal=True).shape
        torch.Size([2, 4, 100, 16])
    """
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size <= 0:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    if options.get("scale") is not None:
        raise ValueError(
            f"scale: linear attention has no logit scale to set (phi(q) . phi(k) ignores it); "
            f"pass None, got {options['scale']!r}"
        )
    spec = kernel_spec(supports, query, key, value, alibi=False, **options)
    return _run(spec, chunk_size)


def supports(spec: AttentionSpec) -> str | None:
    """``None`` if linear attention can run ``spec``, else the reason it cannot."""
    if spec.need_weights:
        return "linear attention never forms the (Nq, Nk) weights (need_weights=True)"
    if spec.window is not None:
        return "linear attention has no sliding window (window is set)"
    if spec.dropout_p > 0:
        return "linear attention has no attention probabilities to drop out (dropout_p > 0)"
    return padding_reason(spec.mask, "linear")


def linear_backend(spec: AttentionSpec) -> AttentionResult:
    """Registry entry: :func:`linear_attention` on a validated spec."""
    return AttentionResult(_run(spec, DEFAULT_CHUNK), None)
