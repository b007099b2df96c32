"""Validation of a call and its description as an :class:`AttentionSpec`, shared by
:func:`multihead.functional.attention` and the kernels' direct entry points."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, TypedDict

import torch
import torch.nn.functional as F
from torch import Tensor

from .._validation import check_bool
from ..masks import as_window
from ._checks import (
    check_alibi_slopes,
    check_choice,
    check_dropout,
    check_mask,
    check_qkv,
    check_scale,
)
from ._spec import AttentionSpec

if TYPE_CHECKING:
    from typing_extensions import Unpack

SCORES = ("dot", "cosine")


class AttentionOptions(TypedDict, total=False):
    """The keyword options of an attention call besides ``mask`` and ``backend``.

    Declared once, here; their defaults and meaning are those of :func:`build_spec` (and of
    :func:`multihead.functional.attention`, whose documented signature spells them out).
    Entry points that take them forward ``**options`` to :func:`make_spec`, which checks the
    values, and on to :func:`build_spec`, whose signature rejects an unknown name with
    ``TypeError`` as Python does.
    """

    causal: bool
    window: int | tuple[int, int] | None
    scale: float | None
    score: str
    dropout_p: float
    need_weights: bool
    alibi_slopes: Tensor | None


_OPTION_NAMES = frozenset(AttentionOptions.__annotations__)


class KernelOptions(AttentionOptions, total=False):
    """:class:`AttentionOptions` and ``mask``, which the kernels' own entry points
    (``chunked_attention``...) take by keyword like the rest."""

    mask: Tensor | None


def make_spec(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    mask: Tensor | None = None,
    **options: Unpack[AttentionOptions],
) -> AttentionSpec:
    """Validate the arguments of :func:`attention` and return the call's :class:`AttentionSpec`.

    Shapes as in :func:`multihead.functional.attention`; ``options`` are the keyword options
    of :class:`AttentionOptions`, with :func:`build_spec`'s defaults.

    Example:
        >>> q = torch.randn(1, 2, 3, 4)
        >>> make_spec(q, q, q, causal=True).shape
        (1, 2, 2, 3, 3, 4, 4)
    """
    # A comprehension, not ``options.keys() - names``: TorchDynamo 2.11 cannot trace set
    # arithmetic on a dict's keys (torch.compile of the module failed there).
    unknown = sorted(name for name in options if name not in _OPTION_NAMES)
    if unknown:
        # Said here, not by build_spec's signature: that error would name an internal function.
        raise TypeError(
            f"unexpected keyword argument(s) {unknown}; the attention options are "
            f"{sorted(_OPTION_NAMES)}"
        )
    check_qkv(query, key, value)
    b, h, nq, _ = query.shape
    mask = check_mask(mask, (b, h, nq, key.shape[2]), query.device)
    # Only the options given are checked: the defaults are valid.
    if "causal" in options:
        check_bool(options["causal"], "causal")
    if "need_weights" in options:
        check_bool(options["need_weights"], "need_weights")
    if "scale" in options:
        check_scale(options["scale"])
    if "dropout_p" in options:
        check_dropout(options["dropout_p"])
    if "score" in options:
        check_choice(options["score"], "score", SCORES)
    slopes = options.get("alibi_slopes")
    if slopes is not None:
        options["alibi_slopes"] = check_alibi_slopes(slopes, h, query.device)
    return build_spec(query, key, value, mask, **options)


def kernel_spec(
    supports: Callable[[AttentionSpec], str | None],
    query: Tensor,
    key: Tensor,
    value: Tensor,
    *,
    alibi: bool,
    **options: Unpack[KernelOptions],
) -> AttentionSpec:
    """:func:`make_spec` for a kernel's own entry point (``chunked_attention``...): a call the
    kernel cannot run raises ``ValueError`` with the reason the registry would give."""
    spec = make_spec(query, key, value, **options)
    reason = refusal(spec, supports, alibi=alibi)
    if reason is not None:
        raise ValueError(reason)
    return spec


def refusal(
    spec: AttentionSpec, supports: Callable[[AttentionSpec], str | None], *, alibi: bool
) -> str | None:
    """Why a kernel with this ``supports`` (and ALiBi support ``alibi``) cannot run ``spec``."""
    if spec.alibi_slopes is not None and not alibi:
        return "no ALiBi bias (alibi_slopes)"
    return supports(spec)


def build_spec(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    mask: Tensor | None = None,
    *,
    causal: bool = False,
    window: int | tuple[int, int] | None = None,
    scale: float | None = None,
    score: str = "dot",
    dropout_p: float = 0.0,
    need_weights: bool = False,
    alibi_slopes: Tensor | None = None,
) -> AttentionSpec:
    """:func:`make_spec` without its checks, for callers that validated every argument
    already (``MultiHeadAttention`` checks its inputs once, at its own boundary). ``mask`` is
    4-D or ``None``. The one signature that declares the options' defaults."""
    if mask is not None and mask.dtype != torch.bool:
        mask = forbid_below_threshold(mask)
    dk = query.shape[-1]
    win = as_window(window, causal=causal)
    if score == "cosine":
        # Cosine similarity of unit vectors; the default inverse temperature sqrt(Dk) gives
        # logits of the same spread as scaled dot products of random unit-variance vectors.
        query = F.normalize(query, dim=-1)
        key = F.normalize(key, dim=-1)
        default_scale = math.sqrt(dk)
    else:
        # With Dk == 0 every logit is an empty sum (0): any scale gives the same uniform rows.
        default_scale = 1.0 / math.sqrt(dk) if dk else 1.0
    spec = AttentionSpec(
        query,
        key,
        value,
        mask,
        causal=causal,
        window=win,
        scale=default_scale if scale is None else float(scale),
        dropout_p=float(dropout_p),
        need_weights=need_weights,
        alibi_slopes=alibi_slopes,
    )
    return zero_unreachable_keys(spec)


