r"""Exact attention over blocks of keys with an online softmax: O(N·D) memory, not O(N²).

Equivalent to :mod:`multihead.functional.reference` up to rounding. Queries are taken
``block_q`` at a time and keys ``block_k`` at a time, so no temporary is larger than
``(B, H, block_q, block_k)``. Per query row the softmax is accumulated block by block with the
running maximum ``m``, normaliser ``l`` and output ``o`` of the online softmax (Milakov &
Gimelshein, 2018, Alg. 3; Rabe & Staats, 2021; Dao et al., 2022, FlashAttention, Alg. 1):

.. math::
    m' = \max(m, \max_j s_j),\quad
    l' = e^{m - m'} l + \sum_j e^{s_j - m'},\quad
    o' = e^{m - m'} o + \sum_j e^{s_j - m'} v_j,

and the output is ``o / l``. The backward pass stores no weights: it recomputes each block's
probabilities from the saved row maximum and row sum as ``P = exp(S - m) / l`` and uses
``dS = P * (dP - rowsum(dO * O))`` (Dao, 2023, FlashAttention-2, Sec. 3.1.2). FlashAttention
saves the single log-sum-exp ``L = m + log l`` instead; that is wrong when ``|m|`` is so large
that ``m + log l`` rounds to ``m`` (a Hugging Face ``finfo.min`` bias on every key of a row),
where ``exp(S - L)`` gives every key a probability of 1 and the gradient is ``Nk`` times too
large. Keeping ``m`` and ``l`` apart costs one multiply per block element.

:func:`attention_and_lse` also returns ``L`` with its gradient (``dS`` gains ``P * dL``), for
merging partial results over disjoint key sets (:func:`multihead.functional.merge_attention`).

Blocks that causality, the window or a bool mask forbid entirely are never computed, so a
sliding window costs O(N·W) here too. Grouped-query attention reads each key/value head once
for its group of ``G = H / Hkv`` query heads; nothing is repeated per head.

The registry entry ``"chunked"`` has priority 50 (``"sdpa"`` has 10), so ``backend="auto"``
does not prefer it over PyTorch's fused kernels; name it (``backend="chunked"``) for long
sequences with masks the fused kernels would need materialized, or call
:func:`chunked_attention` for ALiBi or other block sizes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ..masks import Window
from ._prepare import KernelOptions, kernel_spec
from ._spec import AttentionResult, AttentionSpec, _logit_dtype

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["attention_and_lse", "chunked_attention", "chunked_backend", "supports"]

# Large blocks keep each matmul big enough to run near peak and the Python loop short; the
# temporaries are (B, H, 256, 512) floats: 0.5 MiB per (batch, head) pair in float32.
DEFAULT_BLOCK_Q = 256
DEFAULT_BLOCK_K = 512

_NEG_INF = float("-inf")
# Any positive floor works: it only keeps divisions and logs of empty rows' zero sums finite.
_TINY = 1e-30


# --------------------------------------------------------------------------------------------
# The kernel
# --------------------------------------------------------------------------------------------

# (j0, j1, needs structure mask, needs bool mask): one key block a query block must visit.
_KeyBlock = tuple[int, int, bool, bool]


@dataclass(frozen=True)
class _Geometry:
    b: int
    h: int
    hkv: int
    nq: int
    nk: int
    dk: int
    dv: int
    causal: bool
    window: Window | None
    scale: float
    block_q: int
    block_k: int
    # Key position of query 0; None: bottom-right alignment. Context parallelism passes the
    # difference of the shards' global positions here.
    q_offset: int | None = None

    @classmethod
    def of(cls, spec: AttentionSpec, block_size: int | tuple[int, int] | None) -> _Geometry:
        """The geometry of a validated call, with blocks from :func:`_block_sizes`."""
        block_q, block_k = _block_sizes(block_size)
        # The first seven fields are AttentionSpec.shape, in its order.
        return cls(
            *spec.shape,
            causal=spec.causal,
            window=spec.window,
            scale=spec.scale,
            block_q=block_q,
            block_k=block_k,
        )

    @property
    def g(self) -> int:
        return self.h // self.hkv

    @property
    def offset(self) -> int:
        # Bottom-right alignment: query i sits at key position i + Nk - Nq.
        return self.nk - self.nq if self.q_offset is None else self.q_offset


def _slice(mask: Tensor, i0: int, i1: int, j0: int, j1: int) -> Tensor:
    """The ``(B|1, H|1, n|1, m|1)`` block of a broadcastable 4-D mask."""
    rows = slice(i0, i1) if mask.shape[2] > 1 else slice(None)
    cols = slice(j0, j1) if mask.shape[3] > 1 else slice(None)
    return mask[:, :, rows, cols]


def _grouped(mask: Tensor, geo: _Geometry) -> Tensor:
    """``(B|1, H|1, n, m)`` -> ``(B|1, Hkv|1, G|1, n, m)``, matching the grouped query layout."""
    if mask.shape[1] == 1:
        return mask.unsqueeze(2)
    return mask.unflatten(1, (geo.hkv, geo.g))


def _plan(geo: _Geometry, allowed: Tensor | None, bias: Tensor | None) -> list[list[_KeyBlock]]:
    """For each query block, the key blocks it must visit; entirely forbidden ones are left out.

    Also records whether a visited block needs the structure or the bool mask applied at all
    (a block wholly inside the causal triangle, or of real tokens only, needs neither).
    """
    left = geo.window[0] if geo.window is not None else None
    right = geo.window[1] if geo.window is not None else (0 if geo.causal else None)
    verdicts: dict[tuple[int, int, int], tuple[bool, bool] | None] = {}

    def by_masks(i0: int, i1: int, j0: int, j1: int) -> tuple[bool, bool] | None:
        # None: nothing allowed; else (visit, needs bool mask). Masks broadcast over queries
        # (key padding) give one verdict per key block, so it is cached by key block.
        key = (i0 if _varies_by_query(allowed, bias) else -1, j0, j1)
        if key not in verdicts:
            verdict: tuple[bool, bool] | None = (True, False)
            if allowed is not None:
                block = _slice(allowed, i0, i1, j0, j1)
                verdict = (True, not bool(block.all())) if bool(block.any()) else None
            if (
                verdict is not None
                and bias is not None
                and bool(torch.isneginf(_slice(bias, i0, i1, j0, j1)).all())
            ):
                verdict = None
            verdicts[key] = verdict
        return verdicts[key]

    plan: list[list[_KeyBlock]] = []
    for i0 in range(0, geo.nq, geo.block_q):
        i1 = min(i0 + geo.block_q, geo.nq)
        first, last = i0 + geo.offset, i1 - 1 + geo.offset  # key positions of the block's queries
        blocks: list[_KeyBlock] = []
        for j0 in range(0, geo.nk, geo.block_k):
            j1 = min(j0 + geo.block_k, geo.nk)
            partial = False
            if right is not None:
                if j0 > last + right:
                    break  # this and every later key block lie right of the band
                partial |= j1 - 1 > first + right
            if left is not None:
                if j1 - 1 < first - left:
                    continue
                partial |= j0 < last - left
            verdict = by_masks(i0, i1, j0, j1)
            if verdict is not None:
                blocks.append((j0, j1, partial, verdict[1]))
        plan.append(blocks)
    return plan


def _varies_by_query(allowed: Tensor | None, bias: Tensor | None) -> bool:
    return any(m is not None and m.shape[2] > 1 for m in (allowed, bias))


def _block_logits(
    geo: _Geometry,
    qi: Tensor,
    k: Tensor,
    i0: int,
    i1: int,
    block: _KeyBlock,
    allowed: Tensor | None,
    bias: Tensor | None,
    slopes: Tensor | None,
) -> Tensor:
    """Masked logits ``(B*Hkv, G*n, m)`` of query block ``[i0, i1)`` against one key block.

    ``qi`` is ``(B*Hkv, G*n, Dk)``, already multiplied by the scale; ``k`` is ``(B*Hkv, Nk, Dk)``.
    """
    j0, j1, needs_structure, needs_bool = block
    n, m = i1 - i0, j1 - j0
    s = torch.bmm(qi, k[:, j0:j1].transpose(1, 2))  # (B*Hkv, G*n, m)
    s5 = s.view(geo.b, geo.hkv, geo.g, n, m)
    if bias is not None:
        s5.add_(_grouped(_slice(bias, i0, i1, j0, j1), geo).to(s.dtype))
    if slopes is not None or needs_structure:
        q_pos = torch.arange(i0, i1, device=s.device).unsqueeze(1) + geo.offset  # (n, 1)
        k_pos = torch.arange(j0, j1, device=s.device).unsqueeze(0)  # (1, m)
        if slopes is not None:
            # ALiBi (Press et al., 2022, Sec. 3): bias -slope_h * |i - j|, computed per block
            # so no (Nq, Nk) bias exists; for causal attention this is the paper's m·(j - i).
            distance = (k_pos - q_pos).abs().to(s.dtype)  # (n, m)
            s5.addcmul_(slopes.to(s.dtype).view(1, geo.hkv, geo.g, 1, 1), distance, value=-1.0)
        if needs_structure:
            ok = torch.ones(n, m, dtype=torch.bool, device=s.device)
            if geo.causal:
                ok &= k_pos <= q_pos
            if geo.window is not None:
                ok &= (k_pos >= q_pos - geo.window[0]) & (k_pos <= q_pos + geo.window[1])
            s5.masked_fill_(~ok, _NEG_INF)
    if needs_bool:
        assert allowed is not None
        s5.masked_fill_(~_grouped(_slice(allowed, i0, i1, j0, j1), geo), _NEG_INF)
    return s


def _query_block(x: Tensor, geo: _Geometry, i0: int, i1: int, scale: float = 1.0) -> Tensor:
    """Rows ``[i0, i1)`` of a ``(B, H, N, D)`` tensor as ``(B*Hkv, G*n, D)``, times ``scale``.

    Grouped layout: the ``G`` query heads sharing a key/value head are stacked as rows of one
    matrix, so each key block is read once per group and never repeated per head.
    """
    rows = x.view(geo.b, geo.hkv, geo.g, x.shape[2], x.shape[3])[:, :, :, i0:i1]
    rows = rows * scale if scale != 1.0 else rows
    return rows.reshape(geo.b * geo.hkv, geo.g * (i1 - i0), x.shape[-1])


def _forward(
    geo: _Geometry,
    plan: list[list[_KeyBlock]],
    q: Tensor,
    k: Tensor,
    v: Tensor,
    allowed: Tensor | None,
    bias: Tensor | None,
    slopes: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Output ``(B, H, Nq, Dv)``, row maximum and row sum ``(B, Hkv, G, Nq)`` of the logits.

    The row sum is ``sum_j exp(s_j - max)``; a row with nothing to attend to has maximum
    ``-inf`` and sum 0.
    """
    b, hkv, g = geo.b, geo.hkv, geo.g
    kf = k.reshape(b * hkv, geo.nk, geo.dk)  # (B*Hkv, Nk, Dk)
    vf = v.reshape(b * hkv, geo.nk, geo.dv)  # (B*Hkv, Nk, Dv)
    out = q.new_zeros(b, hkv, g, geo.nq, geo.dv)
    row_max = q.new_full((b, hkv, g, geo.nq), _NEG_INF)
    row_sum = q.new_zeros(b, hkv, g, geo.nq)
    for i0, blocks in zip(range(0, geo.nq, geo.block_q), plan, strict=True):
        if not blocks:
            continue  # every key forbidden: zeros, as the contract asks
        i1 = min(i0 + geo.block_q, geo.nq)
        qi = _query_block(q, geo, i0, i1, geo.scale)  # (B*Hkv, G*n, Dk)
        rows = qi.shape[1]
        m = qi.new_full((b * hkv, rows, 1), _NEG_INF)
        total = qi.new_zeros(b * hkv, rows, 1)
        acc = qi.new_zeros(b * hkv, rows, geo.dv)
        for block in blocks:
            s = _block_logits(geo, qi, kf, i0, i1, block, allowed, bias, slopes)
            m_new = torch.maximum(m, s.amax(dim=-1, keepdim=True))
            # A row with nothing allowed yet keeps m = -inf; shifting by 0 instead keeps
            # exp() at exactly 0 rather than NaN from (-inf) - (-inf).
            shift = m_new.masked_fill(torch.isneginf(m_new), 0.0)
            p = s.sub_(shift).exp_()
            rescale = (m - shift).exp_()
            total.mul_(rescale).add_(p.sum(dim=-1, keepdim=True))
            acc.mul_(rescale).baddbmm_(p, vf[:, block[0] : block[1]])
            m = m_new
        out[:, :, :, i0:i1] = (acc / total.clamp_min(_TINY)).view(b, hkv, g, i1 - i0, geo.dv)
        row_max[:, :, :, i0:i1] = m.view(b, hkv, g, i1 - i0)
        row_sum[:, :, :, i0:i1] = total.view(b, hkv, g, i1 - i0)
    return out.view(b, geo.h, geo.nq, geo.dv), row_max, row_sum


