"""Attention masks as small pure functions.

One convention everywhere in multihead:

* a **bool** mask means ``True`` = *may attend* (the same sense as Hugging Face's
  ``attention_mask`` and as ``torch.nn.functional.scaled_dot_product_attention``; the *opposite*
  of ``torch.nn.MultiheadAttention``'s bool ``attn_mask``);
* a **floating** mask is an additive bias on the attention logits (``-inf`` forbids a key);
* any other dtype is a ``TypeError``.

Masks broadcast to ``(B, H, Nq, Nk)``. Functions here return the smallest shape that broadcasts
(``(Nq, Nk)`` for structure, ``(B, 1, 1, Nk)`` for padding) so nothing ``B x H x N x N`` is built.

When ``Nq != Nk`` queries are aligned **bottom-right**: query ``i`` sits at key position
``i + (Nk - Nq)``, so the last query sees every key — what decoding with a cache needs.

Example:
    >>> import torch
    >>> from multihead import masks
    >>> masks.causal_mask(3).int()
    tensor([[1, 0, 0],
            [1, 1, 0],
            [1, 1, 1]], dtype=torch.int32)
    >>> masks.padding_mask(torch.tensor([2, 3]), max_len=3).shape
    torch.Size([2, 1, 1, 3])
"""

from __future__ import annotations

from typing import overload

import torch
from torch import Tensor

from ._validation import check_mask_dtype

__all__ = [
    "as_window",
    "causal_mask",
    "check_mask_dtype",
    "combine_masks",
    "key_padding_mask",
    "padding_mask",
    "structural_mask",
    "to_additive",
    "window_mask",
]

Window = tuple[int, int]


def as_window(window: int | tuple[int, int] | None, *, causal: bool = False) -> Window | None:
    """Normalize a ``window`` argument to ``(left, right)`` or ``None`` (no window).

    ``window=w`` lets a query at position ``p`` see keys ``j`` with ``p - w <= j <= p + w``;
    ``(left, right)`` sets the two sides separately. With ``causal`` the right side is 0.
    """
    if window is None:
        return None
    if isinstance(window, bool) or not isinstance(window, (int, tuple, list)):
        raise TypeError(
            f"window must be None, an int or a (left, right) pair of ints, got {type(window).__name__}"
        )
    if isinstance(window, int):
        left, right = window, window
    else:
        if len(window) != 2 or not all(
            isinstance(w, int) and not isinstance(w, bool) for w in window
        ):
            raise TypeError(f"window must be a (left, right) pair of ints, got {window!r}")
        left, right = window
    if left < 0 or right < 0:
        raise ValueError(f"window sizes must be >= 0, got window={window!r}")
    return (left, 0 if causal else right)


def structural_mask(
    nq: int,
    nk: int,
    *,
    causal: bool = False,
    window: int | tuple[int, int] | None = None,
    device: torch.device | str | None = None,
) -> Tensor | None:
    """Bool ``(Nq, Nk)`` mask for causality and/or a sliding window, or ``None`` if neither.

    Queries are bottom-right aligned: query ``i`` sits at key position ``i + nk - nq``.
    """
    win = as_window(window, causal=causal)
    if not causal and win is None:
        return None
    q_pos = torch.arange(nq, device=device).unsqueeze(-1) + (nk - nq)  # (Nq, 1)
    k_pos = torch.arange(nk, device=device).unsqueeze(0)  # (1, Nk)
    allowed = torch.ones(nq, nk, dtype=torch.bool, device=device)
    if causal:
        allowed &= k_pos <= q_pos
    if win is not None:
        left, right = win
        allowed &= (k_pos >= q_pos - left) & (k_pos <= q_pos + right)
    return allowed


def causal_mask(
    nq: int, nk: int | None = None, *, device: torch.device | str | None = None
) -> Tensor:
    """Bool ``(Nq, Nk)`` mask, ``True`` where key ``j`` is not after query ``i`` (bottom-right).

    Example:
        >>> causal_mask(2, 3).int()
        tensor([[1, 1, 0],
                [1, 1, 1]], dtype=torch.int32)
    """
    mask = structural_mask(nq, nq if nk is None else nk, causal=True, device=device)
    assert mask is not None
    return mask


