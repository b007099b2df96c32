"""``context_parallel_attention``: exact attention over a sequence sharded across ranks."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ..functional import chunked
from ..functional._prepare import AttentionOptions, kernel_spec
from ..functional._spec import AttentionSpec, _logit_dtype
from ..functional.chunked import _Geometry
from ._comm import Comm
from .layout import check_layout
from .ring import BlockwiseAttention, CallConfig
from .ulysses import ulysses_attention

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["METHODS", "context_parallel_attention"]

METHODS = ("ring", "allgather", "ulysses")


def context_parallel_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    *,
    key_padding_mask: Tensor | None = None,
    group: Any = None,
    method: str = "ring",
    layout: str = "contiguous",
    block_size: int | tuple[int, int] | None = None,
    timeout: float | None = 300.0,
    **options: Unpack[AttentionOptions],
) -> Tensor:
    r"""Exact softmax attention of a sequence split along its length across a process group.

    Every rank of ``group`` calls this with its shard of the same sequence and gets its shard of
    the output, equal (to rounding) to :func:`multihead.functional.attention` on the gathered
    tensors, with global positions for ``causal``, ``window`` and ALiBi. Gradients are exact
    and flow to each rank's own shards.

    Args:
        query: ``(B, H, N/P, Dk)``, this rank's shard (see :func:`shard_sequence`).
        key: ``(B, Hkv, N/P, Dk)`` with ``H % Hkv == 0`` (grouped-query attention).
        value: ``(B, Hkv, N/P, Dv)``.
        key_padding_mask: ``(B, N/P)`` bool shard, ``True`` = real token; a query whose keys
            are all padding gets zeros.
        group: the process group (default: the whole world); ``P`` is its size.
        method: ``"ring"`` (blocks passed around the ring with ``isend``/``irecv``, memory
            ``O(N/P)``), ``"allgather"`` (K/V gathered, memory ``O(N)``) or ``"ulysses"``
            (all-to-all to head shards; needs ``H % P == 0``).
        layout: ``"contiguous"`` or ``"zigzag"`` (the sequence in ``2P`` chunks, rank ``r``
            holding chunks ``r`` and ``2P-1-r``, which balances causal work).
        block_size: the chunked kernel's ``(block_q, block_k)`` (default ``(256, 512)``).
        timeout: seconds any rank waits for another before raising
            :class:`ContextParallelError` (``None``: the process group's own timeout).
        options: the keyword options of ``attention`` (:class:`AttentionOptions`), over
            global positions: ``causal``, ``window``, ``scale``, ``score`` and ``alibi_slopes``
            ``(H,)``. ``need_weights=True`` and ``dropout_p > 0`` raise ``ValueError``.

    Returns:
        ``(B, H, N/P, Dv)``, this rank's shard of the output, in ``query``'s dtype (the softmax
        runs in float32 for float16/bfloat16).

    Raises:
        ContextParallelError: another rank failed (the error names it) or did not answer
            within ``timeout``.

    Example (each of 2 ranks, after ``init_process_group("gloo", ...)``)::

        q, k, v = (shard_sequence(t, layout="zigzag") for t in (q_full, k_full, v_full))
        out = context_parallel_attention(q, k, v, causal=True, layout="zigzag")
        full = gather_sequence(out, layout="zigzag")
    """
    comm = Comm(group, _check_timeout(timeout))
    with comm.guard("argument checks"):
        cfg, spec = _config(
            query, key, value, key_padding_mask, method, layout, block_size, comm, **options
        )
        work = _logit_dtype(query.dtype)  # float32 softmax for half inputs
        q, k, v = (t.to(work).contiguous() for t in (spec.query, spec.key, spec.value))
        slopes = None if spec.alibi_slopes is None else spec.alibi_slopes.to(work)
    if method == "ulysses":
        out = ulysses_attention(cfg, comm, q, k, v, key_padding_mask, slopes)
    else:
        mask = None if key_padding_mask is None else key_padding_mask.contiguous()
        out = BlockwiseAttention.apply(q, k, v, mask, slopes, cfg, comm, method)
    return out.to(query.dtype)


def _check_timeout(timeout: float | None) -> float | None:
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ValueError(f"timeout must be a positive number of seconds or None, got {timeout!r}")
    return float(timeout)


def _config(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    key_padding_mask: Tensor | None,
    method: str,
    layout: str,
    block_size: int | tuple[int, int] | None,
    comm: Comm,
    **options: Unpack[AttentionOptions],
) -> tuple[CallConfig, AttentionSpec]:
    check_layout(layout)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    # The checks and defaults of a single-process call of the chunked kernel, which runs here.
    spec = kernel_spec(chunked.supports, query, key, value, alibi=True, **options)
    geo = _Geometry.of(spec, block_size)
    b, h, n, nk = geo.b, geo.h, geo.nq, geo.nk
    if nk != n:
        raise ValueError(
            f"query and key shards must have the same length (self-attention over one sequence), "
            f"got {n} and {nk}"
        )
    if layout == "zigzag" and n % 2:
        raise ValueError(
            f"layout 'zigzag' cuts the sequence into 2P chunks, so the local length must be "
            f"even, got {n} (sequence length {n * comm.world})"
        )
    if method == "ulysses" and h % comm.world:
        raise ValueError(
            f"method 'ulysses' shards heads across ranks: H = {h} must be divisible by the "
            f"world size {comm.world}"
        )
    if key_padding_mask is not None:
        if not isinstance(key_padding_mask, Tensor) or key_padding_mask.dtype != torch.bool:
            raise TypeError(
                "key_padding_mask must be a bool tensor (True = real token), got "
                + (
                    str(key_padding_mask.dtype)
                    if isinstance(key_padding_mask, Tensor)
                    else type(key_padding_mask).__name__
                )
            )
        if tuple(key_padding_mask.shape) != (b, n):
            raise ValueError(
                f"key_padding_mask must be this rank's (B, N/P) = ({b}, {n}) shard, "
                f"got {tuple(key_padding_mask.shape)}"
            )
    cfg = CallConfig(
        geo=geo,
        layout=layout,
        world=comm.world,
        rank=comm.rank,
        has_mask=key_padding_mask is not None,
        positional=geo.causal or geo.window is not None or spec.alibi_slopes is not None,
    )
    return cfg, spec
