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

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..functional.chunked import _backward, _forward, _Geometry, _plan, _probability_shift
from ..masks import Window
from ._comm import Comm
from .layout import segments

__all__ = ["CallConfig", "blockwise_attention"]

_KV_TAG, _GRAD_TAG = 11, 12


@dataclass(frozen=True)
class CallConfig:
    """The static description of one context-parallel call on this rank."""

    b: int
    h: int
    hkv: int
    n: int  # local sequence length
    dk: int
    dv: int
    causal: bool
    window: Window | None
    scale: float
    layout: str
    world: int
    rank: int
    has_mask: bool
    block_q: int
    block_k: int
    positional: bool  # whether positions matter (causal, window or ALiBi)

    def segments(self, rank: int) -> list[tuple[int, int, int]]:
        if not self.positional:
            return [(0, 0, self.n)]  # positions are irrelevant: one segment, no copies
        return segments(self.n, self.layout, self.world, rank)

    @property
    def kv_numel(self) -> int:
        return self.b * self.hkv * self.n * (self.dk + self.dv)

    def geometry(self, nq: int, nk: int, offset: int) -> _Geometry:
        return _Geometry(
            b=self.b,
            h=self.h,
            hkv=self.hkv,
            nq=nq,
            nk=nk,
            dk=self.dk,
            dv=self.dv,
            causal=self.causal,
            window=self.window,
            scale=self.scale,
            block_q=self.block_q,
            block_k=self.block_k,
            q_offset=offset,
        )


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
    nkv = cfg.b * cfg.hkv * cfg.n
    k = buf[: nkv * cfg.dk].view(cfg.b, cfg.hkv, cfg.n, cfg.dk)
    v = buf[nkv * cfg.dk : nkv * (cfg.dk + cfg.dv)].view(cfg.b, cfg.hkv, cfg.n, cfg.dv)
    return k, v


def _unpack(cfg: CallConfig, buf: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
    k, v = _split_kv(cfg, buf)
    mask = buf[cfg.kv_numel :].view(cfg.b, cfg.n) > 0.5 if cfg.has_mask else None
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
        nq = q.shape[2]
        self.out = q.new_zeros(cfg.b, cfg.hkv, cfg.h // cfg.hkv, nq, cfg.dv)
        self.m = q.new_full((cfg.b, cfg.hkv, cfg.h // cfg.hkv, nq), float("-inf"))
        self.total = q.new_zeros(cfg.b, cfg.hkv, cfg.h // cfg.hkv, nq)

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


class _Blockwise(torch.autograd.Function):
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
            if method == "ring":
                _ring_forward(cfg, comm, q_parts, rows, kv, slopes)
            else:
                gathered = comm.all_gather(kv)
                for src in range(cfg.world):
                    _attend(cfg, q_parts, rows, gathered[src], src, slopes)
            outs = [r.out for r in rows]
            out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=3)
            out = out.view(cfg.b, cfg.h, cfg.n, cfg.dv)
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
            dout = dout.to(out.dtype).contiguous()
            shift, inv_sum = _probability_shift(m, row_sum)
            delta = (dout * out).sum(dim=-1).view_as(m)  # rowsum(dO * O), FlashAttention-2
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
                gathered = comm.all_gather(kv)
                per_block = [grads.block(gathered[src], src) for src in range(cfg.world)]
                dkv = comm.reduce_scatter(torch.stack(per_block))
            parts = grads.dq_parts
            dq = parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)
            dk, dv = _split_kv(cfg, dkv)
        return dq, dk, dv, None, None, None, None, None


def _ring_forward(
    cfg: CallConfig,
    comm: Comm,
    q_parts: list[Tensor],
    rows: list[_Rows],
    kv: Tensor,
    slopes: Tensor | None,
) -> None:
    spare = torch.empty_like(kv)
    for step in range(cfg.world):
        src = (cfg.rank - step) % cfg.world
        last = step == cfg.world - 1
        # The next block travels while this one is computed (Ring Attention's overlap).
        works = [] if last else comm.shift(kv, spare, _KV_TAG)
        _attend(cfg, q_parts, rows, kv, src, slopes)
        if not last:
            comm.wait(works, f"the key/value block from rank {comm.prev} (ring step {step + 1})")
            kv, spare = spare, kv


def _ring_backward(cfg: CallConfig, comm: Comm, grads: _Grads, kv: Tensor) -> Tensor:
    """Visit every block again; each block's dK/dV follows it and ends at its owner."""
    if cfg.world == 1:
        return grads.block(kv, cfg.rank)
    spare = torch.empty_like(kv)
    grad_works: list[Any] = []
    incoming: Tensor | None = None
    sending: Tensor | None = None  # kept alive until its send has completed
    for step in range(cfg.world):
        src = (cfg.rank - step) % cfg.world
        last = step == cfg.world - 1
        kv_works = [] if last else comm.shift(kv, spare, _KV_TAG)
        grad = grads.block(kv, src)
        if incoming is not None:
            # dK/dV that ranks before this one accumulated for the same block.
            comm.wait(grad_works, f"dK/dV from rank {comm.prev} (ring step {step})")
            grad += incoming
        incoming, sending = torch.empty_like(grad), grad
        grad_works = comm.shift(sending, incoming, _GRAD_TAG)
        if not last:
            comm.wait(kv_works, f"the key/value block from rank {comm.prev} (ring step {step + 1})")
            kv, spare = spare, kv
    comm.wait(grad_works, f"this rank's dK/dV from rank {comm.prev}")
    assert incoming is not None and sending is not None
    return incoming


def blockwise_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None,
    slopes: Tensor | None,
    cfg: CallConfig,
    comm: Comm,
    method: str,
) -> Tensor:
    """Ring or all-gather attention of this rank's shard; inputs already in the work dtype."""
    out: Tensor = _Blockwise.apply(q, k, v, mask, slopes, cfg, comm, method)
    return out
