r"""Sliding-window attention in O(N·W) time and memory, exact for its window.

Equivalent to :mod:`multihead.functional.reference` with ``window`` set: each query at key
position ``p`` attends to keys ``[p - left, p + right]`` (``right = 0`` under ``causal``), as in
Longformer's local attention (Beltagy et al., 2020, Sec. 3.1) and Mistral's sliding window.

Queries are cut into blocks of ``block`` rows. Every query in block ``b`` can only see keys in
one contiguous span of ``block + left + right`` positions, so all blocks are computed at once
as a batched matmul of each query block against its own key span: keys are padded and cut
into overlapping spans with ``Tensor.unfold`` (a strided view; no ``(Nq, Nk)`` tensor
exists). Work and memory are ``Nq · (block + left + right)`` instead of ``Nq · Nk``; the
few positions of each span outside a query's band are masked like any other forbidden key.
Autograd keeps the ``(Nq, block + left + right)`` probabilities; where that is too much for
training, ``"chunked"`` with the same window recomputes them instead (O(N·D) memory).

Registered as ``"local"`` (exact, priority 40). It needs ``window``: without one every key is
in range and the span is the whole sequence; ``supports`` says so and auto passes it over.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from ..masks import Window
from ._prepare import KernelOptions, kernel_spec
from ._spec import AttentionResult, AttentionSpec, _logit_dtype

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["local_attention", "local_backend", "supports"]


def default_block(window: Window) -> int:
    """Query rows per block for a ``(left, right)`` window.

    A span costs ``block + left + right`` logits per query, of which ``left + right + 1`` are
    needed, while smaller blocks mean smaller matmuls and more overlap between the key spans;
    a quarter of the window (at least 32, at most 256) kept both costs low when measured.
    """
    return max(32, min(256, (window[0] + window[1]) // 4))


def _shifted(x: Tensor, start: int, length: int) -> Tensor:
    """Rows ``[start, start + length)`` of ``x`` along dim 2, zero where out of range."""
    n = x.shape[2]
    lo, hi = max(start, 0), min(start + length, n)
    front = min(max(-start, 0), length)
    real = max(hi - lo, 0)
    piece = x[:, :, lo : lo + real]
    return F.pad(piece, (0, 0, front, length - front - real))


def _run(spec: AttentionSpec, block: int | None) -> Tensor:
    b, h, hkv, nq, nk, dk, dv = spec.shape
    g = h // hkv
    assert spec.window is not None
    if b == 0 or h == 0 or nq == 0 or nk == 0:
        # Nothing to compute; the block views below cannot be formed from an empty tensor.
        # The sums over empty slices are exact zeros that keep the result on the autograd
        # graph, so backward() works as it does on the other backends.
        tie = sum(t.reshape(-1)[:0].sum() for t in (spec.query, spec.key, spec.value))
        return spec.query.new_zeros(b, h, nq, dv) + tie
    offset = nk - nq  # bottom-right alignment: query i sits at key position i + offset
    # Keys farther away than any that exist change nothing; clamping keeps the spans short.
    left = min(spec.window[0], nk - 1)
    right = min(spec.window[1], nq - 1)
    block = min(block or default_block((left, right)), nq)
    span = block + left + right
    # Each head gets whole blocks of key rows, enough that the spans of its real query blocks
    # never run past them; the extra blocks hold padding queries whose rows are dropped.
    n_blocks = math.ceil(nq / block) + math.ceil((left + right) / block)
    rows = n_blocks * block
    start = offset - left  # key position of the first column of block 0's span
    work = _logit_dtype(spec.query.dtype)

    # Queries, grouped: the G heads sharing a key head are rows of one matrix per block.
    q = F.pad(spec.query.to(work).view(b, hkv, g, nq, dk), (0, 0, 0, rows - nq))
    q = q.view(b, hkv, g, n_blocks, block, dk).permute(0, 1, 3, 2, 4, 5)
    q = q.reshape(b * hkv * n_blocks, g * block, dk) * spec.scale  # (B*Hkv*nb, G*block, Dk)

    def spans(x: Tensor) -> Tensor:
        # All heads' key rows back to back, then left + right zero rows so the last span fits.
        # unfold makes the overlapping spans a strided view (no copy); the batched matmul
        # reads it in place. The spans of a head's padding blocks reach into the next head's
        # rows: those columns are past Nk, masked below.
        flat = _shifted(x.to(work), start, rows).reshape(b * hkv * rows, x.shape[-1])
        flat = F.pad(flat, (0, 0, 0, left + right))
        return flat.unfold(0, span, block)  # (B*Hkv*nb, D, span)

    logits = torch.bmm(q, spans(spec.key))  # (B*Hkv*nb, G*block, span)
    grid = logits.view(b, hkv, n_blocks, g, block, span)

    device = logits.device
    row = torch.arange(block, device=device).unsqueeze(1)  # (block, 1)
    col = torch.arange(span, device=device).unsqueeze(0)  # (1, span)
    # Row r of a block and column c of its span are c - left - r positions apart.
    allowed = (col >= row) & (col <= row + left + right)  # (block, span)
    key_pos = start + torch.arange(n_blocks, device=device).unsqueeze(1) * block + col
    allowed = (allowed & ((key_pos >= 0) & (key_pos < nk)).unsqueeze(1)).unsqueeze(1)
    # allowed: (nb, 1, block, span), broadcasting against grid's (B, Hkv, nb, G, block, span)
    reachable = allowed  # allowed and not -inf: decides which rows are empty
    if spec.mask is not None:
        band = _band(spec.mask, key_pos, block, nq, nk, h, hkv)
        if band.dtype == torch.bool:
            allowed = reachable = allowed & band
        else:
            grid.add_(band.to(work))
            reachable = allowed & ~torch.isneginf(band)
    grid.masked_fill_(~allowed, float("-inf"))
    # A row with nothing to attend to would make softmax return NaN, which 0 * NaN would carry
    # into the key gradients; such rows get finite logits here and zero outputs below.
    empty = ~reachable.any(dim=-1, keepdim=True)
    any_empty = bool(empty.any())
    if any_empty:
        grid.masked_fill_(empty, 0.0)
    probs = torch.softmax(logits, dim=-1)
    if spec.dropout_p > 0:
        probs = F.dropout(probs, spec.dropout_p)
    out = torch.bmm(probs, spans(spec.value).transpose(1, 2))  # (B*Hkv*nb, G*block, Dv)
    out = out.view(b, hkv, n_blocks, g, block, dv)
    if any_empty:
        out = out.masked_fill(empty, 0.0)
    out = out.permute(0, 1, 3, 2, 4, 5).reshape(b, h, rows, dv)[:, :, :nq]
    return out.to(spec.query.dtype)


def _band(mask: Tensor, key_pos: Tensor, block: int, nq: int, nk: int, h: int, hkv: int) -> Tensor:
    """Each block's ``(block, span)`` band of a ``(B|1, H|1, Nq|1, Nk|1)`` mask, laid out as
    ``(B|1, Hkv|1, nb, G|1, block|1, span|1)``; axes of size 1 stay size 1."""
    n_blocks = key_pos.shape[0]
    one = key_pos.new_zeros(1, 1, 1)
    rows = torch.arange(n_blocks * block, device=key_pos.device).view(n_blocks, block, 1)
    rows = rows.clamp(max=nq - 1) if mask.shape[2] > 1 else one
    cols = key_pos.clamp(0, nk - 1).unsqueeze(1) if mask.shape[3] > 1 else one
    band = mask[:, :, rows, cols]  # (B|1, H|1, nb|1, block|1, span|1)
    band = band.unsqueeze(2) if band.shape[1] == 1 else band.unflatten(1, (hkv, h // hkv))
    return band.permute(0, 1, 3, 2, 4, 5)


def local_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    *,
    block_size: int | None = None,
    **options: Unpack[KernelOptions],
) -> Tensor:
    """Sliding-window attention, exact for the window, in O(N·W) time and memory.

    Equivalent to ``attention(query, key, value, **options)``.

    Args:
        query, key, value: as in :func:`~multihead.functional.attention`.
        block_size: query rows per block (default: :func:`default_block`).
        options: ``mask`` and the keyword options of ``attention`` (:class:`KernelOptions`);
            ``window`` (``w``: keys ``[p - w, p + w]``, or ``(left, right)``) is required, and
            only the band of ``mask`` inside it is read. ``need_weights=True`` and
            ``alibi_slopes`` raise ``ValueError``.

    Returns:
        ``(B, H, Nq, Dv)``; rows with no key in reach are zeros.

    Example:
        >>> q = torch.randn(1, 4, 64, 16); kv = torch.randn(1, 1, 64, 16)
        >>> local_attention(q, kv, kv, window=8, causal=True).shape
        torch.Size([1, 4, 64, 16])
    """
    if options.get("window") is None:
        raise ValueError("window is required for local attention, got None")
    if block_size is not None and (
        isinstance(block_size, bool) or not isinstance(block_size, int) or block_size <= 0
    ):
        raise ValueError(f"block_size must be a positive int or None, got {block_size!r}")
    spec = kernel_spec(supports, query, key, value, alibi=False, **options)
    return _run(spec, block_size)


def supports(spec: AttentionSpec) -> str | None:
    """``None`` if the local kernel can run ``spec``, else the reason it cannot."""
    if spec.window is None:
        return "local attention needs a sliding window (window=...); without one it is dense"
    if spec.need_weights:
        return "local attention never forms the (Nq, Nk) weights (need_weights=True)"
    return None


def local_backend(spec: AttentionSpec) -> AttentionResult:
    """Registry entry: :func:`local_attention` on a validated spec."""
    return AttentionResult(_run(spec, None), None)
