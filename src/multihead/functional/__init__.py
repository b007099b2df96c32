"""Stateless attention kernels behind one contract and one registry.

:func:`attention` validates a call once, describes it as an :class:`AttentionSpec` and hands it
to a backend chosen by name or by ``"auto"``. Backends are plain functions registered with
:func:`register_backend`; users can add their own.

Shape legend: ``B`` batch, ``H`` query heads, ``Hkv`` key/value heads (``H % Hkv == 0``),
``Nq``/``Nk`` query/key lengths, ``Dk``/``Dv`` per-head key/value sizes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..masks import as_window
from . import reference, sdpa
from ._checks import check_choice, check_dropout, check_mask, check_qkv, check_scale
from ._spec import AttentionResult, AttentionSpec
from .reference import masked_softmax

__all__ = [
    "AttentionResult",
    "AttentionSpec",
    "Backend",
    "attention",
    "backend_names",
    "get_backend",
    "masked_softmax",
    "register_backend",
    "select_backend",
]

SCORES = ("dot", "cosine")


@dataclass(frozen=True)
class Backend:
    """A registered attention implementation.

    ``fn`` maps an :class:`AttentionSpec` to an :class:`AttentionResult`; ``supports`` returns
    ``None`` when the backend can run a call and otherwise a readable reason why not. ``exact``
    backends compute softmax attention up to rounding; only they are chosen by ``"auto"``,
    in increasing ``priority`` order.
    """

    name: str
    fn: Callable[[AttentionSpec], AttentionResult]
    supports: Callable[[AttentionSpec], str | None]
    exact: bool
    priority: int
    description: str


_REGISTRY: dict[str, Backend] = {}


def register_backend(
    name: str,
    fn: Callable[[AttentionSpec], AttentionResult],
    *,
    supports: Callable[[AttentionSpec], str | None] | None = None,
    exact: bool,
    priority: int = 100,
    description: str = "",
    replace: bool = False,
) -> Backend:
    """Register an attention backend under ``name``.

    Example:
        >>> def plain(spec):
        ...     return get_backend("math").fn(spec)
        >>> _ = register_backend("my-plain", plain, exact=False)
        >>> "my-plain" in backend_names()
        True
    """
    if name == "auto":
        raise ValueError("'auto' is reserved and cannot name a backend")
    if name in _REGISTRY and not replace:
        raise ValueError(f"a backend named {name!r} is already registered (pass replace=True)")
    backend = Backend(
        name=name,
        fn=fn,
        supports=supports or (lambda spec: None),
        exact=exact,
        priority=priority,
        description=description,
    )
    _REGISTRY[name] = backend
    return backend


def get_backend(name: str) -> Backend:
    """The backend registered under ``name``."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"backend must be 'auto' or one of {backend_names()}, got {name!r}"
        ) from None


def backend_names() -> list[str]:
    """Names of the registered backends."""
    return sorted(_REGISTRY)


def select_backend(spec: AttentionSpec, backend: str = "auto") -> tuple[Backend, dict[str, str]]:
    """Resolve ``backend`` for ``spec``: the backend and, for each one passed over, why.

    A named backend that cannot run the call raises ``ValueError`` with its reason; ``"auto"``
    always finds one, because the reference kernel supports every call.
    """
    if backend != "auto":
        chosen = get_backend(backend)
        reason = chosen.supports(spec)
        if reason is not None:
            raise ValueError(f"backend {backend!r} cannot run this call: {reason}")
        return chosen, {}
    skipped: dict[str, str] = {}
    for candidate in sorted(_REGISTRY.values(), key=lambda b: (b.priority, b.name)):
        if not candidate.exact:
            skipped[candidate.name] = "approximate backends are only used when named"
            continue
        reason = candidate.supports(spec)
        if reason is None:
            return candidate, skipped
        skipped[candidate.name] = reason
    raise RuntimeError("no exact backend supports this call; the 'math' backend is missing")


