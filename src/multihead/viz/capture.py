"""Record the attention weights of a model while it runs, without changing what it computes.

:func:`capture_attention` listens to every :class:`~multihead.MultiHeadAttention` inside a
model through the module observer hook (:func:`multihead.modules.attention.add_attention_observer`)
and recomputes the weights from the projected queries and keys with the reference kernel. The
kernel the module runs, and so its output, is untouched: capturing is bitwise invisible.

Only what is asked for is computed: a subset of the attention modules (by name or index), of
the heads, and of the query rows, so looking at one row of a long input costs one row.

Shape legend: ``B`` batch, ``H`` heads, ``h`` recorded heads, ``Nq``/``Nk`` query/key lengths,
``q`` recorded query rows.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..cache import StaticKVCache
from ..functional import AttentionSpec
from ..functional.reference import attention_weights
from ..masks import merge
from ..modules.attention import MultiHeadAttention
from ..modules.observers import add_attention_observer

__all__ = [
    "AttentionCall",
    "AttentionMap",
    "AttentionRecord",
    "attention_modules",
    "capture_attention",
    "maps_from_record",
]


def attention_modules(model: nn.Module) -> dict[str, MultiHeadAttention]:
    """Every :class:`MultiHeadAttention` inside ``model`` by its ``named_modules`` name, in
    model order (which is also the index :func:`capture_attention`'s ``layers`` refers to).

    A model that *is* one attention module maps the name ``""`` to itself.

    Example:
        >>> from multihead.modules.layers import DecoderLayer
        >>> list(attention_modules(DecoderLayer(8, 2, 16)))
        ['self_attn', 'cross_attn']
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    hf_names = _hugging_face_names()
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, MultiHeadAttention) or _runs_our_kernels(module, hf_names)
    }


def _hugging_face_names() -> frozenset[str]:
    """``attn_implementation`` names under which Hugging Face modules run our kernels."""
    import sys

    hf = sys.modules.get("multihead.interop.huggingface")  # registered only if imported
    return hf.registered_names() if hf is not None else frozenset()


def _runs_our_kernels(module: nn.Module, hf_names: frozenset[str]) -> bool:
    """A Hugging Face attention module dispatching to multihead (``attn_implementation``)."""
    config = getattr(module, "config", None)
    return (
        bool(hf_names)
        and "Attention" in type(module).__name__
        and getattr(config, "_attn_implementation", None) in hf_names
    )


@dataclass(frozen=True, kw_only=True)
class AttentionCall:
    """What one forward call of one attention module looked like.

    ``weights[:, :, r]`` of the recorded tensor is query row ``query_start + r * query_step``
    of the call. ``query_positions`` gives those rows' positions on the key axis (bottom-right
    aligned for self-attention with fewer queries than keys, as with a key/value cache).
    """

    heads: tuple[int, ...]  # the original head indices, in the order of the recorded tensor
    query_start: int  # first recorded query row
    query_stop: int  # one past the last recorded query row (a slice's stop)
    query_step: int  # stride between recorded query rows
    num_queries: int  # Nq of the call (all rows, recorded or not)
    num_keys: int  # Nk
    causal: bool
    self_attention: bool  # the key/value input was the query input

    @property
    def query_rows(self) -> list[int]:
        """Indices (in the call's ``Nq``) of the recorded rows."""
        return list(range(self.query_start, self.query_stop, self.query_step))

    @property
    def query_positions(self) -> list[int]:
        """The recorded rows' positions on the key axis: ``row + (Nk - Nq)`` for
        self-attention, where fewer queries than keys means cached keys come first (the new
        tokens are the last ones), and the row itself for cross-attention."""
        shift = self.num_keys - self.num_queries if self.self_attention else 0
        return [r + shift for r in self.query_rows]