def forbid_below_threshold(mask: Tensor) -> Tensor:
    """Additive mask values at or below ``finfo(dtype).min / 2`` become ``-inf``.

    Hugging Face and others forbid a key with ``torch.finfo(dtype).min`` instead of ``-inf``.
    Taken literally, a row whose every key carries that value is not empty: its logits all
    round to the same huge negative number and softmax spreads the row evenly over the keys,
    and a kernel's recomputed backward then disagrees with the forward. No bias meant as a
    preference is that large, so such values mean "forbidden", exactly like ``-inf``.
    """
    if torch.compiler.is_compiling():
        return mask.masked_fill(mask <= torch.finfo(mask.dtype).min / 2, float("-inf"))
    low = mask <= torch.finfo(mask.dtype).min / 2
    return mask.masked_fill(low, float("-inf")) if bool(low.any()) else mask


def zero_unreachable_keys(spec: AttentionSpec) -> AttentionSpec:
    """Zero keys and values no query may attend to, so that NaN stored there (as at padded
    positions) cannot reach outputs or gradients through ``0 * nan`` in ``P @ V``.

    Structure alone only ever cuts keys on the left (a window's left edge behind the first
    query), which is found by arithmetic; a mask is reduced over queries at its own size.
    """
    _, h, hkv, nq, nk, _, _ = spec.shape
    reachable: Tensor | None = None  # (B|1, Hkv|1, Nk)
    if spec.window is not None and nk - nq - spec.window[0] > 0:
        positions = torch.arange(nk, device=spec.key.device)
        reachable = (positions >= nk - nq - spec.window[0])[None, None]
    mask = spec.mask
    if mask is not None:
        allowed = mask if mask.dtype == torch.bool else ~torch.isneginf(mask)
        if allowed.shape[-2] > 1 and (spec.causal or spec.window is not None):
            # A query-dependent mask is already (Nq, Nk)-sized, so joining it with the
            # structure costs no more than the mask itself.
            structure = spec.structure()
            assert structure is not None
            allowed = allowed & structure
        by_mask = allowed.any(dim=-2).expand(*allowed.shape[:2], nk)  # (B|1, H|1, Nk)
        if by_mask.shape[1] == h and h != hkv:
            by_mask = by_mask.unflatten(1, (hkv, h // hkv)).any(dim=2)  # (B|1, Hkv, Nk)
        reachable = by_mask if reachable is None else reachable & by_mask
    # The early exit is only a shortcut; while compiling, a data-dependent branch would break
    # the graph, so the general path (a no-op fill when nothing is unreachable) is taken.
    if reachable is None or (not torch.compiler.is_compiling() and bool(reachable.all())):
        return spec
    unreachable = ~reachable.unsqueeze(-1)  # (B|1, Hkv|1, Nk, 1)
    return spec.replace(
        key=spec.key.masked_fill(unreachable, 0.0), value=spec.value.masked_fill(unreachable, 0.0)
    )