def _probability_shift(row_max: Tensor, row_sum: Tensor) -> tuple[Tensor, Tensor]:
    """``(shift, inv_sum)`` with ``P = exp(S - shift) * inv_sum`` for every row.

    Empty rows get ``shift = +inf`` and ``inv_sum = 0``, so their probabilities are exactly 0
    (and never ``inf * 0``).
    """
    alive = row_sum > 0
    shift = torch.where(alive, row_max, math.inf)
    inv_sum = torch.where(alive, 1.0 / row_sum.clamp_min(_TINY), 0.0)
    return shift, inv_sum


def _backward_stats(
    dout: Tensor, out: Tensor, row_max: Tensor, row_sum: Tensor, dlse: Tensor | None = None
) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor]]:
    """``dout`` in the work dtype of ``out`` (both ``(B, H, Nq, Dv)``), and the ``stats`` of
    :func:`_backward` from the forward's row maximum and row sum ``(B, Hkv, G, Nq)``, with
    ``dlse`` ``(B, H, Nq)`` the gradient of the log-sum-exp where it is an output."""
    dout = dout.to(out.dtype).contiguous()
    delta = (dout * out).sum(dim=-1)  # rowsum(dO * O), FlashAttention-2; (B, H, Nq)
    if dlse is not None:
        delta = delta - dlse.to(out.dtype)
    shift, inv_sum = _probability_shift(row_max, row_sum)
    return dout, (shift, inv_sum, delta.view_as(row_max))