class AttentionRecord(Mapping[str, list[Tensor]]):
    """The weights captured by :func:`capture_attention`: module name -> one tensor per call.

    Each tensor is ``(B, h, q, Nk)`` float32 on the CPU, detached, rows summing to 1 (0 for a
    query that may attend to nothing). ``record.calls[name][i]`` describes call ``i``
    (:class:`AttentionCall`: which heads and rows, self- or cross-attention).

    Example:
        >>> mha = MultiHeadAttention(8, 2)
        >>> with capture_attention(mha) as record:
        ...     _ = mha(torch.randn(1, 3, 8))
        >>> record[""][0].shape
        torch.Size([1, 2, 3, 3])
    """

    def __init__(self) -> None:
        self._weights: dict[str, list[Tensor]] = {}
        self.calls: dict[str, list[AttentionCall]] = {}

    def __getitem__(self, name: str) -> list[Tensor]:
        return self._weights[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._weights)

    def __len__(self) -> int:
        return len(self._weights)

    def __repr__(self) -> str:
        parts = [f"{name!r}: {len(ws)} call(s)" for name, ws in self._weights.items()]
        return f"AttentionRecord({{{', '.join(parts)}}})"

    def last(self, name: str) -> Tensor:
        """The weights of ``name``'s most recent call, ``(B, h, q, Nk)``."""
        if name not in self._weights or not self._weights[name]:
            raise KeyError(f"no call of attention module {name!r} was recorded; got {list(self)}")
        return self._weights[name][-1]

    def clear(self) -> None:
        """Forget every recorded call (the capture, if still open, keeps recording)."""
        for name in self._weights:
            self._weights[name] = []
            self.calls[name] = []

    def _add(self, name: str, weights: Tensor, call: AttentionCall) -> None:
        self._weights.setdefault(name, []).append(weights)
        self.calls.setdefault(name, []).append(call)


def _select_modules(
    modules: dict[str, MultiHeadAttention], layers: Sequence[str | int] | str | int | None
) -> dict[str, MultiHeadAttention]:
    if layers is None:
        return modules
    if isinstance(layers, (str, int)):
        layers = [layers]
    names = list(modules)
    chosen: dict[str, MultiHeadAttention] = {}
    for item in layers:
        if isinstance(item, bool) or not isinstance(item, (str, int)):
            raise TypeError(
                f"layers must hold module names (str) or indices (int), got {type(item).__name__}"
            )
        if isinstance(item, int):
            if not -len(names) <= item < len(names):
                raise ValueError(
                    f"layers index {item} is out of range: the model has {len(names)} attention "
                    f"modules ({names})"
                )
            item = names[item]
        elif item not in modules:
            raise ValueError(
                f"layers names unknown attention module {item!r}; expected one of {names}"
            )
        chosen[item] = modules[item]
    return chosen


def _check_heads(heads: Sequence[int] | int | None, modules: dict[str, MultiHeadAttention]) -> None:
    if heads is None:
        return
    items = [heads] if isinstance(heads, int) else list(heads)
    if not items:
        raise ValueError("heads must name at least one head, got an empty sequence")
    for h in items:
        if isinstance(h, bool) or not isinstance(h, int):
            raise TypeError(f"heads must hold ints, got {type(h).__name__} {h!r}")
        for name, module in modules.items():
            if not 0 <= h < module.num_heads:
                raise ValueError(
                    f"heads must be in [0, {module.num_heads}) for module {name!r}, got {h}"
                )


def _check_queries(queries: slice | None) -> None:
    if queries is None:
        return
    if not isinstance(queries, slice):
        raise TypeError(f"queries must be a slice or None, got {type(queries).__name__}")
    for part in ("start", "stop", "step"):
        value = getattr(queries, part)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise TypeError(f"queries.{part} must be an int or None, got {value!r}")
    if queries.step is not None and queries.step < 1:
        raise ValueError(f"queries.step must be a positive int, got {queries.step}")


