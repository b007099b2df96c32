r"""Attention that also returns its log-sum-exp, and the exact merge of partial results.

Attention over a key set :math:`K = K_1 \cup K_2` (disjoint) is a weighted mean of attention
over each part. With :math:`L_i = \log \sum_{j \in K_i} e^{s_j}` (the row's log-sum-exp over
part :math:`i`) and :math:`L = \log(e^{L_1} + e^{L_2})`,

.. math::
    O = e^{L_1 - L} O_1 + e^{L_2 - L} O_2,

which is how blockwise kernels combine key blocks (Milakov & Gimelshein, 2018; Rabe & Staats,
2021) and how ring attention combines the blocks that visit a device (Liu et al., 2023).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from . import chunked
from ._prepare import AttentionOptions, make_spec
from ._spec import AttentionSpec, _logit_dtype

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["AttentionWithLse", "attention_with_lse", "merge_attention"]

_NEG_INF = float("-inf")


class AttentionWithLse(NamedTuple):
    """``output (B, H, Nq, Dv)`` and ``lse (B, H, Nq)``; ``lse`` is ``-inf`` on empty rows."""

    output: Tensor
    lse: Tensor


def attention_with_lse(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    mask: Tensor | None = None,
    *,
    backend: str = "auto",
    **options: Unpack[AttentionOptions],
) -> AttentionWithLse:
    r""":func:`~multihead.functional.attention` plus the log-sum-exp of each query row's logits.

    ``lse[b, h, i] = log sum_j exp(scale * q_i . k_j + bias_ij)`` over the keys row ``i`` may
    attend to (before dropout). Both results are differentiable: gradients through ``lse`` are
    exact (``d lse / d s_ij`` is the attention probability), so results over disjoint key sets
    can be merged with :func:`merge_attention` and trained through.

    Backends: ``"math"`` computes it in plain float math, ``"chunked"`` from its online-softmax
    statistics. PyTorch's ``scaled_dot_product_attention`` does not return the log-sum-exp
    through its public API, so ``"sdpa"`` (and ``"local"``, whose windows ``chunked`` also
    skips block by block) falls back to ``"chunked"``, or to ``"math"`` when ``dropout_p > 0``;
    ``"auto"`` does the same. Approximate backends have no exact log-sum-exp and raise
    ``ValueError``.

    Args:
        query, key, value, mask, backend: as in :func:`~multihead.functional.attention`.
        options: its keyword options (``causal``, ``window``, ``scale``, ``score``,
            ``dropout_p``, ``alibi_slopes``; see :class:`AttentionOptions`). There are no
            weights to return, so ``need_weights=True`` raises ``ValueError``.

    Returns:
        ``AttentionWithLse(output (B, H, Nq, Dv), lse (B, H, Nq))``. ``lse`` is float32 for
        float16/bfloat16/float32 inputs and float64 for float64 inputs; a query with no key to
        attend to has output 0 and ``lse = -inf``.

    Example:
        >>> q, k, v = torch.randn(1, 2, 3, 4), torch.randn(1, 2, 6, 4), torch.randn(1, 2, 6, 4)
        >>> out, lse = attention_with_lse(q, k, v, causal=True)
        >>> out.shape, lse.shape
        (torch.Size([1, 2, 3, 4]), torch.Size([1, 2, 3]))
    """
    from . import select_backend  # here: this module is imported while the package initialises

    spec = make_spec(query, key, value, mask, **options)
    if spec.need_weights:
        raise ValueError("attention_with_lse returns no weights: need_weights must be False")
    chosen, _ = select_backend(spec, backend)
    if not chosen.exact:
        raise ValueError(
            f"backend must be exact to give a log-sum-exp ('auto', 'math', 'chunked', 'sdpa', "
            f"'local'), got approximate {backend!r}"
        )
    if chosen.name == "math" or spec.dropout_p > 0:
        return AttentionWithLse(*_math_with_lse(spec))
    return AttentionWithLse(*chunked.attention_and_lse(spec))


def _math_with_lse(spec: AttentionSpec) -> tuple[Tensor, Tensor]:
    """Reference attention and its log-sum-exp, in plain float math with autograd."""
    b, h, hkv, nq, nk, _, _ = spec.shape
    dtype = _logit_dtype(spec.query.dtype)
    q = spec.query.to(dtype).unflatten(1, (hkv, h // hkv))  # (B, Hkv, G, Nq, Dk)
    k = spec.key.to(dtype).unsqueeze(2)  # (B, Hkv, 1, Nk, Dk)
    logits = ((q @ k.transpose(-1, -2)) * spec.scale).flatten(1, 2)  # (B, H, Nq, Nk)
    allowed, bias = spec.split_mask()
    if bias is not None:
        logits = logits + bias.to(dtype)
    if allowed is not None:
        logits = logits.masked_fill(~allowed, _NEG_INF)
    row_max = logits.detach().amax(dim=-1, keepdim=True)  # (B, H, Nq, 1)
    dead = torch.isneginf(row_max)
    # Shifting by the (detached) maximum and keeping the sum apart makes the gradient of lse,
    # exp(s - m) / l, right even where m + log(l) rounds to m (logits near finfo.min).
    shift = row_max.masked_fill(dead, 0.0)
    unnormalised = torch.exp(logits - shift)  # (B, H, Nq, Nk), 0 where forbidden
    row_sum = unnormalised.sum(dim=-1, keepdim=True)
    safe_sum = torch.where(dead, 1.0, row_sum)
    weights = unnormalised / safe_sum
    lse = torch.where(dead, _NEG_INF, shift + torch.log(safe_sum)).squeeze(-1)  # (B, H, Nq)
    probs = F.dropout(weights, spec.dropout_p) if spec.dropout_p > 0 else weights
    v = spec.value.to(dtype).unsqueeze(2)  # (B, Hkv, 1, Nk, Dv)
    out = probs.unflatten(1, (hkv, h // hkv)) @ v  # (B, Hkv, G, Nq, Dv)
    del b, nq, nk
    return out.flatten(1, 2).to(spec.query.dtype), lse


def merge_attention(outputs: Sequence[Tensor], lses: Sequence[Tensor]) -> AttentionWithLse:
    r"""Combine attention results over disjoint key sets into attention over their union.

    With :math:`L = \log \sum_i e^{L_i}`, the result is :math:`O = \sum_i e^{L_i - L} O_i`,
    accumulated in float32 (float64 when any input is float64). A part with ``lse = -inf``
    (no key of that part was allowed for the row) gets weight 0; a row that is empty in every
    part gets output 0 and ``lse = -inf``. Gradients are exact, including through the
    returned ``lse``, and finite on empty rows.

    Args:
        outputs: ``k >= 1`` tensors ``(B, H, Nq, Dv)`` (any leading shape ``(..., Nq, Dv)``),
            all of one shape.
        lses: ``k`` tensors ``(B, H, Nq)`` (the outputs' shape without ``Dv``), as returned by
            :func:`attention_with_lse`.

    Returns:
        ``AttentionWithLse(output, lse)``: ``output`` in the first output's dtype, ``lse`` in
        the accumulation dtype.

    Example:
        >>> q, k, v = torch.randn(1, 2, 3, 4), torch.randn(1, 2, 6, 4), torch.randn(1, 2, 6, 4)
        >>> parts = [attention_with_lse(q, k[:, :, s], v[:, :, s]) for s in (slice(0, 2), slice(2, 6))]
        >>> out, lse = merge_attention([p.output for p in parts], [p.lse for p in parts])
        >>> torch.allclose(out, attention_with_lse(q, k, v).output, atol=1e-6)
        True
    """
    _check_parts(outputs, lses)
    acc = torch.float64 if any(t.dtype == torch.float64 for t in (*outputs, *lses)) else None
    acc = acc or torch.float32
    stacked_lse = torch.stack([x.to(acc) for x in lses])  # (k, B, H, Nq)
    # The shift only keeps exp() in range; the result does not depend on it, so it is detached
    # and its gradient (analytically zero) is not computed through max's subgradient.
    shift = stacked_lse.detach().amax(dim=0)  # (B, H, Nq)
    dead = torch.isneginf(shift)
    shift = shift.masked_fill(dead, 0.0)
    scaled = torch.exp(stacked_lse - shift)  # 0 for parts with lse = -inf
    total = scaled.sum(dim=0)
    safe_total = torch.where(dead, 1.0, total)
    weights = scaled / safe_total  # (k, B, H, Nq)
    stacked_out = torch.stack([x.to(acc) for x in outputs])  # (k, B, H, Nq, Dv)
    # A part whose weight is 0 must not leak NaN/inf stored in its output (0 * inf).
    stacked_out = torch.where((weights > 0).unsqueeze(-1), stacked_out, 0.0)
    out = (weights.unsqueeze(-1) * stacked_out).sum(dim=0)
    lse = torch.where(dead, _NEG_INF, shift + torch.log(safe_total))
    return AttentionWithLse(out.to(outputs[0].dtype), lse)


def _check_parts(outputs: Sequence[Tensor], lses: Sequence[Tensor]) -> None:
    for name, parts in (("outputs", outputs), ("lses", lses)):
        if isinstance(parts, Tensor) or not isinstance(parts, Sequence):
            raise TypeError(
                f"{name} must be a list or tuple of tensors, got {type(parts).__name__}"
            )
        if not all(isinstance(t, Tensor) and t.is_floating_point() for t in parts):
            raise TypeError(f"{name} must hold floating tensors only")
    if len(outputs) == 0 or len(outputs) != len(lses):
        raise ValueError(
            f"outputs and lses must be non-empty and of equal length, got {len(outputs)} "
            f"and {len(lses)}"
        )
    shape = tuple(outputs[0].shape)
    if len(shape) < 2:
        raise ValueError(f"outputs must be (..., Nq, Dv), got shape {shape}")
    for i, (o, s) in enumerate(zip(outputs, lses, strict=True)):
        if tuple(o.shape) != shape:
            raise ValueError(
                f"outputs[{i}] must have shape {shape} like outputs[0], got {tuple(o.shape)}"
            )
        if tuple(s.shape) != shape[:-1]:
            raise ValueError(
                f"lses[{i}] must have shape {shape[:-1]} (outputs without Dv), got {tuple(s.shape)}"
            )
