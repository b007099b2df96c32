"""Stateless attention kernels behind one contract and one registry.

:func:`attention` validates a call once, describes it as an :class:`AttentionSpec` and hands it
to a backend chosen by name or by ``"auto"``. Backends are plain functions registered with
:func:`register_backend`; users can add their own.

Shape legend: ``B`` batch, ``H`` query heads, ``Hkv`` key/value heads (``H % Hkv == 0``),
``Nq``/``Nk`` query/key lengths, ``Dk``/``Dv`` per-head key/value sizes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

from . import reference, sdpa
from ._prepare import SCORES, make_spec, zero_unreachable_keys
from ._spec import AttentionResult, AttentionSpec
from .lse import attention_with_lse, merge_attention
from .reference import masked_softmax

__all__ = [
    "SCORES",
    "AttentionResult",
    "AttentionSpec",
    "Backend",
    "attention",
    "attention_with_lse",
    "backend_names",
    "get_backend",
    "make_spec",
    "masked_softmax",
    "merge_attention",
    "register_backend",
    "select_backend",
    "zero_unreachable_keys",
]


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

from ._register_efficient import register_efficient_backends  # noqa: E402

register_efficient_backends()