def _slice_spec(spec: AttentionSpec, heads: list[int], rows: slice) -> AttentionSpec:
    """The part of ``spec`` that the chosen heads and query rows need, as a self-contained spec.

    Causal/window structure depends on Nq (bottom-right alignment), so it is turned into an
    explicit bool mask *before* rows are dropped; grouped key heads are gathered per query head.
    """
    b, h, hkv, nq, nk, _, _ = spec.shape
    group = h // hkv
    kv_heads = [i // group for i in heads]
    allowed, bias = spec.split_mask()  # each (B|1, H|1, Nq|1, Nk|1) or None

    def cut(m: Tensor | None) -> Tensor | None:
        if m is None:
            return None
        if m.shape[1] != 1:
            m = m[:, heads]
        if m.shape[2] != 1:
            m = m[:, :, rows]
        return m

    allowed, bias = cut(allowed), cut(bias)
    mask = merge(allowed, bias)
    return dataclasses.replace(
        spec,
        query=spec.query[:, heads][:, :, rows],  # (B, h, q, Dk)
        key=spec.key[:, kv_heads],  # (B, h, Nk, Dk): one key head per kept query head
        value=spec.value[:, kv_heads],
        mask=mask,  # structure and ALiBi are folded in, for the kept rows and heads
        causal=False,
        window=None,
        dropout_p=0.0,
        alibi_slopes=None,
    )


def _is_self_attention(args: tuple[object, ...], kwargs: dict[str, object]) -> bool:
    if isinstance(kwargs.get("cache"), StaticKVCache):
        return False  # a static cache holds projected memory: cross-attention, key or not
    query = args[0] if args else kwargs.get("query")
    key = args[1] if len(args) > 1 else kwargs.get("key")
    return key is None or key is query


@contextlib.contextmanager
def capture_attention(
    model: nn.Module,
    *,
    layers: Sequence[str | int] | str | int | None = None,
    heads: Sequence[int] | int | None = None,
    queries: slice | None = None,
) -> Iterator[AttentionRecord]:
    """Record per-head attention weights of ``model``'s attention modules while inside the block.

    Args:
        model: any module; every :class:`MultiHeadAttention` inside it (``named_modules``) is
            a candidate, including Hugging Face models whose attention runs through ours.
        layers: module names (``"decoder.layers.0.cross_attn"``) or indices into
            :func:`attention_modules`; default all.
        heads: head indices to keep (default all); the same for every chosen module.
        queries: query rows to keep (a ``slice``, e.g. ``slice(-1, None)`` for the last row);
            default all.

    Yields:
        an :class:`AttentionRecord`, filled as the model runs and kept after the block.

    The weights are recomputed from the projected queries and keys by the reference kernel
    (float32, before dropout), under ``torch.no_grad()``; the module's own computation is not
    touched, so outputs and gradients are bitwise the same as without capturing.

    Example:
        >>> from multihead.modules.models import Seq2SeqTransformer, TransformerConfig
        >>> model = Seq2SeqTransformer(
        ...     TransformerConfig(vocab_size=10, d_model=8, num_heads=2, d_ff=16)).eval()
        >>> src, tgt = torch.randint(0, 10, (1, 5)), torch.randint(0, 10, (1, 3))
        >>> with capture_attention(model, layers=["decoder.layers.0.cross_attn"]) as rec:
        ...     _ = model(src, tgt)
        >>> rec["decoder.layers.0.cross_attn"][0].shape  # (B, H, Nt, Ns)
        torch.Size([1, 2, 3, 5])
    """
    found = attention_modules(model)
    if not found:
        raise ValueError(
            f"model ({type(model).__name__}) holds no multihead.MultiHeadAttention module to "
            "capture; for a Hugging Face model, load it with attn_implementation='multihead' "
            "(multihead.interop.huggingface.register()) or convert it with convert(model)"
        )
    chosen = _select_modules(found, layers)
    _check_heads(heads, chosen)
    _check_queries(queries)
    head_list = None if heads is None else ([heads] if isinstance(heads, int) else list(heads))
    rows = queries if queries is not None else slice(None)
    record = AttentionRecord()
    by_id = {id(module): name for name, module in chosen.items()}
    for name in chosen:
        record._weights[name] = []
        record.calls[name] = []
    # The observer sees only the projected tensors; whether the module was called for
    # self-attention (key is the query input) is read from its arguments by a pre-hook.
    pending: dict[int, bool] = {}

    def pre_hook(module: nn.Module, args: tuple[object, ...], kwargs: dict[str, object]) -> None:
        if isinstance(module, MultiHeadAttention):
            pending[id(module)] = _is_self_attention(args, kwargs)
        else:  # a Hugging Face module says so itself
            pending[id(module)] = not getattr(module, "is_cross_attention", False)

    def observer(module: nn.Module, spec: AttentionSpec) -> None:
        name = by_id.get(id(module))
        if name is None:
            return  # a module of another model, or one not selected
        b, h, _, nq, nk, _, _ = spec.shape
        kept = list(range(h)) if head_list is None else head_list
        start, stop, step = rows.indices(nq)
        with torch.no_grad():
            weights = attention_weights(_slice_spec(spec, kept, rows))  # (B, h, q, Nk)
        record._add(
            name,
            weights.detach().float().cpu(),
            AttentionCall(
                heads=tuple(kept),
                query_start=start,
                query_stop=stop,
                query_step=step,
                num_queries=nq,
                num_keys=nk,
                causal=spec.causal,
                self_attention=pending.get(id(module), nq == nk),
            ),
        )

    hooks = [m.register_forward_pre_hook(pre_hook, with_kwargs=True) for m in chosen.values()]
    handle = add_attention_observer(observer)
    try:
        yield record
    finally:
        handle.remove()
        for hook in hooks:
            hook.remove()


# ------------------------------------------------------------------------------ per-input maps


@dataclass(frozen=True, kw_only=True)
class AttentionMap:
    """The weights of one attention module for one input, ready to draw.

    ``weights`` is ``(h, q, Nk)``: per recorded head, recorded query rows by keys. Labels are
    strings, one per row (``query_tokens``) and per key (``key_tokens``).
    """

    name: str  # module name, e.g. "decoder.layers.0.cross_attn"
    kind: str  # "self" or "cross"
    weights: Tensor  # (h, q, Nk), float32
    heads: tuple[int, ...]  # original head index of each slice
    query_tokens: tuple[str, ...]
    key_tokens: tuple[str, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.weights, Tensor):
            raise TypeError(f"weights must be a torch.Tensor, got {type(self.weights).__name__}")
        if self.weights.dim() != 3:
            raise ValueError(
                f"weights must be 3-D (h, Nq, Nk), got shape {tuple(self.weights.shape)}"
            )
        h, q, nk = self.weights.shape
        if self.kind not in ("self", "cross"):
            raise ValueError(f"kind must be 'self' or 'cross', got {self.kind!r}")
        for field, want in (
            ("heads", h),
            ("query_tokens", q),
            ("key_tokens", nk),
        ):
            count = len(getattr(self, field))
            if count != want:
                raise ValueError(
                    f"{field} must have {want} entries for weights {(h, q, nk)}, got {count}"
                )


Labels = tuple[Sequence[str], Sequence[str]]


def maps_from_record(
    record: AttentionRecord,
    tokens: Mapping[str, Labels] | None = None,
    *,
    batch_index: int = 0,
    call: int = -1,
) -> list[AttentionMap]:
    """One :class:`AttentionMap` per recorded module, for one input of the batch.

    Args:
        record: from :func:`capture_attention`.
        tokens: module name -> ``(query labels, key labels)`` for the *full* query and key
            axes of the call (recorded rows are picked out); a missing module gets positions.
        batch_index: which input of the batch.
        call: which call of each module (default the last).

    Example:
        >>> mha = MultiHeadAttention(8, 2)
        >>> with capture_attention(mha, queries=slice(1, None)) as rec:
        ...     _ = mha(torch.randn(1, 3, 8))
        >>> m = maps_from_record(rec, {"": ("abc", "abc")})[0]
        >>> m.query_tokens, m.key_tokens, tuple(m.weights.shape)
        (('b', 'c'), ('a', 'b', 'c'), (2, 2, 3))
    """
    tokens = tokens or {}
    out = []
    for name, tensors in record.items():
        if not tensors:
            continue
        w, info = tensors[call], record.calls[name][call]
        if not -w.shape[0] <= batch_index < w.shape[0]:
            raise ValueError(f"batch_index must be in [0, {w.shape[0]}), got {batch_index}")
        if name in tokens:
            q_labels, k_labels = (list(map(str, t)) for t in tokens[name])
            if len(q_labels) != info.num_queries or len(k_labels) != info.num_keys:
                raise ValueError(
                    f"tokens[{name!r}] must hold {info.num_queries} query and {info.num_keys} "
                    f"key labels, got {len(q_labels)} and {len(k_labels)}"
                )
        else:
            q_labels = [str(i) for i in range(info.num_queries)]
            k_labels = [str(i) for i in range(info.num_keys)]
        out.append(
            AttentionMap(
                name=name,
                kind="self" if info.self_attention else "cross",
                weights=w[batch_index],
                heads=info.heads,
                query_tokens=tuple(q_labels[r] for r in info.query_rows),
                key_tokens=tuple(k_labels),
            )
        )
    return out
