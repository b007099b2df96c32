"""Checks of the drop-in's arguments, with errors that name the argument and show what was
expected and what came in (PyTorch raises ``AssertionError`` for most of these)."""

from __future__ import annotations

import torch
from torch import Tensor


def check_mask_dtype(mask: Tensor | None, name: str) -> None:
    if mask is None:
        return
    if not isinstance(mask, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or None, got {type(mask).__name__}")
    if mask.dtype != torch.bool and not mask.is_floating_point():
        raise TypeError(
            f"{name} must be a bool (True = masked out) or floating (additive) tensor, "
            f"got dtype {mask.dtype}"
        )


def check_inputs(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    sizes: tuple[int, int, int],
    batch_first: bool,
) -> bool:
    """Validate ranks and the feature sizes ``(embed_dim, kdim, vdim)``; return whether the
    call is batched."""
    for name, t in (("query", query), ("key", key), ("value", value)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if query.dim() not in (2, 3):
        raise ValueError(
            "query must be 3-D (L, B, E) / (B, L, E) with batch_first, or 2-D (L, E) "
            f"unbatched; got shape {tuple(query.shape)}"
        )
    for name, t in (("key", key), ("value", value)):
        if t.dim() != query.dim():
            raise ValueError(
                f"for a {query.dim()}-D query, {name} must be {query.dim()}-D too; "
                f"got shape {tuple(t.shape)}"
            )
    for name, t, size, size_name in (
        ("query", query, sizes[0], "embed_dim"),
        ("key", key, sizes[1], "kdim"),
        ("value", value, sizes[2], "vdim"),
    ):
        if t.shape[-1] != size:
            raise ValueError(
                f"{name} must have {size_name}={size} features in its last axis, "
                f"got shape {tuple(t.shape)}"
            )
    if key.shape[:-1] != value.shape[:-1]:
        raise ValueError(
            "key and value must agree in length and batch, got key "
            f"{tuple(key.shape)} and value {tuple(value.shape)}"
        )
    batched = query.dim() == 3
    if batched:
        batch_axis = 0 if batch_first else 1
        if key.shape[batch_axis] != query.shape[batch_axis]:
            raise ValueError(
                f"query and key must have the same batch size (axis {batch_axis}), got "
                f"query {tuple(query.shape)} and key {tuple(key.shape)}"
            )
    return batched


def check_mask_shapes(
    attn_mask: Tensor | None,
    key_padding_mask: Tensor | None,
    b: int,
    nq: int,
    nk: int,
    num_heads: int,
    batched: bool,
) -> None:
    """PyTorch's mask shapes: ``key_padding_mask`` ``(B, S)``, ``attn_mask`` ``(L, S)`` or
    ``(B*num_heads, L, S)`` (unbatched: ``(S,)`` and ``(num_heads, L, S)``)."""
    if key_padding_mask is not None and tuple(key_padding_mask.shape) != (b, nk):
        want = f"(B, S) = {(b, nk)}" if batched else f"(S,) = ({nk},)"
        got = key_padding_mask.shape if batched else key_padding_mask.shape[1:]
        raise ValueError(f"key_padding_mask must have shape {want}, got {tuple(got)}")
    if attn_mask is None:
        return
    heads = b * num_heads
    if attn_mask.dim() == 3 and tuple(attn_mask.shape) == (heads, nq, nk):
        return
    if attn_mask.dim() == 2 and tuple(attn_mask.shape) == (nq, nk):
        return
    three_d = "(B*num_heads, L, S)" if batched else "(num_heads, L, S)"
    raise ValueError(
        f"attn_mask must have shape (L, S) = {(nq, nk)} or {three_d} = {(heads, nq, nk)}, "
        f"got {tuple(attn_mask.shape)}"
    )
