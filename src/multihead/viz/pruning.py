"""Remove attention heads for real: smaller projections, fewer FLOPs, the same function as
masking those heads.

A head ``h`` of :class:`~multihead.MultiHeadAttention` owns rows ``h*Dk:(h+1)*Dk`` of
``q_proj``, its key/value head's rows of ``k_proj``/``v_proj``, and columns
``h*Dv:(h+1)*Dv`` of ``out_proj``. Dropping exactly those gives a module whose output equals
the original's with the head masked (:func:`multihead.viz.stats.mask_heads`): the output is
``sum_h head_h W^O_h + b^O`` and a masked head contributes nothing to that sum.

With grouped-query attention (``num_kv_heads < num_heads``) a key/value head is shared by a
group of ``num_heads / num_kv_heads`` query heads, so only whole groups can go; removing part
of a group would leave the layout inconsistent and is refused.

Note that a pruned model no longer matches its ``config`` (``num_heads``); save its
``state_dict`` together with the pruning plan, not as a fresh checkpoint of that config.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from ..modules.attention import MultiHeadAttention
from .capture import attention_modules

__all__ = ["prune_heads", "prune_model"]


def _rows_of(heads: Sequence[int], size: int) -> list[int]:
    """Indices of the rows (or columns) that the given heads own, each head ``size`` wide."""
    return [h * size + d for h in heads for d in range(size)]


def _sliced_linear(
    linear: nn.Linear, *, rows: list[int] | None, cols: list[int] | None
) -> nn.Linear:
    weight = linear.weight.detach()
    if rows is not None:
        weight = weight[rows]
    if cols is not None:
        weight = weight[:, cols]
    bias = linear.bias
    new = nn.Linear(
        weight.shape[1],
        weight.shape[0],
        bias=bias is not None,
        device=weight.device,
        dtype=weight.dtype,
    )
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None:
            # out_proj's bias is shared by all heads and is kept whole; input rows go with heads.
            new.bias.copy_(bias.detach()[rows] if rows is not None else bias.detach())
    new.weight.requires_grad_(linear.weight.requires_grad)
    if new.bias is not None and bias is not None:
        new.bias.requires_grad_(bias.requires_grad)
    return new


def _check_heads(mha: MultiHeadAttention, heads: object, name: str) -> list[int]:
    if isinstance(heads, (str, bytes)) or not isinstance(heads, Sequence):
        raise TypeError(f"{name} must be a list of ints, got {type(heads).__name__}")
    items = list(heads)
    for h in items:
        if isinstance(h, bool) or not isinstance(h, int):
            raise TypeError(f"{name} must hold ints, got {type(h).__name__} {h!r}")
        if not 0 <= h < mha.num_heads:
            raise ValueError(f"{name} must be in [0, {mha.num_heads}), got {h}")
    if len(set(items)) != len(items):
        raise ValueError(f"{name} must not repeat a head, got {items}")
    if len(items) == mha.num_heads:
        raise ValueError(
            f"cannot remove all {mha.num_heads} heads of a module; keep at least one "
            "(or remove the module from the model instead)"
        )
    return sorted(items)


def _plan(mha: MultiHeadAttention, heads: object, name: str) -> tuple[list[int], list[int]]:
    """Checked ``(query heads, key/value heads)`` to remove."""
    removed = _check_heads(mha, heads, name)
    group = mha.num_heads // mha.num_kv_heads
    if group == 1:
        return removed, removed
    removed_kv = sorted({i // group for i in removed})
    whole = _rows_of(removed_kv, group)  # every query head of the touched groups
    if whole != removed:
        raise ValueError(
            f"{name}={removed}: with num_kv_heads={mha.num_kv_heads} (groups of {group} query "
            f"heads sharing one key/value head) only whole groups can be removed; these heads "
            f"touch the groups of heads {whole}"
        )
    return removed, removed_kv


def prune_heads(mha: MultiHeadAttention, heads: Sequence[int]) -> MultiHeadAttention:
    """Remove ``heads`` from ``mha`` in place and return it.

    ``q_proj``, ``k_proj``, ``v_proj`` and ``out_proj`` are rebuilt with the remaining rows and
    columns (same device, dtype and ``requires_grad``), ``num_heads`` shrinks, and so does
    ``num_kv_heads`` (by the same count without grouping, by whole groups with it). The output
    equals the unpruned module's with ``heads`` masked. An empty list changes nothing.

    Raises:
        ValueError: a head out of range or repeated, every head listed, or (grouped-query
            attention) a partial group of query heads.

    Example:
        >>> mha = MultiHeadAttention(16, 4)
        >>> _ = prune_heads(mha, [1, 3])
        >>> mha.num_heads, mha.q_proj.out_features, mha.out_proj.in_features
        (2, 8, 8)
    """
    if not isinstance(mha, MultiHeadAttention):
        raise TypeError(f"mha must be a multihead.MultiHeadAttention, got {type(mha).__name__}")
    removed, removed_kv = _plan(mha, heads, "heads")
    if not removed:
        return mha
    h, hkv = mha.num_heads, mha.num_kv_heads
    keep_q = [i for i in range(h) if i not in removed]
    keep_kv = [i for i in range(hkv) if i not in removed_kv]

    mha.q_proj = _sliced_linear(mha.q_proj, rows=_rows_of(keep_q, mha.head_dim), cols=None)
    mha.k_proj = _sliced_linear(mha.k_proj, rows=_rows_of(keep_kv, mha.head_dim), cols=None)
    mha.v_proj = _sliced_linear(mha.v_proj, rows=_rows_of(keep_kv, mha.v_head_dim), cols=None)
    mha.out_proj = _sliced_linear(mha.out_proj, rows=None, cols=_rows_of(keep_q, mha.v_head_dim))
    slopes = getattr(mha, "alibi_slopes", None)
    if slopes is not None:
        # ALiBi gives each head its own slope; the kept heads keep theirs.
        mha.alibi_slopes = slopes[keep_q].clone()
    mha.num_heads = len(keep_q)
    mha.num_kv_heads = len(keep_kv)
    return mha


def prune_model(model: nn.Module, heads: Mapping[str, Sequence[int]]) -> nn.Module:
    """Apply :func:`prune_heads` to several attention modules of ``model``, found by name.

    Every entry is checked before anything is changed, so a bad plan leaves the model intact.

    Example:
        >>> from multihead.modules.layers import EncoderLayer
        >>> layer = prune_model(EncoderLayer(16, 4, 32), {"self_attn": [0]})
        >>> layer.self_attn.num_heads
        3
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(heads, Mapping):
        raise TypeError(f"heads must map module names to head lists, got {type(heads).__name__}")
    modules = attention_modules(model)
    plan = []
    for name, hs in heads.items():
        if name not in modules:
            raise ValueError(
                f"heads names unknown attention module {name!r}; expected one of {list(modules)}"
            )
        mha = modules[name]
        removed, _ = _plan(mha, hs, f"heads[{name!r}]")
        plan.append((mha, removed))
    for mha, removed in plan:
        prune_heads(mha, removed)
    return model
