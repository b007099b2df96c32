"""Process groups for context parallelism combined with data parallelism."""

from __future__ import annotations

import datetime
from typing import Any

import torch.distributed as dist

__all__ = ["context_parallel_groups"]


def context_parallel_groups(
    context_parallel: int, *, timeout: float = 300.0, backend: str | None = None
) -> tuple[Any, Any]:
    """Split the world into context-parallel groups of ``context_parallel`` consecutive ranks
    and data-parallel groups of the ranks at the same place in each of them.

    With 4 ranks and ``context_parallel=2``: context groups ``{0, 1}`` and ``{2, 3}`` (each
    shares one sequence), data groups ``{0, 2}`` and ``{1, 3}`` (gradients are averaged over
    them, e.g. by ``DistributedDataParallel(model, process_group=data_group)``). Every rank
    must call this, in the same order as its other group creations.

    Args:
        context_parallel: ranks per sequence; must divide the world size.
        timeout: seconds before a collective on the new groups gives up.
        backend: the groups' backend (default: the world's).

    Returns:
        ``(context_group, data_group)`` of this rank.
    """
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("a process group must be initialised (torch.distributed)")
    world, rank = dist.get_world_size(), dist.get_rank()
    if (
        isinstance(context_parallel, bool)
        or not isinstance(context_parallel, int)
        or context_parallel < 1
        or world % context_parallel
    ):
        raise ValueError(
            f"context_parallel must be a positive int dividing the world size {world}, "
            f"got {context_parallel!r}"
        )
    limit = datetime.timedelta(seconds=timeout)
    mine: dict[str, Any] = {}
    # new_group is collective over the whole world: every rank creates every group.
    for start in range(0, world, context_parallel):
        ranks = list(range(start, start + context_parallel))
        group = dist.new_group(ranks, timeout=limit, backend=backend)
        if rank in ranks:
            mine["context"] = group
    for offset in range(context_parallel):
        ranks = list(range(offset, world, context_parallel))
        group = dist.new_group(ranks, timeout=limit, backend=backend)
        if rank in ranks:
            mine["data"] = group
    return mine["context"], mine["data"]
