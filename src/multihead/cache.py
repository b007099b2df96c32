"""Key/value caches for incremental (token-by-token) decoding.

An autoregressive decoder recomputes nothing for the tokens it has already seen: their keys and
values in every self-attention layer are fixed once projected (and, with rotary embeddings,
rotated at their absolute positions). A cache keeps them, so that each step projects only the
new tokens and attends from them to everything cached. Cross-attention keys and values are a
function of the encoder memory alone: they are projected once per input and reused every step.

* :class:`KVCache`: one self-attention layer. Preallocated (``max_len``: no allocation after
  the first step, a clear error past the end) or growing (capacity doubles, so appends cost
  amortized O(1)); or a sliding window (``window=W``: memory O(W), exactly attention with
  ``window=(W, 0)`` under a causal mask, as in Longformer/Mistral-style local attention).
* :class:`StaticKVCache`: one cross-attention layer; set once, read every step.
* :class:`DecoderCache`: one of each per layer of a model, the number of tokens seen, and
  ``reorder`` for beam search.

Everything is stored in the kernel layout ``(B, Hkv, N, D)`` of
:func:`multihead.functional.attention`, so grouped-query and multi-query models cache only their
``Hkv`` key/value heads. Caches are for inference: run decoding under ``torch.inference_mode()``
(or ``torch.no_grad()``) and keep one cache within one of those modes. When the keys require
gradients the cache appends out of place, so autograd stays correct, at the cost of a copy per
step.

Shape legend: ``B`` batch (rows), ``Hkv`` key/value heads, ``N`` cached length, ``D`` head size.

Example:
    >>> import torch
    >>> cache = KVCache(max_len=8)
    >>> k, v = cache.update(torch.randn(2, 1, 3, 4), torch.randn(2, 1, 3, 4))  # a 3-token prompt
    >>> k, v = cache.update(torch.randn(2, 1, 1, 4), torch.randn(2, 1, 1, 4))  # one step
    >>> k.shape, cache.length
    (torch.Size([2, 1, 4, 4]), 4)
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any, TypedDict

import torch
from torch import Tensor

if TYPE_CHECKING:
    from typing_extensions import Self, Unpack

__all__ = ["CacheOptions", "DecoderCache", "KVCache", "StaticKVCache"]


class CacheOptions(TypedDict, total=False):
    """The sizes of a :class:`KVCache`, which :class:`DecoderCache` gives every layer's."""

    max_len: int | None
    window: int | None


def _clone(cache: Any) -> Any:
    """A copy of ``cache`` with its tensors detached and copied. ``MultiHeadAttention``'s
    ``why_backend`` plans a call on one, so asking never changes the real cache."""
    other = copy.copy(cache)
    for name, value in vars(cache).items():
        if isinstance(value, Tensor):
            setattr(other, name, value.detach().clone())
    return other


_MIN_CAPACITY = 16  # first allocation of a growing cache, so short prompts do not regrow often


def _check_optional_int(value: Any, name: str, minimum: int) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int or None, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _check_layout(*, max_len: Any = None, window: Any = None) -> tuple[int | None, int | None]:
    """``KVCache``'s ``max_len`` and ``window``, checked: at most one of them is set."""
    checked = _check_optional_int(max_len, "max_len", 1), _check_optional_int(window, "window", 0)
    if None not in checked:
        raise ValueError(
            f"max_len={max_len} and window={window} cannot be combined: a sliding-window "
            "cache keeps at most window keys plus the newest chunk"
        )
    return checked