def _log_sum_exp(row_max: Tensor, row_sum: Tensor) -> Tensor:
    """``m + log l`` per row, ``-inf`` on empty rows."""
    return torch.where(row_sum > 0, row_max + torch.log(row_sum.clamp_min(_TINY)), _NEG_INF)


def _backward(
    geo: _Geometry,
    plan: list[list[_KeyBlock]],
    q: Tensor,
    k: Tensor,
    v: Tensor,
    dout: Tensor,
    stats: tuple[Tensor, Tensor, Tensor],
    allowed: Tensor | None,
    bias: Tensor | None,
    slopes: Tensor | None,
    bias_grad: bool,
    into: tuple[Tensor, Tensor, Tensor] | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """Gradients for q, k, v (work dtype) and the float mask (``None`` unless ``bias_grad``).

    ``into``: ``(dq (B, H, Nq, Dk), dk (B, Hkv, Nk, Dk), dv (B, Hkv, Nk, Dv))``, contiguous
    buffers to add the gradients to (context parallelism accumulates blocks without copies).

    ``stats`` is ``(shift, inv_sum, delta)``, each ``(B, Hkv, G, Nq)``: the first two from
    :func:`_probability_shift`, ``delta = rowsum(dO * O) - dL`` (FlashAttention-2, Sec. 3.1.2,
    plus the log-sum-exp's own gradient ``dL``).
    """
    b, hkv, g = geo.b, geo.hkv, geo.g
    kf = k.reshape(b * hkv, geo.nk, geo.dk)  # (B*Hkv, Nk, Dk)
    vf = v.reshape(b * hkv, geo.nk, geo.dv)
    shift, inv_sum, delta = stats
    if into is None:
        into = (
            q.new_zeros(b, geo.h, geo.nq, geo.dk),
            k.new_zeros(b, hkv, geo.nk, geo.dk),
            v.new_zeros(b, hkv, geo.nk, geo.dv),
        )
    dq = into[0].view(b, hkv, g, geo.nq, geo.dk)
    dk = into[1].view(b * hkv, geo.nk, geo.dk)
    dv = into[2].view(b * hkv, geo.nk, geo.dv)
    dbias = None
    if bias_grad:
        assert bias is not None
        dbias = torch.zeros(bias.shape, dtype=q.dtype, device=q.device)
    for i0, blocks in zip(range(0, geo.nq, geo.block_q), plan, strict=True):
        if not blocks:
            continue
        i1 = min(i0 + geo.block_q, geo.nq)
        n = i1 - i0
        qi = _query_block(q, geo, i0, i1, geo.scale)  # (B*Hkv, G*n, Dk)
        doi = _query_block(dout, geo, i0, i1)  # (B*Hkv, G*n, Dv)
        shift_i = shift[:, :, :, i0:i1].reshape(b * hkv, g * n, 1)
        inv_sum_i = inv_sum[:, :, :, i0:i1].reshape(b * hkv, g * n, 1)
        delta_i = delta[:, :, :, i0:i1].reshape(b * hkv, g * n, 1)
        dqi = torch.zeros_like(qi)
        for block in blocks:
            j0, j1 = block[0], block[1]
            s = _block_logits(geo, qi, kf, i0, i1, block, allowed, bias, slopes)
            p = s.sub_(shift_i).exp_().mul_(inv_sum_i)  # exact probabilities, 0 on empty rows
            dv[:, j0:j1].baddbmm_(p.transpose(1, 2), doi)
            ds = torch.bmm(doi, vf[:, j0:j1].transpose(1, 2)).sub_(delta_i).mul_(p)
            dqi.baddbmm_(ds, kf[:, j0:j1])
            dk[:, j0:j1].baddbmm_(ds.transpose(1, 2), qi)
            if dbias is not None:
                _accumulate_bias_grad(dbias, ds.view(b, geo.h, n, j1 - j0), i0, i1, j0, j1)
        dq[:, :, :, i0:i1].add_(dqi.view(b, hkv, g, n, geo.dk), alpha=geo.scale)
    return into[0], into[1], into[2], dbias


def _accumulate_bias_grad(dbias: Tensor, ds: Tensor, i0: int, i1: int, j0: int, j1: int) -> None:
    """Add ``dS`` ``(B, H, n, m)`` into the gradient of a broadcast additive mask."""
    summed = [axis for axis in range(4) if dbias.shape[axis] == 1 and ds.shape[axis] != 1]
    if summed:
        ds = ds.sum(dim=summed, keepdim=True)
    _slice(dbias, i0, i1, j0, j1).add_(ds)


class _ChunkedAttention(torch.autograd.Function):
    """Online-softmax attention whose backward recomputes blocks instead of storing weights.

    Returns the output and the log-sum-exp ``(B, H, Nq)``; both are differentiable.
    """

    @staticmethod
    def forward(
        ctx: Any,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        bias: Tensor | None,
        allowed: Tensor | None,
        slopes: Tensor | None,
        geo: _Geometry,
    ) -> tuple[Tensor, Tensor]:
        work = _logit_dtype(q.dtype)  # float32 softmax for float16/bfloat16 inputs
        wq, wk, wv = (t.to(work).contiguous() for t in (q, k, v))
        plan = _plan(geo, allowed, bias)
        out, row_max, row_sum = _forward(geo, plan, wq, wk, wv, allowed, bias, slopes)
        ctx.geo, ctx.plan = geo, plan
        ctx.save_for_backward(q, k, v, bias, allowed, slopes, out, row_max, row_sum)
        lse = _log_sum_exp(row_max, row_sum).view(geo.b, geo.h, geo.nq)
        return out.to(q.dtype), lse

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, dout: Tensor, dlse: Tensor) -> tuple[Tensor | None, ...]:
        q, k, v, bias, allowed, slopes, out, row_max, row_sum = ctx.saved_tensors
        geo: _Geometry = ctx.geo
        wq, wk, wv = (t.to(out.dtype).contiguous() for t in (q, k, v))
        dout, stats = _backward_stats(dout, out, row_max, row_sum, dlse)
        bias_grad = bias is not None and ctx.needs_input_grad[3]
        dq, dk, dv, dbias = _backward(
            geo, ctx.plan, wq, wk, wv, dout, stats, allowed, bias, slopes, bias_grad
        )
        return (
            dq.to(q.dtype),
            dk.to(k.dtype),
            dv.to(v.dtype),
            dbias.to(bias.dtype) if dbias is not None else None,
            None,
            None,
            None,
        )


