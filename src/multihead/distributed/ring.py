r"""Ring and all-gather context parallelism: exact attention over key blocks held by other ranks.

Each rank keeps its queries and visits every rank's key/value block once. A block's
contribution is computed by the chunked kernel (:mod:`multihead.functional.chunked`), which
returns the block's output with its row maximum ``m`` and row sum ``l``; blocks are combined
exactly as in the online softmax (Milakov & Gimelshein, 2018):

.. math::
    m' = \max(m, m_b),\quad l' = e^{m-m'} l + e^{m_b-m'} l_b,\quad
    O' = (e^{m-m'} l\,O + e^{m_b-m'} l_b\,O_b) / l'.

``"ring"`` (Liu et al., 2023, Ring Attention) passes blocks to the next rank with
``isend``/``irecv`` while computing on the current one, so a rank holds at most two blocks.
The backward pass sends the blocks around once more, each followed by its accumulating
``dK``/``dV``, which reaches the block's owner after ``P`` hops. ``"allgather"`` gathers all
blocks at once (memory ``O(N)`` per rank) and returns ``dK``/``dV`` with a reduce-scatter.

Positions are global: a pair of query and key segments is given the key position of its first
query, so causal masks, windows and ALiBi see the whole sequence, and ``_plan`` skips key blocks
that the structure forbids (half of all pairs under a causal mask).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor

from ..functional.chunked import _backward, _backward_stats, _forward, _Geometry, _plan
from ._comm import Comm
from .layout import segments

__all__ = ["BlockwiseAttention", "CallConfig"]

_KV_TAG, _GRAD_TAG = 11, 12


@dataclass(frozen=True)
class CallConfig:
    """The static description of one context-parallel call on this rank."""

    geo: _Geometry  # shapes, structure and block sizes of this rank's shards (Nq = Nk = N/P)
    layout: str
    world: int
    rank: int
    has_mask: bool
    positional: bool  # whether positions matter (causal, window or ALiBi)

    @property
    def n(self) -> int:
        """The local sequence length ``N/P``."""
        return self.geo.nq

    def segments(self, rank: int) -> list[tuple[int, int, int]]:
        if not self.positional:
            return [(0, 0, self.n)]  # positions are irrelevant: one segment, no copies
        return segments(self.n, self.layout, self.world, rank)

    @property
    def kv_numel(self) -> int:
        return self.geo.b * self.geo.hkv * self.n * (self.geo.dk + self.geo.dv)

    def geometry(self, nq: int, nk: int, offset: int) -> _Geometry:
        """One query segment against one key segment, ``offset`` apart in global positions."""
        return replace(self.geo, nq=nq, nk=nk, q_offset=offset)


# ------------------------------------------------------------------------------------------
# Packing a block for transfer: K, V and the key padding mask in one flat buffer
# ------------------------------------------------------------------------------------------


def _pack(k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
    parts = [k.reshape(-1), v.reshape(-1)]
    if mask is not None:
        parts.append(mask.to(k.dtype).reshape(-1))  # 0/1, exact in any float dtype
    return torch.cat(parts)


def _split_kv(cfg: CallConfig, buf: Tensor) -> tuple[Tensor, Tensor]:
    """The K and V (or dK and dV) views of a packed buffer."""
    geo, n = cfg.geo, cfg.n
    nkv = geo.b * geo.hkv * n
    k = buf[: nkv * geo.dk].view(geo.b, geo.hkv, n, geo.dk)
    v = buf[nkv * geo.dk : nkv * (geo.dk + geo.dv)].view(geo.b, geo.hkv, n, geo.dv)
    return k, v


def _unpack(cfg: CallConfig, buf: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
    k, v = _split_kv(cfg, buf)
    mask = buf[cfg.kv_numel :].view(cfg.geo.b, cfg.n) > 0.5 if cfg.has_mask else None
    return k, v, mask


def _key_parts(
    cfg: CallConfig, k: Tensor, v: Tensor, mask: Tensor | None, src: int
) -> list[tuple[int, int, int, Tensor, Tensor, Tensor | None]]:
    """``(global_start, local_start, length, k, v, allowed (B, 1, 1, n) | None)`` per segment."""
    parts = []
    for start, l0, length in cfg.segments(src):
        whole = length == cfg.n
        kp = k if whole else k[:, :, l0 : l0 + length].contiguous()
        vp = v if whole else v[:, :, l0 : l0 + length].contiguous()
        allowed = None if mask is None else mask[:, None, None, l0 : l0 + length]
        parts.append((start, l0, length, kp, vp, allowed))
    return parts


class _Rows:
    """Running output, row maximum and row sum of one query segment."""

    def __init__(self, cfg: CallConfig, q: Tensor) -> None:
        geo = cfg.geo
        rows = (geo.b, geo.hkv, geo.g, q.shape[2])  # (B, Hkv, G, nq)
        self.out = q.new_zeros(*rows, geo.dv)
        self.m = q.new_full(rows, float("-inf"))
        self.total = q.new_zeros(rows)

    def merge(self, out: Tensor, m: Tensor, total: Tensor) -> None:
        m_new = torch.maximum(self.m, m)
        shift = m_new.masked_fill(torch.isneginf(m_new), 0.0)  # keeps exp() at 0, not NaN
        a = torch.exp(self.m - shift) * self.total
        b = torch.exp(m - shift) * total
        new_total = a + b
        safe = new_total.clamp_min(1e-30)
        # In place: no second (B, H, n, Dv) buffer per merge.
        self.out.mul_((a / safe).unsqueeze(-1)).addcmul_(
            out.view_as(self.out), (b / safe).unsqueeze(-1)
        )
        self.m, self.total = m_new, new_total


def _attend(
    cfg: CallConfig,
    q_parts: list[Tensor],
    rows: list[_Rows],
    kv: Tensor,
    src: int,
    slopes: Tensor | None,
) -> None:
    """Merge the attention of this rank's queries to rank ``src``'s packed block into ``rows``."""
    k, v, mask = _unpack(cfg, kv)
    keys = _key_parts(cfg, k, v, mask, src)
    for (q_start, _, nq), qp, state in zip(cfg.segments(cfg.rank), q_parts, rows, strict=True):
        for k_start, _, nk, kp, vp, allowed in keys:
            geo = cfg.geometry(nq, nk, q_start - k_start)
            plan = _plan(geo, allowed, None)
            if any(plan):
                state.merge(*_forward(geo, plan, qp, kp, vp, allowed, None, slopes))


@dataclass
class _Grads:
    """What the backward pass of every block needs, per query segment of this rank."""

    cfg: CallConfig
    q_parts: list[Tensor]
    do_parts: list[Tensor]
    stats: list[tuple[Tensor, Tensor, Tensor]]  # (shift, inv_sum, delta), see chunked._backward
    dq_parts: list[Tensor]  # accumulated here
    slopes: Tensor | None

    def block(self, kv: Tensor, src: int) -> Tensor:
        """Add the ``dQ`` of rank ``src``'s packed block; return its packed ``dK``/``dV``."""
        cfg = self.cfg
        k, v, mask = _unpack(cfg, kv)
        grad = torch.zeros_like(kv[: cfg.kv_numel])  # packed dK, dV: accumulated in place
        dk, dv = _split_kv(cfg, grad)
        keys = _key_parts(cfg, k, v, mask, src)
        for i, (q_start, _, nq) in enumerate(cfg.segments(cfg.rank)):
            for k_start, l0, nk, kp, vp, allowed in keys:
                geo = cfg.geometry(nq, nk, q_start - k_start)
                plan = _plan(geo, allowed, None)
                if not any(plan):
                    continue
                whole = nk == cfg.n  # one key segment: accumulate straight into the buffer
                into = (
                    self.dq_parts[i],
                    dk if whole else torch.zeros_like(kp),
                    dv if whole else torch.zeros_like(vp),
                )
                _backward(
                    geo,
                    plan,
                    self.q_parts[i],
                    kp,
                    vp,
                    self.do_parts[i],
                    self.stats[i],
                    allowed,
                    None,
                    self.slopes,
                    False,
                    into,
                )
                if not whole:
                    dk[:, :, l0 : l0 + nk] += into[1]
                    dv[:, :, l0 : l0 + nk] += into[2]
        return grad


