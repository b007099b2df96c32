"""Validation of attention inputs, with messages that name the argument and show the shapes.

Scalar checks come from :mod:`multihead._validation` (one wording for the package).
"""

from __future__ import annotations

import math
from numbers import Real

import torch
from torch import Tensor

from .._validation import check_choice, check_mask_dtype, check_probability

_LAYOUT = {
    "query": "(B, H, Nq, Dk)",
    "key": "(B, Hkv, Nk, Dk)",
    "value": "(B, Hkv, Nk, Dv)",
}


def _shape(t: Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def check_qkv(query: Tensor, key: Tensor, value: Tensor) -> None:
    """Check ranks, dtypes, devices and the size relations of the kernel layout."""
    for name, t in (("query", query), ("key", key), ("value", value)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(
                f"{name} must be 4-D {_LAYOUT[name]}, got {t.dim()}-D with shape {_shape(t)}"
            )
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating tensor, got dtype {t.dtype}")
    if not (query.dtype == key.dtype == value.dtype):
        raise TypeError(
            "query, key and value must share a dtype, got "
            f"{query.dtype}, {key.dtype} and {value.dtype}"
        )
    if not (query.device == key.device == value.device):
        raise ValueError(
            "query, key and value must be on one device, got "
            f"{query.device}, {key.device} and {value.device}"
        )
    b, h, _, dk = query.shape
    if key.shape[0] != b or value.shape[0] != b:
        raise ValueError(
            f"batch sizes differ: query {_shape(query)}, key {_shape(key)}, value {_shape(value)}"
        )
    if key.shape[1] != value.shape[1]:
        raise ValueError(
            f"key and value must have the same number of heads Hkv, got key {_shape(key)} "
            f"and value {_shape(value)}"
        )
    hkv = key.shape[1]
    if hkv == 0 or h % hkv != 0:
        raise ValueError(
            f"query heads H={h} must be a multiple of key/value heads Hkv={hkv} "
            f"(query {_shape(query)}, key {_shape(key)})"
        )
    if key.shape[3] != dk:
        raise ValueError(
            f"query and key must have the same head size Dk, got query {_shape(query)} "
            f"and key {_shape(key)}"
        )
    if key.shape[2] != value.shape[2]:
        raise ValueError(
            f"key and value must have the same length Nk, got key {_shape(key)} "
            f"and value {_shape(value)}"
        )


def check_mask(
    mask: Tensor | None,
    expected: tuple[int, int, int, int],
    device: torch.device | None = None,
) -> Tensor | None:
    """Check a mask against ``(B, H, Nq, Nk)`` and return it as a 4-D broadcastable tensor.

    Accepted: 2-D ``(Nq, Nk)`` and 4-D ``(B|1, H|1, Nq|1, Nk|1)``. Other ranks are refused
    rather than guessed at: a ``(B, Nk)`` padding mask would otherwise broadcast as ``(Nq, Nk)``.
    """
    if mask is None:
        return None
    check_mask_dtype(mask, "mask")
    if device is not None and mask.device != device:
        raise ValueError(f"mask must be on the query's device {device}, got {mask.device}")
    given = _shape(mask)
    if mask.dim() == 2:
        mask = mask[None, None]
    elif mask.dim() != 4:
        raise ValueError(
            f"mask must be 2-D (Nq, Nk) or 4-D broadcastable to (B, H, Nq, Nk) = {expected}, "
            f"got shape {_shape(mask)} (for a (B, Nk) padding mask use mask[:, None, None, :] "
            "or multihead.masks.key_padding_mask)"
        )
    for size, want, axis in zip(mask.shape, expected, ["B", "H", "Nq", "Nk"], strict=True):
        if size not in (1, want):
            raise ValueError(
                f"mask of shape {given} does not broadcast to (B, H, Nq, Nk) = {expected}: "
                f"its {axis} axis is {size}, expected 1 or {want}"
            )
    return mask


def check_scale(scale: float | None) -> None:
    if scale is None:
        return
    if isinstance(scale, bool) or not isinstance(scale, Real):
        raise TypeError(f"scale must be a real number or None, got {type(scale).__name__}")
    if not math.isfinite(float(scale)):
        raise ValueError(f"scale must be finite, got {scale}")


def check_alibi_slopes(slopes: object, num_heads: int, device: torch.device) -> Tensor:
    """Check ALiBi slopes against ``(H,)`` and return them on ``device`` (never trained)."""
    if not isinstance(slopes, Tensor) or not slopes.is_floating_point():
        what = f"dtype {slopes.dtype}" if isinstance(slopes, Tensor) else type(slopes).__name__
        raise TypeError(f"alibi_slopes must be a floating tensor (H,), got {what}")
    if tuple(slopes.shape) != (num_heads,):
        raise ValueError(
            f"alibi_slopes must have shape (H,) = ({num_heads},), got {tuple(slopes.shape)}"
        )
    return slopes.detach().to(device)


def check_dropout(p: object, name: str = "dropout_p") -> float:
    """A dropout probability in ``[0, 1)``."""
    # Every attention() call passes one; a plain float skips check_probability's
    # isinstance(p, numbers.Real), an ABC check that costs about half a microsecond.
    if type(p) is float and 0.0 <= p < 1.0:
        return p
    return check_probability(p, name)


__all__ = [
    "check_alibi_slopes",
    "check_choice",
    "check_dropout",
    "check_mask",
    "check_qkv",
    "check_scale",
]