def _zero_unreachable_keys(spec: AttentionSpec) -> AttentionSpec:
    """Zero keys and values that no query may attend to, so that NaN or inf stored there (as at
    padded positions) cannot leak into outputs or gradients through ``0 * nan``."""
    merged = spec.merged_mask()
    if merged is None or merged.shape[-1] == 1:
        return spec
    if merged.dtype == torch.bool:
        reachable = merged.any(dim=-2)  # (B|1, H|1, Nk)
    else:
        reachable = ~torch.isneginf(merged).all(dim=-2)
    _, h, hkv, _, _, _, _ = spec.shape
    if reachable.shape[1] == h and h != hkv:
        reachable = reachable.unflatten(1, (hkv, h // hkv)).any(dim=2)  # (B|1, Hkv, Nk)
    if bool(reachable.all()):
        return spec
    unreachable = ~reachable.unsqueeze(-1)  # (B|1, Hkv|1, Nk, 1)
    return AttentionSpec(
        query=spec.query,
        key=spec.key.masked_fill(unreachable, 0.0),
        value=spec.value.masked_fill(unreachable, 0.0),
        mask=spec.mask,
        causal=spec.causal,
        window=spec.window,
        scale=spec.scale,
        dropout_p=spec.dropout_p,
        need_weights=spec.need_weights,
    )


def make_spec(
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
) -> AttentionSpec:
    """Validate the arguments of :func:`attention` and return the call's :class:`AttentionSpec`."""
    check_qkv(query, key, value)
    b, h, nq, dk = query.shape
    nk = key.shape[2]
    mask = check_mask(mask, (b, h, nq, nk))
    check_scale(scale)
    check_dropout(dropout_p)
    check_choice(score, "score", SCORES)
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be a bool, got {type(causal).__name__}")
    if not isinstance(need_weights, bool):
        raise TypeError(f"need_weights must be a bool, got {type(need_weights).__name__}")
    win = as_window(window, causal=causal)
    if score == "cosine":
        # Cosine similarity of unit vectors; the default inverse temperature sqrt(Dk) gives
        # logits of the same spread as scaled dot products of random unit-variance vectors.
        query = F.normalize(query, dim=-1)
        key = F.normalize(key, dim=-1)
        default_scale = math.sqrt(dk)
    else:
        default_scale = 1.0 / math.sqrt(dk)
    spec = AttentionSpec(
        query=query,
        key=key,
        value=value,
        mask=mask,
        causal=causal,
        window=win,
        scale=default_scale if scale is None else float(scale),
        dropout_p=float(dropout_p),
        need_weights=need_weights,
    )
    return _zero_unreachable_keys(spec)


def attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    mask: Tensor | None = None,
    causal: bool = False,
    window: int | tuple[int, int] | None = None,
    scale: float | None = None,
    score: str = "dot",
    dropout_p: float = 0.0,
    need_weights: bool = False,
    backend: str = "auto",
) -> AttentionResult:
    r"""Multi-head scaled dot-product attention (Vaswani et al., 2017, Eq. 1).

    .. math::
        \mathrm{softmax}\left(\mathrm{scale} \cdot Q K^\top + \mathrm{bias}\right) V

    Args:
        query: ``(B, H, Nq, Dk)``.
        key: ``(B, Hkv, Nk, Dk)``; ``H % Hkv == 0`` (grouped-query / multi-query attention:
            query head ``h`` reads key/value head ``h // (H // Hkv)``).
        value: ``(B, Hkv, Nk, Dv)``; ``Dv`` may differ from ``Dk``.
        mask: ``None``, 2-D ``(Nq, Nk)`` or 4-D broadcastable to ``(B, H, Nq, Nk)``. Bool:
            ``True`` = may attend. Float: added to the logits (``-inf`` forbids).
        causal: forbid keys after the query. With ``Nq != Nk`` queries are aligned bottom-right
            (query ``i`` is at key position ``i + Nk - Nq``). Combines with ``mask``.
        window: sliding window: ``w`` lets the query at position ``p`` see keys in
            ``[p - w, p + w]``; ``(left, right)`` sets each side; with ``causal`` only the left.
        scale: logit multiplier; default ``1/sqrt(Dk)`` (``sqrt(Dk)`` for ``score="cosine"``,
            where it is the inverse temperature).
        score: ``"dot"`` (scaled dot product) or ``"cosine"`` (cosine similarity of q and k).
        dropout_p: dropout on the attention probabilities (pass 0 in evaluation).
        need_weights: also return the per-head weights ``(B, H, Nq, Nk)``, before dropout.
        backend: ``"auto"`` or a registered name (see :func:`backend_names`).

    Returns:
        ``AttentionResult(output (B, H, Nq, Dv), weights or None)``. A query with no key to
        attend to gets a zero output and zero weights, with finite gradients.

    Example:
        >>> q = torch.randn(2, 8, 5, 16); kv = torch.randn(2, 2, 7, 16)
        >>> out, w = attention(q, kv, kv, causal=True, need_weights=True)
        >>> out.shape, w.shape
        (torch.Size([2, 8, 5, 16]), torch.Size([2, 8, 5, 7]))
    """
    spec = make_spec(
        query,
        key,
        value,
        mask,
        causal=causal,
        window=window,
        scale=scale,
        score=score,
        dropout_p=dropout_p,
        need_weights=need_weights,
    )
    chosen, _ = select_backend(spec, backend)
    return chosen.fn(spec)


register_backend(
    "math",
    reference.math_attention,
    supports=reference.supports,
    exact=True,
    priority=1000,
    description="readable reference in float math; returns weights; any dtype",
)
register_backend(
    "sdpa",
    sdpa.sdpa_attention,
    supports=sdpa.supports,
    exact=True,
    priority=10,
    description="torch.nn.functional.scaled_dot_product_attention (fused kernels)",
)