def _check_kv(key: Any, value: Any) -> None:
    for name, t in (("key", key), ("value", value)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{name} must be 4-D (B, Hkv, N, D), got shape {tuple(t.shape)}")
    if key.shape[:3] != value.shape[:3]:
        raise ValueError(
            "key and value must share (B, Hkv, N), got key "
            f"{tuple(key.shape)} and value {tuple(value.shape)}"
        )
    if key.dtype != value.dtype or key.device != value.device:
        raise ValueError(
            f"key and value must share dtype and device, got {key.dtype}/{key.device} and "
            f"{value.dtype}/{value.device}"
        )


def _check_indices(indices: Any, batch: int | None) -> Tensor:
    if not isinstance(indices, Tensor):
        raise TypeError(f"indices must be a torch.Tensor, got {type(indices).__name__}")
    if indices.dim() != 1 or indices.is_floating_point() or indices.dtype == torch.bool:
        raise ValueError(
            f"indices must be a 1-D integer tensor of batch rows, got dtype {indices.dtype} "
            f"and shape {tuple(indices.shape)}"
        )
    if batch is not None and indices.numel():
        low, high = (int(x) for x in torch.aminmax(indices))
        if low < 0 or high >= batch:
            raise ValueError(
                f"indices must select rows in [0, {batch}), got min {low} and max {high}"
            )
    return indices


class KVCache:
    """The keys and values of one self-attention layer, appended step by step.

    Buffers are allocated on the first :meth:`update` from the shape, dtype and device of the
    keys given there; later updates must match them (``reorder`` may change the batch size,
    ``reset`` empties the cache and accepts a new shape).

    Args:
        max_len: preallocate room for this many tokens; updating past it is a ``ValueError``.
            ``None`` (default): grow by doubling.
        window: keep only the last ``window`` keys (plus the chunk being added); attending from
            new queries to what :meth:`update` returns, with a causal mask, is exactly attention
            with ``window=(window, 0)`` over the whole sequence. Memory stays O(window).
            Not combinable with ``max_len``.

    Attributes:
        length: tokens appended since the last reset: the absolute position of the next token.
        num_stored: keys held now (``length``, or at most ``window`` plus a chunk).

    Example:
        >>> cache = KVCache(window=2)
        >>> for _ in range(5):
        ...     k, v = cache.update(torch.randn(1, 2, 1, 8), torch.randn(1, 2, 1, 8))
        >>> cache.length, k.shape[2]  # five seen; the last 2 plus the newest are attended
        (5, 3)
    """

    def __init__(self, *, max_len: int | None = None, window: int | None = None) -> None:
        self.max_len, self.window = _check_layout(max_len=max_len, window=window)
        self._key: Tensor | None = None  # (B, Hkv, capacity, Dk)
        self._value: Tensor | None = None  # (B, Hkv, capacity, Dv)
        self._stored = 0
        self.length = 0

    def __repr__(self) -> str:
        kind = (
            f"max_len={self.max_len}"
            if self.max_len is not None
            else f"window={self.window}"
            if self.window is not None
            else "growing"
        )
        return f"KVCache({kind}, length={self.length}, num_stored={self._stored})"

    # ---------------------------------------------------------------------------- reading

    @property
    def num_stored(self) -> int:
        """Keys held now."""
        return self._stored

    @property
    def capacity(self) -> int:
        """Tokens the buffers have room for (0 before the first update)."""
        return 0 if self._key is None else self._key.shape[2]

    @property
    def batch_size(self) -> int | None:
        """``B`` of the buffers, or ``None`` before the first update."""
        return None if self._key is None else self._key.shape[0]

    @property
    def key(self) -> Tensor | None:
        """The stored keys ``(B, Hkv, num_stored, Dk)`` (a view), or ``None`` when empty."""
        return None if self._key is None else self._key[:, :, : self._stored]

    @property
    def value(self) -> Tensor | None:
        """The stored values ``(B, Hkv, num_stored, Dv)`` (a view), or ``None`` when empty."""
        return None if self._value is None else self._value[:, :, : self._stored]

    # ---------------------------------------------------------------------------- writing

    def _allocate(self, key: Tensor, value: Tensor, capacity: int) -> None:
        b, hkv, _, dk = key.shape
        self._key = key.new_empty((b, hkv, capacity, dk))
        self._value = value.new_empty((b, hkv, capacity, value.shape[3]))

    def _check_matches(self, key: Tensor, value: Tensor) -> None:
        assert self._key is not None and self._value is not None
        expected = (self._key.shape[0], self._key.shape[1], self._key.shape[3])
        got = (key.shape[0], key.shape[1], key.shape[3])
        if got[0] != expected[0]:
            raise ValueError(
                f"key has batch size {got[0]} but the cache holds {expected[0]} rows; "
                "call reorder(indices) to change rows (beam search) or reset() to start over"
            )
        if got != expected or value.shape[3] != self._value.shape[3]:
            raise ValueError(
                f"key (B, Hkv, N, Dk) = {tuple(key.shape)} and value Dv = {value.shape[3]} do not "
                f"match the cache's (B, Hkv, Dk) = {expected}, Dv = {self._value.shape[3]}"
            )
        if key.dtype != self._key.dtype or key.device != self._key.device:
            raise ValueError(
                f"key is {key.dtype} on {key.device} but the cache holds {self._key.dtype} on "
                f"{self._key.device}"
            )

    def next_num_keys(self, n: int) -> int:
        """How many keys the next ``update`` with ``n`` new tokens will return (``Nk``)."""
        kept = self._stored if self.window is None else min(self._stored, self.window)
        return kept + n

    def update(self, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor]:
        """Append ``key (B, Hkv, n, Dk)`` and ``value (B, Hkv, n, Dv)``; return every key and
        value to attend to, ``(B, Hkv, Nk, Dk)`` and ``(B, Hkv, Nk, Dv)``, the new ones last.

        The results are views into the cache's buffers, valid until the next ``update``,
        ``reorder`` or ``reset``. Without a window ``Nk = length``; with one, ``Nk`` is at most
        ``window + n``.
        """
        _check_kv(key, value)
        n = key.shape[2]
        if self._key is not None and self._stored > 0:
            self._check_matches(key, value)
        if self.max_len is not None and self.length + n > self.max_len:
            raise ValueError(
                f"KVCache(max_len={self.max_len}) is full: it holds {self.length} tokens and "
                f"cannot take {n} more; preallocate a larger max_len"
            )
        if key.requires_grad or value.requires_grad:
            return self._update_autograd(key, value)

        stored = self._stored
        start = 0 if self.window is None else max(0, stored - self.window)
        needed = stored + n
        if self._key is None or (stored == 0 and not self._fits(key, value)):
            if self.max_len is not None:
                capacity = self.max_len
            elif self.window is not None:
                capacity = max(2 * self.window, self.window + n, 1)
            else:
                capacity = max(_MIN_CAPACITY, n)
            self._allocate(key, value, capacity)
        assert self._key is not None and self._value is not None
        if needed > self.capacity:
            if self.window is not None:
                # Slide: keep the last `window` keys at the front. Copying W keys once every
                # ~W steps keeps appends amortized O(1) and memory O(W).
                kept = stored - start
                if kept + n <= self.capacity:
                    self._key[:, :, :kept] = self._key[:, :, start:stored].clone()
                    self._value[:, :, :kept] = self._value[:, :, start:stored].clone()
                else:
                    self._grow(kept + n, start, stored)
                stored, start, needed = kept, 0, kept + n
            else:
                self._grow(max(needed, 2 * self.capacity), 0, stored)
        assert self._key is not None and self._value is not None
        self._key[:, :, stored:needed] = key
        self._value[:, :, stored:needed] = value
        self._stored = needed
        self.length += n
        return self._key[:, :, start:needed], self._value[:, :, start:needed]

    def _fits(self, key: Tensor, value: Tensor) -> bool:
        """Whether the buffers can hold ``key``/``value`` (after a reset: reuse them)."""
        assert self._key is not None and self._value is not None
        return (
            self._key.shape[:2] == key.shape[:2]
            and self._key.shape[3] == key.shape[3]
            and self._value.shape[3] == value.shape[3]
            and self._key.dtype == key.dtype
            and self._key.device == key.device
        )

    def _grow(self, capacity: int, start: int, stop: int) -> None:
        assert self._key is not None and self._value is not None
        old_key, old_value = self._key, self._value
        b, hkv, _, dk = old_key.shape
        self._key = old_key.new_empty((b, hkv, capacity, dk))
        self._value = old_value.new_empty((b, hkv, capacity, old_value.shape[3]))
        self._key[:, :, : stop - start] = old_key[:, :, start:stop]
        self._value[:, :, : stop - start] = old_value[:, :, start:stop]

    def _update_autograd(self, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor]:
        # Out of place: tensors returned earlier may be saved for backward and must not change.
        if self._key is None or self._stored == 0:
            all_key, all_value = key, value
        else:
            assert self._value is not None
            start = 0 if self.window is None else max(0, self._stored - self.window)
            all_key = torch.cat([self._key[:, :, start : self._stored], key], dim=2)
            all_value = torch.cat([self._value[:, :, start : self._stored], value], dim=2)
        self._key, self._value = all_key, all_value
        self._stored = all_key.shape[2]
        self.length += key.shape[2]
        return all_key, all_value

    def reorder(self, indices: Tensor) -> None:
        """Keep (and repeat) batch rows ``indices (B',)`` in that order, as beam search does
        when it moves hypotheses between rows. The batch size becomes ``B'``."""
        indices = _check_indices(indices, self.batch_size)
        if self._key is None or self._value is None:
            return
        indices = indices.to(self._key.device)
        if self._key.requires_grad or self._value.requires_grad:
            self._key = self._key.index_select(0, indices)
            self._value = self._value.index_select(0, indices)
            return
        stored = self._stored
        key = self._key.new_empty((indices.shape[0], *self._key.shape[1:]))
        value = self._value.new_empty((indices.shape[0], *self._value.shape[1:]))
        # Only the filled part is copied; the room beyond it stays preallocated.
        key[:, :, :stored] = self._key[:, :, :stored].index_select(0, indices)
        value[:, :, :stored] = self._value[:, :, :stored].index_select(0, indices)
        self._key, self._value = key, value

    def clone(self) -> Self:
        """An independent copy: updating it never changes this cache (see :func:`_clone`)."""
        return _clone(self)

    def reset(self) -> None:
        """Forget every token (the buffers are kept for reuse)."""
        self._stored = 0
        self.length = 0


class StaticKVCache:
    """The keys and values of one cross-attention layer: projected from the encoder memory once
    (on the first step) and reused by every later step.

    Example:
        >>> cache = StaticKVCache()
        >>> cache.set(torch.randn(2, 4, 7, 8), torch.randn(2, 4, 7, 8))
        >>> cache.is_set, cache.key.shape
        (True, torch.Size([2, 4, 7, 8]))
    """

    def __init__(self) -> None:
        self.key: Tensor | None = None  # (B, Hkv, Ns, Dk)
        self.value: Tensor | None = None  # (B, Hkv, Ns, Dv)

    def __repr__(self) -> str:
        shape = None if self.key is None else tuple(self.key.shape)
        return f"StaticKVCache(key={shape})"

    @property
    def is_set(self) -> bool:
        """Whether keys and values are stored."""
        return self.key is not None

    @property
    def batch_size(self) -> int | None:
        """``B`` of the stored keys, or ``None`` when empty."""
        return None if self.key is None else self.key.shape[0]

    def set(self, key: Tensor, value: Tensor) -> None:
        """Store ``key (B, Hkv, Ns, Dk)`` and ``value (B, Hkv, Ns, Dv)``."""
        _check_kv(key, value)
        self.key, self.value = key, value

    def reorder(self, indices: Tensor) -> None:
        """Keep (and repeat) batch rows ``indices (B',)``, as :meth:`KVCache.reorder`."""
        indices = _check_indices(indices, self.batch_size)
        if self.key is None or self.value is None:
            return
        indices = indices.to(self.key.device)
        self.key = self.key.index_select(0, indices)
        self.value = self.value.index_select(0, indices)

    def clone(self) -> Self:
        """An independent copy: updating it never changes this cache (see :func:`_clone`)."""
        return _clone(self)

    def reset(self) -> None:
        """Forget the stored keys and values (a new input comes)."""
        self.key = self.value = None


class DecoderCache:
    """The caches of a whole decoder: one :class:`KVCache` per self-attention layer and, for an
    encoder-decoder, one :class:`StaticKVCache` per cross-attention layer.

    Models make one with ``model.new_cache(...)`` and take it as ``cache=`` in ``forward`` /
    ``decode``; they advance :attr:`length` by the number of tokens fed.

    Args:
        num_layers: decoder layers.
        max_len: preallocated room per layer (see :class:`KVCache`); ``None``: growing.
        window: sliding-window caches (see :class:`KVCache`).
        cross: also hold cross-attention caches (encoder-decoder models).

    Example:
        >>> cache = DecoderCache(2, max_len=16, cross=True)
        >>> len(cache), cache.length, cache.cross_attn is not None
        (2, 0, True)
    """

    def __init__(
        self, num_layers: int, *, cross: bool = False, **options: Unpack[CacheOptions]
    ) -> None:
        if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 0:
            raise ValueError(f"num_layers must be an int >= 0, got {num_layers!r}")
        if not isinstance(cross, bool):
            raise TypeError(f"cross must be a bool, got {type(cross).__name__}")
        # Checked here once (also with no layers), then the same sizes for every layer.
        self.max_len, self.window = _check_layout(**options)
        self.self_attn: tuple[KVCache, ...] = tuple(
            KVCache(max_len=self.max_len, window=self.window) for _ in range(num_layers)
        )
        self.cross_attn: tuple[StaticKVCache, ...] | None = (
            tuple(StaticKVCache() for _ in range(num_layers)) if cross else None
        )
        self.length = 0  # tokens fed so far: the position of the next one

    def __len__(self) -> int:
        return len(self.self_attn)

    def __repr__(self) -> str:
        return (
            f"DecoderCache(num_layers={len(self)}, length={self.length}, "
            f"max_len={self.max_len}, window={self.window}, cross={self.cross_attn is not None})"
        )

    def check_room(self, n: int) -> None:
        """Raise ``ValueError`` when ``n`` more tokens do not fit a preallocated cache."""
        if self.max_len is not None and self.length + n > self.max_len:
            raise ValueError(
                f"the cache has max_len={self.max_len} and holds {self.length} tokens; "
                f"it cannot take {n} more (make it with a larger max_len)"
            )

    def advance(self, n: int) -> None:
        """Record that ``n`` more tokens were fed (models call this after a forward)."""
        self.length += n

    def reorder(self, indices: Tensor) -> None:
        """Select batch rows ``indices (B',)`` in every layer (beam search)."""
        for cache in self.self_attn:
            cache.reorder(indices)
        for cross in self.cross_attn or ():
            cross.reorder(indices)

    def reset(self) -> None:
        """Empty every layer's cache (cross-attention ones included)."""
        for cache in self.self_attn:
            cache.reset()
        for cross in self.cross_attn or ():
            cross.reset()
        self.length = 0
