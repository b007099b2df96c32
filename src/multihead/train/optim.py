"""AdamW with decoupled weight decay on matrices only, and warm-up learning-rate schedules.

Schedules are multipliers of the peak learning rate, as functions of the update count, wrapped
in :class:`torch.optim.lr_scheduler.LambdaLR`. With ``s = step + 1`` (the 1-based number of the
update about to be taken, so the very first update never has a learning rate of zero) and
``w = warmup``:

* ``inverse_sqrt`` (Vaswani et al., 2017, Sec. 5.3, Eq. 3, normalised to peak at 1):
  ``min(s / w, sqrt(w / s))``.
* ``cosine`` (Loshchilov & Hutter, 2017, without restarts): ``s / w`` while ``s <= w``, then
  ``r + (1 - r) * (1 + cos(pi * p)) / 2`` with progress ``p = min(1, (s - w) / (T - w))``,
  ``T`` the total steps and ``r`` the floor ``min_lr_ratio``.

With ``w = 0`` the warm-up is skipped (the multiplier starts at 1).
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any, Literal

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from multihead.positional import LearnedPositionalEncoding

__all__ = [
    "SCHEDULES",
    "cosine_factor",
    "inverse_sqrt_factor",
    "make_optimizer",
    "make_scheduler",
    "param_groups",
]

Schedule = Literal["inverse_sqrt", "cosine"]
SCHEDULES: tuple[str, ...] = ("inverse_sqrt", "cosine")

# Modules whose weights are lookup tables or scales, not linear maps: decaying them toward zero
# shrinks embeddings and norm gains for no regularisation benefit (as in GPT-2/nanoGPT).
_NO_DECAY_MODULES: tuple[type[nn.Module], ...] = (
    nn.Embedding,
    LearnedPositionalEncoding,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()),
)
# Learned tokens prepended to the input (ViT's class token) are embeddings too.
_NO_DECAY_NAMES: tuple[str, ...] = ("cls_token",)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Split ``model``'s trainable parameters into a decayed and an undecayed AdamW group.

    Biases, normalisation weights, embedding tables, learned positions and class tokens (and
    any other 0-D/1-D tensor) go in
    the group with ``weight_decay=0``; a tied output projection that shares the embedding's
    tensor is counted once, undecayed.

    Example:
        >>> model = nn.Sequential(nn.Embedding(10, 4), nn.LayerNorm(4), nn.Linear(4, 3))
        >>> decay, no_decay = param_groups(model, 0.1)
        >>> len(decay["params"]), len(no_decay["params"]), no_decay["weight_decay"]
        (1, 4, 0.0)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(weight_decay, (int, float)) or isinstance(weight_decay, bool):
        raise TypeError(f"weight_decay must be a float, got {type(weight_decay).__name__}")
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    no_decay_ids: set[int] = set()
    for module in model.modules():
        if isinstance(module, _NO_DECAY_MODULES):
            no_decay_ids.update(id(p) for p in module.parameters(recurse=False))
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    seen: set[int] = set()
    # named_parameters() yields a shared (tied) tensor once, under its first name.
    for name, param in model.named_parameters():
        if not param.requires_grad or id(param) in seen:
            continue
        seen.add(id(param))
        leaf = name.rsplit(".", 1)[-1]
        if param.dim() < 2 or id(param) in no_decay_ids or leaf in _NO_DECAY_NAMES:
            no_decay.append(param)
        else:
            decay.append(param)
    return [
        {"params": decay, "weight_decay": float(weight_decay)},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def make_optimizer(
    model: nn.Module,
    *,
    lr: float,
    weight_decay: float = 0.01,
    betas: tuple[float, float] = (0.9, 0.98),
    eps: float = 1e-9,
) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups`; ``betas``/``eps`` default to the Transformer paper's.

    Example:
        >>> opt = make_optimizer(nn.Linear(4, 4), lr=1e-3)
        >>> [g["weight_decay"] for g in opt.param_groups]
        [0.01, 0.0]
    """
    if not isinstance(lr, (int, float)) or isinstance(lr, bool) or not lr > 0:
        raise ValueError(f"lr must be a positive float, got {lr!r}")
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=float(lr), betas=betas, eps=eps)


def _check_step(step: int, warmup: int) -> None:
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")


def inverse_sqrt_factor(step: int, *, warmup: int) -> float:
    """Multiplier of the peak learning rate: linear warm-up, then ``1/sqrt`` decay.

    Example:
        >>> [round(inverse_sqrt_factor(s, warmup=4), 3) for s in (0, 3, 15)]
        [0.25, 1.0, 0.5]
    """
    _check_step(step, warmup)
    s = step + 1
    if warmup == 0:
        return 1.0
    return min(s / warmup, math.sqrt(warmup / s))


def cosine_factor(step: int, *, warmup: int, total_steps: int, min_ratio: float = 0.0) -> float:
    """Multiplier of the peak learning rate: linear warm-up, then a half cosine to ``min_ratio``.

    Example:
        >>> [round(cosine_factor(s, warmup=2, total_steps=10), 3) for s in (0, 1, 5, 9)]
        [0.5, 1.0, 0.5, 0.0]
    """
    _check_step(step, warmup)
    s = step + 1
    if warmup > 0 and s <= warmup:
        return s / warmup
    progress = min(1.0, (s - warmup) / max(1, total_steps - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def make_scheduler(
    optimizer: torch.optim.Optimizer,
    *,
    schedule: Schedule = "inverse_sqrt",
    warmup: int,
    total_steps: int,
    min_lr_ratio: float = 0.0,
) -> LambdaLR:
    """A :class:`LambdaLR` applying :func:`inverse_sqrt_factor` or :func:`cosine_factor`.

    The multiplier is a ``functools.partial`` of a module-level function, so the scheduler's
    ``state_dict()`` holds only numbers and loads with ``torch.load(weights_only=True)``.

    Example:
        >>> opt = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=1.0)
        >>> sched = make_scheduler(opt, schedule="cosine", warmup=2, total_steps=10)
        >>> opt.param_groups[0]["lr"]
        0.5
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    for name, value in (("warmup", warmup), ("total_steps", total_steps)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{name} must be an int >= 0, got {value!r}")
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ValueError(f"min_lr_ratio must be in [0, 1], got {min_lr_ratio}")
    if schedule == "inverse_sqrt":
        factor = partial(inverse_sqrt_factor, warmup=warmup)
    else:
        factor = partial(
            cosine_factor, warmup=warmup, total_steps=total_steps, min_ratio=min_lr_ratio
        )
    return LambdaLR(optimizer, factor)