def _block_sizes(block_size: int | tuple[int, int] | None) -> tuple[int, int]:
    if block_size is None:
        return DEFAULT_BLOCK_Q, DEFAULT_BLOCK_K
    sizes = (block_size, block_size) if isinstance(block_size, int) else tuple(block_size)
    if len(sizes) != 2 or not all(
        isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in sizes
    ):
        raise ValueError(
            f"block_size must be a positive int or a (block_q, block_k) pair of them, "
            f"got {block_size!r}"
        )
    return sizes[0], sizes[1]


def _run(spec: AttentionSpec, block_size: int | tuple[int, int] | None) -> tuple[Tensor, Tensor]:
    """``(output (B, H, Nq, Dv), lse (B, H, Nq))`` of a validated call."""
    slopes = spec.alibi_slopes
    if slopes is not None:
        slopes = slopes.to(_logit_dtype(spec.query.dtype))
    mask = spec.mask
    allowed = mask if mask is not None and mask.dtype == torch.bool else None
    bias = mask if mask is not None and mask.dtype != torch.bool else None
    geo = _Geometry.of(spec, block_size)
    out, lse = _ChunkedAttention.apply(spec.query, spec.key, spec.value, bias, allowed, slopes, geo)
    return out, lse


def chunked_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    *,
    block_size: int | tuple[int, int] | None = None,
    **options: Unpack[KernelOptions],
) -> Tensor:
    """Exact softmax attention in O(N·D) memory, with an optional ALiBi bias.

    Equivalent to :func:`multihead.functional.attention` with the same arguments, to rounding.

    Args:
        query, key, value: as in :func:`~multihead.functional.attention`.
        block_size: keys per block, or ``(block_q, block_k)``; default
            ``(256, 512)``. Temporary memory is ``B·H·block_q·block_k`` floats.
        options: ``mask`` (a float mask may require grad) and the keyword options of
            ``attention`` (:class:`KernelOptions`), ALiBi included: ``alibi_slopes`` adds
            ``-slope_h * |p_i - j|`` with ``p_i`` the query's key position (the paper's
            ``m·(j - i)`` under ``causal``, and its symmetric extension otherwise).
            ``need_weights=True`` and ``dropout_p > 0`` raise ``ValueError``.

    Returns:
        ``(B, H, Nq, Dv)``; rows with no key to attend to are zeros (with zero gradients).

    Example:
        >>> q = torch.randn(1, 4, 100, 16); kv = torch.randn(1, 2, 100, 16)
        >>> from multihead.positional import alibi_slopes
        >>> out = chunked_attention(q, kv, kv, causal=True, alibi_slopes=alibi_slopes(4),
        ...                         block_size=32)
        >>> out.shape
        torch.Size([1, 4, 100, 16])
    """
    spec = kernel_spec(supports, query, key, value, alibi=True, **options)
    return _run(spec, block_size)[0]


def supports(spec: AttentionSpec) -> str | None:
    """``None`` if the chunked kernel can run ``spec``, else the reason it cannot."""
    if spec.need_weights:
        return "chunked attention never forms the (Nq, Nk) weights (need_weights=True)"
    if spec.dropout_p > 0:
        return "chunked attention has no dropout on the probabilities (dropout_p > 0)"
    return None


def chunked_backend(spec: AttentionSpec) -> AttentionResult:
    """Registry entry: :func:`chunked_attention` on a validated spec, default blocks."""
    return AttentionResult(_run(spec, None)[0], None)


def attention_and_lse(spec: AttentionSpec) -> tuple[Tensor, Tensor]:
    """Output ``(B, H, Nq, Dv)`` and log-sum-exp ``(B, H, Nq)`` of a validated spec.

    The log-sum-exp is in the logit dtype (float32 for half inputs), ``-inf`` on rows with no
    key to attend to, and differentiable. ``dropout_p`` and ``need_weights`` are ignored.
    """
    return _run(spec, None)