def window_mask(
    nq: int,
    nk: int | None = None,
    *,
    window: int | tuple[int, int],
    causal: bool = False,
    device: torch.device | str | None = None,
) -> Tensor:
    """Bool ``(Nq, Nk)`` sliding-window mask (see :func:`as_window` for what ``window`` means).

    Example:
        >>> window_mask(4, window=1).int()
        tensor([[1, 1, 0, 0],
                [1, 1, 1, 0],
                [0, 1, 1, 1],
                [0, 0, 1, 1]], dtype=torch.int32)
    """
    mask = structural_mask(
        nq, nq if nk is None else nk, causal=causal, window=window, device=device
    )
    assert mask is not None
    return mask


def padding_mask(
    lengths: Tensor, max_len: int | None = None, *, device: torch.device | str | None = None
) -> Tensor:
    """Bool ``(B, 1, 1, N)`` key mask from sequence lengths: ``True`` for the first ``length`` keys.

    Example:
        >>> padding_mask(torch.tensor([1, 3]))[:, 0, 0].int()
        tensor([[1, 0, 0],
                [1, 1, 1]], dtype=torch.int32)
    """
    if not isinstance(lengths, Tensor):
        lengths = torch.as_tensor(lengths)
    if lengths.dim() != 1 or lengths.is_floating_point() or lengths.dtype == torch.bool:
        raise TypeError(
            f"lengths must be a 1-D integer tensor (B,), got dtype {lengths.dtype} "
            f"and shape {tuple(lengths.shape)}"
        )
    if lengths.numel() and int(lengths.min()) < 0:
        raise ValueError(f"lengths must be >= 0, got min {int(lengths.min())}")
    longest = int(lengths.max()) if lengths.numel() else 0
    n = longest if max_len is None else max_len
    if n < longest:
        raise ValueError(f"max_len={max_len} is shorter than the longest length {longest}")
    positions = torch.arange(n, device=device or lengths.device)
    return (positions.unsqueeze(0) < lengths.to(positions.device).unsqueeze(1))[:, None, None, :]


def key_padding_mask(mask: Tensor) -> Tensor:
    """Turn a ``(B, Nk)`` key padding mask (bool ``True`` = real token, or additive float) into
    the ``(B, 1, 1, Nk)`` shape that broadcasts against attention logits."""
    check_mask_dtype(mask, "key_padding_mask")
    if mask.dim() != 2:
        raise ValueError(f"key_padding_mask must be 2-D (B, Nk), got shape {tuple(mask.shape)}")
    return mask[:, None, None, :]


def to_additive(mask: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """Convert a mask to an additive float bias (bool ``False`` becomes ``-inf``)."""
    check_mask_dtype(mask)
    if mask.dtype == torch.bool:
        return merge(mask, torch.zeros(mask.shape, dtype=dtype, device=mask.device))
    return mask.to(dtype)


@overload
def merge(allowed: Tensor | None, bias: Tensor) -> Tensor: ...
@overload
def merge(allowed: Tensor | None, bias: None) -> Tensor | None: ...
@overload
def merge(allowed: Tensor | None, bias: Tensor | None) -> Tensor | None: ...
def merge(allowed: Tensor | None, bias: Tensor | None) -> Tensor | None:
    """One mask from a bool part (``True`` = may attend) and an additive part, by broadcasting:
    the bias with ``-inf`` where ``allowed`` is False. Unchecked: callers validated both.

    This is the one place in the package where a bool mask turns into an additive one.

    Example:
        >>> merge(torch.tensor([True, False]), torch.tensor([0.5, 0.5]))
        tensor([0.5000,   -inf])
    """
    if bias is None:
        return allowed
    if allowed is None:
        return bias
    return bias.masked_fill(~allowed, float("-inf"))


def combine_masks(*masks: Tensor | None) -> Tensor | None:
    """Combine masks by broadcasting: bool masks are AND-ed, float masks added, and a bool mask
    applied to a float one sets its forbidden entries to ``-inf``. ``None`` entries are skipped.

    Example:
        >>> m = combine_masks(causal_mask(2), torch.tensor([[True, False], [True, True]]))
        >>> m.int()
        tensor([[1, 0],
                [1, 1]], dtype=torch.int32)
    """
    allowed: Tensor | None = None
    bias: Tensor | None = None
    for i, mask in enumerate(masks):
        if mask is None:
            continue
        check_mask_dtype(mask, f"masks[{i}]")
        if mask.dtype == torch.bool:
            allowed = mask if allowed is None else allowed & mask
        else:
            bias = mask if bias is None else bias + mask
    return merge(allowed, bias)
