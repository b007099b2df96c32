"""Training a language model with each sequence split across a context-parallel group.

``torchrun --nproc_per_node W -m multihead.cli train text --context-parallel C`` puts ``C``
consecutive ranks in a context group (see :func:`multihead.distributed.context_parallel_groups`).
The ranks of a group draw the same batch and each keeps its zigzag shard of every sequence,
so a group computes what one process would on the whole batch; the ``W / C`` groups draw
different batches, as data-parallel ranks do.

Gradients: attention's backward sends each key/value gradient back to the rank that owns the
token, so the parameter gradients summed over a group's ranks are those of the sum of their
losses. DDP (over the whole world) averages over all ``W`` ranks, so each rank's loss is
``C * (its tokens' summed loss) / (the group's token count)``: the average over the world is
then the mean, over groups, of each group's single-process gradient.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from multihead.distributed import (
    ContextParallel,
    context_parallel_groups,
    enable_context_parallel,
    shard_sequence,
)
from multihead.train.distributed import DistInfo
from multihead.train.loop import StepOutput

__all__ = ["setup_context_parallel", "sharded_lm_loss"]

LAYOUT = "zigzag"  # balances causal work: every rank holds an early and a late chunk


def setup_context_parallel(
    model: nn.Module, recipe: Any, info: DistInfo, context_parallel: int, *, timeout: float = 300.0
) -> DistInfo:
    """Shard ``recipe``'s sequences across groups of ``context_parallel`` ranks.

    Creates the groups (every rank must call this), sets ``recipe.context_parallel`` and the
    attention modules of ``model``, and returns ``info`` with ``context_parallel`` set (batches
    are then seeded by the group, see :attr:`DistInfo.data_rank`).

    Example (every rank of ``torchrun --nproc_per_node 2``)::

        info = setup_context_parallel(model, recipe, init_distributed("cpu"), 2)
        train(model, recipe, config, dist_info=info)
    """
    if not hasattr(recipe, "context_parallel"):
        raise ValueError(f"the {recipe.name!r} task cannot shard its sequences (text only)")
    if not info.enabled or info.world_size % context_parallel:
        raise ValueError(
            f"context_parallel={context_parallel} must divide the number of processes "
            f"{info.world_size} (launch with torchrun --nproc_per_node)"
        )
    group, _ = context_parallel_groups(context_parallel, timeout=timeout)
    cp = ContextParallel(group=group, layout=LAYOUT, timeout=timeout)
    recipe.context_parallel = cp
    enable_context_parallel(model, cp)
    return replace(info, context_parallel=context_parallel)


def sharded_lm_loss(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    cp: ContextParallel,
    *,
    label_smoothing: float,
    positions: bool = True,
) -> StepOutput:
    """Next-token loss of full sequences ``x``, ``y`` ``(B, T)`` (the same on every rank of
    ``cp.group``) computed on this rank's shard.

    The returned loss has the value of the group's mean loss (for logging) and the gradient
    of ``P * (this rank's summed loss) / (group's token count)`` (see the module docstring);
    ``correct`` and ``predictions`` count the whole group's tokens, ``tokens`` this rank's.
    ``positions=False`` for ALiBi models, which read global positions inside attention.
    """
    x_local, y_local = (shard_sequence(t, dim=1, layout=cp.layout, group=cp.group) for t in (x, y))
    where = cp.positions(x_local.shape[1], device=x.device) if positions else None
    logits = model(x_local, positions=where)  # (B, T/P, V)
    summed = F.cross_entropy(
        logits.float().flatten(0, 1),
        y_local.flatten(),
        label_smoothing=label_smoothing,
        reduction="sum",
    )
    correct = (logits.argmax(-1) == y_local).sum()
    stats = torch.stack([summed.detach().double(), correct.double()])
    dist.all_reduce(stats, group=cp.group)
    count = y.numel()  # every rank of the group holds the same full batch
    world = dist.get_world_size(cp.group)
    scaled = summed * (world / count)
    # Value: the group's mean loss; gradient: that of `scaled`.
    loss = scaled + (stats[0].to(scaled.dtype) / count - scaled).detach()
    return StepOutput(loss, int(stats[1]), count, x_local.numel())