def _split_rows(cfg: CallConfig, x: Tensor) -> list[Tensor]:
    """A ``(B, H, n, D)`` tensor as contiguous pieces, one per query segment."""
    return [
        x if length == cfg.n else x[:, :, l0 : l0 + length].contiguous()
        for _, l0, length in cfg.segments(cfg.rank)
    ]


# ------------------------------------------------------------------------------------------
# The autograd function
# ------------------------------------------------------------------------------------------


class BlockwiseAttention(torch.autograd.Function):
    """Ring or all-gather attention of this rank's shard ``(B, H, N/P, Dk)``, inputs already in
    the work dtype: ``BlockwiseAttention.apply(q, k, v, key_padding_mask, slopes, cfg, comm,
    method)``."""

    @staticmethod
    def forward(
        ctx: Any,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        mask: Tensor | None,
        slopes: Tensor | None,
        cfg: CallConfig,
        comm: Comm,
        method: str,
    ) -> Tensor:
        with comm.guard("forward"):
            kv = _pack(k, v, mask)
            q_parts = _split_rows(cfg, q)
            rows = [_Rows(cfg, qp) for qp in q_parts]
            for src, block in _blocks(cfg, comm, kv, method):
                _attend(cfg, q_parts, rows, block, src, slopes)
            outs = [r.out for r in rows]
            out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=3)
            out = out.view(cfg.geo.b, cfg.geo.h, cfg.n, cfg.geo.dv)
            m = torch.cat([r.m for r in rows], dim=-1)
            row_sum = torch.cat([r.total for r in rows], dim=-1)
        ctx.cfg, ctx.comm, ctx.method = cfg, comm, method
        ctx.save_for_backward(q, k, v, mask, slopes, out, m, row_sum)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, dout: Tensor) -> tuple[Tensor | None, ...]:
        q, k, v, mask, slopes, out, m, row_sum = ctx.saved_tensors
        cfg: CallConfig = ctx.cfg
        comm: Comm = ctx.comm
        with comm.guard("backward"):
            dout, (shift, inv_sum, delta) = _backward_stats(dout, out, m, row_sum)
            stats = [
                (shift[..., l0 : l0 + n], inv_sum[..., l0 : l0 + n], delta[..., l0 : l0 + n])
                for _, l0, n in cfg.segments(cfg.rank)
            ]
            q_parts = _split_rows(cfg, q)
            grads = _Grads(
                cfg=cfg,
                q_parts=q_parts,
                do_parts=_split_rows(cfg, dout),
                stats=stats,
                dq_parts=[torch.zeros_like(qp) for qp in q_parts],
                slopes=slopes,
            )
            kv = _pack(k, v, mask)
            if ctx.method == "ring":
                dkv = _ring_backward(cfg, comm, grads, kv)
            else:
                blocks = _blocks(cfg, comm, kv, "allgather")
                dkv = comm.reduce_scatter(torch.stack([grads.block(b, src) for src, b in blocks]))
            parts = grads.dq_parts
            dq = parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)
            dk, dv = _split_kv(cfg, dkv)
        return dq, dk, dv, None, None, None, None, None


