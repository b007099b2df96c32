"""Context parallelism inside models: :class:`MultiHeadAttention` over a sharded sequence.

A model runs with each sequence split along its length across a process group when its
self-attention modules carry a :class:`ContextParallel` (set by :func:`enable_context_parallel`).
Everything outside attention (embeddings, norms, feed-forward, the LM head) acts on each token
alone, so it runs unchanged on the rank's shard; only attention needs the other shards, and
gets them through :func:`context_parallel_attention`. Positions must be global: RoPE inside
attention uses :func:`global_positions` unless the caller passes ``positions``, ALiBi and causal
masks use global positions inside :func:`context_parallel_attention`, and additive position
tables (learned, sinusoidal) need ``positions=global_positions(...)`` passed to the model.

This module does not import :mod:`multihead.modules` (which imports it); it works on any module
with the attributes of :class:`~multihead.modules.MultiHeadAttention`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from torch import Tensor, nn

from ..positional import check_positions
from .attention import METHODS, context_parallel_attention
from .layout import LAYOUTS, global_positions

if TYPE_CHECKING:
    from ..modules.attention import MultiHeadAttention

__all__ = ["ContextParallel", "context_parallel_forward", "enable_context_parallel"]


@dataclass(frozen=True, kw_only=True)
class ContextParallel:
    """How a module's sequences are sharded: the options of :func:`context_parallel_attention`.

    Example (every rank, after ``init_process_group``)::

        cp = ContextParallel(group=None, layout="zigzag")  # None: the whole world
    """

    group: Any = None  # the process group sharing one sequence; None: the whole world
    method: str = "ring"  # memory O(N/P) per rank, unlike "allgather"
    layout: str = "zigzag"  # balances causal work across ranks (see layout.py)
    timeout: float | None = 300.0  # seconds before a silent peer counts as failed

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {self.layout!r}")

    def options(self) -> dict[str, Any]:
        """The fields, by name: keyword arguments of :func:`context_parallel_attention`."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def positions(self, local_len: int, device: Any = None) -> Tensor:
        """Global positions ``(N/P,)`` of this rank's ``local_len`` tokens."""
        return global_positions(local_len, layout=self.layout, group=self.group, device=device)


def enable_context_parallel(model: nn.Module, cp: ContextParallel | None) -> nn.Module:
    """Set ``context_parallel = cp`` on every attention module of ``model`` (``None`` turns
    it off) and return ``model``. Then call the model with this rank's shard of each sequence
    ``(B, N/P)`` and, for learned or sinusoidal positions, ``positions=cp.positions(N/P)``.

    For models with self-attention only (``DecoderLM``, ``EncoderClassifier``): cross-attention
    under context parallelism raises ``ValueError`` when called.

    Example (every rank)::

        cp = ContextParallel(layout="zigzag")
        model = enable_context_parallel(DecoderLM(config), cp)
        ids_local = shard_sequence(ids, dim=1, layout="zigzag")
        logits_local = model(ids_local, positions=cp.positions(ids_local.shape[1]))
    """
    if cp is not None and not isinstance(cp, ContextParallel):
        raise TypeError(f"cp must be a ContextParallel or None, got {type(cp).__name__}")
    found = 0
    for module in model.modules():
        if hasattr(module, "context_parallel") and hasattr(module, "project"):
            setattr(module, "context_parallel", cp)  # noqa: B010 - any MHA-like module
            found += 1
    if not found:
        raise ValueError(f"{type(model).__name__} has no MultiHeadAttention module")
    return model


def context_parallel_forward(
    mha: MultiHeadAttention,
    query: Tensor,
    key: Tensor | None,
    value: Tensor | None,
    mask: Tensor | None,
    key_padding_mask: Tensor | None,
    causal: bool,
    need_weights: bool,
    window: int | tuple[int, int] | None,
    cache: Any,
    positions: Tensor | None,
) -> Tensor:
    """:meth:`MultiHeadAttention.forward` on this rank's shard ``query (B, N/P, E)`` of a
    sequence; returns the shard of the output ``(B, N/P, E)``. ``key_padding_mask`` is the
    rank's ``(B, N/P)`` shard; ``positions`` (rotary) default to the global ones."""
    cp = mha.context_parallel
    assert cp is not None
    if not ((key is None or key is query) and (value is None or value is query)):
        raise ValueError("context_parallel is for self-attention: pass key=None and value=None")
    unsupported = {
        "cache": cache is not None,
        "need_weights": need_weights,
        "mask (use key_padding_mask)": mask is not None,
        "dropout while training": mha.training and mha.dropout > 0,
        "score='cosine'": mha.score != "dot",
    }
    bad = [name for name, given in unsupported.items() if given]
    if bad:
        raise ValueError(f"context_parallel does not support {', '.join(bad)}")
    mha._check_input(query, "query", mha.embed_dim, "embed_dim")
    b, n, _ = query.shape
    if key_padding_mask is not None and (
        not isinstance(key_padding_mask, Tensor) or key_padding_mask.shape != (b, n)
    ):
        got = getattr(key_padding_mask, "shape", type(key_padding_mask).__name__)
        raise ValueError(f"key_padding_mask must be this rank's (B, N/P) = {(b, n)}, got {got}")
    q, k, v = mha.project(query, query, query)  # (B, H, N/P, Dk), (B, Hkv, N/P, Dk|Dv)
    if mha.rotary is not None:
        if positions is None:
            positions = cp.positions(n, device=query.device)
        positions = check_positions(positions, b, n)
        q, k = mha.rotary.rotate_qk(q, k, 0, positions)
    elif positions is not None:
        raise ValueError("positions needs rotary=True (ALiBi reads global positions itself)")
    out = context_parallel_attention(
        q,
        k,
        v,
        causal=causal,
        key_padding_mask=key_padding_mask,
        window=window,
        alibi_slopes=mha.alibi_slopes,
        **cp.options(),
    )
    return mha.out_proj(out.transpose(1, 2).flatten(2))  # (B, H, N/P, Dv) -> (B, N/P, E)
