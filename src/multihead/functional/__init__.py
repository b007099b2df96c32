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

from . import chunked, linear, local, lowrank, reference, sdpa
from ._prepare import SCORES, AttentionOptions, KernelOptions, make_spec, refusal
from ._spec import AttentionResult, AttentionSpec
from .lse import AttentionWithLse, attention_with_lse, merge_attention

__all__ = [
    "SCORES",
    "AttentionOptions",
    "AttentionResult",
    "AttentionSpec",
    "AttentionWithLse",
    "Backend",
    "KernelOptions",
    "attention",
    "attention_with_lse",
    "backend_names",
    "get_backend",
    "make_spec",
    "merge_attention",
    "register_backend",
    "select_backend",
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
    alibi: bool = False  # takes ALiBi slopes (AttentionSpec.alibi_slopes)


_REGISTRY: dict[str, Backend] = {}


def register_backend(
    name: str,
    fn: Callable[[AttentionSpec], AttentionResult],
    *,
    supports: Callable[[AttentionSpec], str | None] | None = None,
    exact: bool,
    priority: int = 100,
    description: str = "",
    alibi: bool = False,
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
        alibi=alibi,
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
        reason = refusal(spec, chosen.supports, alibi=chosen.alibi)
        if reason is not None:
            raise ValueError(f"backend {backend!r} cannot run this call: {reason}")
        return chosen, {}
    skipped: dict[str, str] = {}
    for candidate in sorted(_REGISTRY.values(), key=lambda b: (b.priority, b.name)):
        if not candidate.exact:
            skipped[candidate.name] = "approximate backends are only used when named"
            continue
        reason = refusal(spec, candidate.supports, alibi=candidate.alibi)
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
    *,
    alibi_slopes: Tensor | None = None,
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
        alibi_slopes: ``(H,)`` ALiBi slopes (see :func:`multihead.positional.alibi_slopes`):
            adds ``-m_h * |i + Nk - Nq - j|`` to head ``h``'s logits (Press et al., 2022).

    Float masks: values at or below ``torch.finfo(mask.dtype).min / 2`` (the "minus infinity"
    Hugging Face writes) forbid the key exactly like ``-inf``.

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
        alibi_slopes=alibi_slopes,
    )
    chosen, _ = select_backend(spec, backend)
    return chosen.fn(spec)


# The built-in backends, in one table. "auto" tries the exact ones in increasing priority: the
# fused sdpa kernels whenever they can run; local (40) and chunked (50) when sdpa declines (they
# are mostly for callers who name them); math, which runs everything, last. Approximate ones
# are only used when named.
for _name, _fn, _supports, _exact, _priority, _alibi, _description in (
    # name      kernel                    supports            exact  prio  ALiBi  description
    ("sdpa",     sdpa.sdpa_attention,      sdpa.supports,      True,  10,   True,  "torch.nn.functional.scaled_dot_product_attention (fused kernels)"),
    ("local",    local.local_backend,      local.supports,     True,  40,   False, "exact sliding-window attention in O(N·W); needs window"),
    ("chunked",  chunked.chunked_backend,  chunked.supports,   True,  50,   True,  "exact; key blocks with an online softmax, O(N·D) memory; long sequences"),
    ("math",     reference.math_attention, reference.supports, True,  1000, True,  "readable reference in float math; returns weights; any dtype"),
    ("linear",   linear.linear_backend,    linear.supports,    False, 200,  False, "approximate: linear attention, phi = elu + 1 (Katharopoulos et al. 2020)"),
    ("lowrank",  lowrank.lowrank_backend,  lowrank.supports,   False, 210,  False, "approximate: Linformer-style keys/values mean-pooled to 64 rows"),
):  # fmt: skip
    register_backend(
        _name,
        _fn,
        supports=_supports,
        exact=_exact,
        priority=_priority,
        alibi=_alibi,
        description=_description,
    )
