"""How a sequence is cut across the ranks of a process group.

``"contiguous"``: rank ``r`` of ``P`` holds positions ``[r N/P, (r+1) N/P)``.

``"zigzag"``: the sequence is cut into ``2P`` chunks of ``N/(2P)`` and rank ``r`` holds chunks
``r`` and ``2P-1-r``, in that order. Under a causal mask every rank then has the same amount
of work: an early chunk (few keys before it) paired with a late one (many keys before it), as
in Brandon et al. (2023, Striped Attention) and the zigzag ring of ring-flash-attention.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["LAYOUTS", "gather_sequence", "global_positions", "segments", "shard_sequence"]

LAYOUTS = ("contiguous", "zigzag")


def check_layout(layout: str) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")


def chunk_count(layout: str, world: int) -> int:
    """Number of equal chunks the full sequence is cut into."""
    check_layout(layout)
    return 2 * world if layout == "zigzag" else world


def segments(local_len: int, layout: str, world: int, rank: int) -> list[tuple[int, int, int]]:
    """``(global_start, local_start, length)`` of each contiguous run of positions a rank holds.

    Example:
        >>> segments(4, "zigzag", 2, 0)
        [(0, 0, 2), (6, 2, 2)]
    """
    if layout == "contiguous":
        return [(rank * local_len, 0, local_len)]
    half = local_len // 2
    return [(rank * half, 0, half), ((2 * world - 1 - rank) * half, half, half)]


def _world(group: Any) -> tuple[int, int]:
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("a process group must be initialised (torch.distributed)")
    return dist.get_world_size(group), dist.get_rank(group)


def _check_dim(x: Tensor, dim: int) -> int:
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a tensor, got {type(x).__name__}")
    if isinstance(dim, bool) or not isinstance(dim, int) or not -x.dim() <= dim < x.dim():
        raise ValueError(f"dim must be an int in [{-x.dim()}, {x.dim()}), got {dim!r}")
    return dim % x.dim()


def global_positions(
    local_len: int, *, layout: str = "contiguous", group: Any = None, device: Any = None
) -> Tensor:
    """Global positions ``(N/P,)`` (int64) of the tokens this rank holds, in local order.

    Models pass these to RoPE, ALiBi and learned position tables so that a sharded sequence
    sees the same positions as the whole one.

    Example (rank 1 of 2, zigzag, N = 8): ``tensor([2, 3, 4, 5])``.
    """
    check_layout(layout)
    world, rank = _world(group)
    if layout == "zigzag" and local_len % 2:
        raise ValueError(f"zigzag needs an even local length, got {local_len}")
    parts = [
        torch.arange(start, start + length, device=device)
        for start, _, length in segments(local_len, layout, world, rank)
    ]
    return torch.cat(parts)


def shard_sequence(
    x: Tensor, dim: int = 2, *, layout: str = "contiguous", group: Any = None
) -> Tensor:
    """This rank's shard of a full tensor along the sequence dimension ``dim``.

    Args:
        x: the full tensor, e.g. ``(B, H, N, D)`` with ``dim=2`` or ``(B, N)`` with ``dim=1``;
            ``N`` must be divisible by the layout's chunk count (``P``, or ``2P`` for zigzag).
        dim: the sequence dimension.
        layout: ``"contiguous"`` or ``"zigzag"``.
        group: the process group (default: the whole world).

    Returns:
        A contiguous copy of the rank's ``N/P`` positions, in the layout's local order.
    """
    dim = _check_dim(x, dim)
    world, rank = _world(group)
    n = x.shape[dim]
    chunks = chunk_count(layout, world)
    if n % chunks:
        raise ValueError(
            f"sequence length {n} (dim {dim}) must be divisible by {chunks} "
            f"({'2 x ' if layout == 'zigzag' else ''}world size {world}) for layout {layout!r}"
        )
    local = n // world
    parts = [
        x.narrow(dim, start, length) for start, _, length in segments(local, layout, world, rank)
    ]
    return torch.cat(parts, dim=dim).contiguous()


def gather_sequence(
    x_local: Tensor, dim: int = 2, *, layout: str = "contiguous", group: Any = None
) -> Tensor:
    """The full tensor from every rank's shard (an all-gather), in global order.

    The inverse of :func:`shard_sequence`; every rank gets the whole tensor. The result does
    not carry gradients (use it for evaluation, logging and tests).
    """
    dim = _check_dim(x_local, dim)
    world, _ = _world(group)
    local = x_local.shape[dim]
    check_layout(layout)
    if layout == "zigzag" and local % 2:
        raise ValueError(f"zigzag needs an even local length along dim {dim}, got {local}")
    x_local = x_local.detach().contiguous()
    pieces = [torch.empty_like(x_local) for _ in range(world)]
    dist.all_gather(pieces, x_local, group=group)
    out_shape = list(x_local.shape)
    out_shape[dim] = local * world
    out = x_local.new_empty(out_shape)
    for rank, piece in enumerate(pieces):
        for start, local_start, length in segments(local, layout, world, rank):
            out.narrow(dim, start, length).copy_(piece.narrow(dim, local_start, length))
    return out
