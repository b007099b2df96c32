"""Ulysses context parallelism: all-to-all from sequence shards to head shards and back.

DeepSpeed-Ulysses (Jacobs et al., 2023): each rank sends rank ``j`` its sequence shard of the
``j``-th group of ``H/P`` heads, so that afterwards every rank holds the whole sequence for
``H/P`` heads. Attention then runs locally (the chunked kernel, ``O(N)`` memory) and a second
all-to-all returns the output to sequence shards. Messages per rank are ``O(N/P · H · D)``, and
the number of heads must be divisible by the number of ranks.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ..functional.chunked import _ChunkedAttention
from ._comm import Comm
from .layout import segments

if TYPE_CHECKING:
    from .ring import CallConfig

__all__ = ["ulysses_attention"]


class _AllToAll(torch.autograd.Function):
    """``x (P, ...)`` -> ``y (P, ...)`` with ``y[i]`` = rank ``i``'s ``x[rank]``; the backward
    pass is the same exchange of the gradients."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, comm: Comm) -> Tensor:
        ctx.comm = comm
        with comm.guard("all-to-all"):
            return comm.all_to_all(x)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        with ctx.comm.guard("all-to-all backward"):
            return ctx.comm.all_to_all(grad.contiguous()), None


def _to_heads(x: Tensor, comm: Comm, order: Tensor) -> Tensor:
    """``(B, Hx, n, D)`` sequence shard -> ``(B, Hx/P, N, D)`` head shard, global order."""
    b, hx, n, d = x.shape
    p = comm.world
    parts = x.reshape(b, p, hx // p, n, d).transpose(0, 1)  # (P, B, Hx/P, n, D)
    mine = _AllToAll.apply(parts, comm)  # (P_src, B, Hx/P, n, D)
    full = mine.permute(1, 2, 0, 3, 4).reshape(b, hx // p, p * n, d)  # rank order
    return full.index_select(2, order)


def _to_sequence(y: Tensor, comm: Comm, order: Tensor) -> Tensor:
    """Inverse of :func:`_to_heads`: ``(B, H/P, N, D)`` -> ``(B, H, n, D)``."""
    b, hp, n_total, d = y.shape
    p = comm.world
    n = n_total // p
    ranked = torch.empty_like(y).index_copy(2, order, y)  # back to rank order, differentiably
    parts = ranked.view(b, hp, p, n, d).permute(2, 0, 1, 3, 4)  # (P_dst, B, H/P, n, D)
    mine = _AllToAll.apply(parts, comm)  # (P_src heads, B, H/P, n, D)
    return mine.transpose(0, 1).reshape(b, p * hp, n, d)


def _rank_order(n: int, layout: str, world: int, device: torch.device) -> Tensor:
    """For each global position, its index in the rank-ordered concatenation of shards."""
    order = torch.empty(n * world, dtype=torch.long, device=device)
    for rank in range(world):
        for start, local_start, length in segments(n, layout, world, rank):
            offset = rank * n + local_start
            order[start : start + length] = torch.arange(offset, offset + length, device=device)
    return order


def ulysses_attention(
    cfg: CallConfig,
    comm: Comm,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None,
    slopes: Tensor | None,
) -> Tensor:
    """Context-parallel attention by head resharding: this rank's shards ``q (B, H, N/P, Dk)``,
    ``k``/``v``, ``mask (B, N/P)`` and the ALiBi ``slopes (H,)``, in the work dtype, of a call
    validated into ``cfg``; returns the output shard ``(B, H, N/P, Dv)``."""
    b, h, n, _ = q.shape
    hkv, p = k.shape[1], comm.world
    if hkv % p:
        # K/V heads cannot be split with their query groups: give every query head its own.
        k = k.repeat_interleave(h // hkv, dim=1)
        v = v.repeat_interleave(h // hkv, dim=1)
    order = _rank_order(n, cfg.layout, p, q.device)
    qh, kh, vh = (_to_heads(t, comm, order) for t in (q, k, v))
    allowed = None
    if mask is not None:
        with comm.guard("padding all-gather"):
            gathered = comm.all_gather(mask.to(torch.uint8))  # (P, B, n)
        allowed = gathered.permute(1, 0, 2).reshape(b, p * n).index_select(1, order).bool()
        allowed = allowed[:, None, None, :]
    my_slopes = None
    if slopes is not None:
        my_slopes = slopes.view(p, h // p)[comm.rank]
    # The call was validated as a whole; locally it is the chunked kernel over the whole
    # sequence for this rank's heads, queries and keys aligned at position 0.
    _, hq, nq, _ = qh.shape
    geo = replace(cfg.geo, h=hq, hkv=kh.shape[1], nq=nq, nk=nq, q_offset=None)
    out, _ = _ChunkedAttention.apply(qh, kh, vh, None, allowed, my_slopes, geo)
    return _to_sequence(out, comm, order)