def _blocks(cfg: CallConfig, comm: Comm, kv: Tensor, method: str) -> Iterator[tuple[int, Tensor]]:
    """``(src, block)``: every rank's packed block and that rank, for the caller to work on.

    ``"allgather"`` gathers them all at once. ``"ring"`` starts at this rank's own block and
    passes each to the next rank, the next transfer running while the caller works on the
    current block (Ring Attention's overlap); the previous block's buffer is reused once the
    caller has asked for the next one.
    """
    if method != "ring":
        yield from enumerate(comm.all_gather(kv))
        return
    spare = torch.empty_like(kv)
    for step in range(cfg.world):
        last = step == cfg.world - 1
        works = [] if last else comm.shift(kv, spare, _KV_TAG)
        yield (cfg.rank - step) % cfg.world, kv
        if not last:
            comm.wait(works, f"the key/value block from rank {comm.prev} (ring step {step + 1})")
            kv, spare = spare, kv


def _ring_backward(cfg: CallConfig, comm: Comm, grads: _Grads, kv: Tensor) -> Tensor:
    """Visit every block again; each block's dK/dV follows it and ends at its owner."""
    if cfg.world == 1:
        return grads.block(kv, cfg.rank)
    grad_works: list[Any] = []
    incoming: Tensor | None = None
    sending: Tensor | None = None  # kept alive until its send has completed
    for step, (src, block) in enumerate(_blocks(cfg, comm, kv, "ring")):
        grad = grads.block(block, src)
        if incoming is not None:
            # dK/dV that ranks before this one accumulated for the same block.
            comm.wait(grad_works, f"dK/dV from rank {comm.prev} (ring step {step})")
            grad += incoming
        incoming, sending = torch.empty_like(grad), grad
        grad_works = comm.shift(sending, incoming, _GRAD_TAG)
    comm.wait(grad_works, f"this rank's dK/dV from rank {comm.prev}")
    assert incoming is not None and sending is not None
    return incoming
