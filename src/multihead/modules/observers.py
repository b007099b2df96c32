"""Observers of attention calls: functions that see every kernel call's inputs.

:func:`add_attention_observer` registers ``fn(module, spec)``; every ``MultiHeadAttention``
forward (and Hugging Face attention running our kernels, through :mod:`multihead.interop`)
hands it the :class:`~multihead.functional.AttentionSpec` it is about to run. Observers must
not modify the spec; outputs are computed exactly as without them. :mod:`multihead.viz` records
attention weights this way without switching kernels.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from ..functional import AttentionSpec

__all__ = [
    "ObserverHandle",
    "add_attention_observer",
    "has_attention_observers",
    "notify_attention_observers",
]

Observer = Callable[[nn.Module, AttentionSpec], None]
_OBSERVERS: dict[int, Observer] = {}


class ObserverHandle:
    """Returned by :func:`add_attention_observer`; ``remove()`` unregisters the observer."""

    def __init__(self, key: int) -> None:
        self._key = key

    def remove(self) -> None:
        _OBSERVERS.pop(self._key, None)


def add_attention_observer(fn: Observer) -> ObserverHandle:
    """Call ``fn(module, spec)`` on every ``MultiHeadAttention`` forward, with the projected
    q/k/v and masks as an :class:`~multihead.functional.AttentionSpec`.

    Observers see the inputs of the kernel and must not modify them; the module's output is
    computed exactly as without them. This is how attention capture (:mod:`multihead.viz`)
    records weights without switching kernels.
    """
    key = id(fn)
    while key in _OBSERVERS:
        key += 1
    _OBSERVERS[key] = fn
    return ObserverHandle(key)


def has_attention_observers() -> bool:
    """Whether any observer is registered (so callers can skip building a spec)."""
    return bool(_OBSERVERS)


def notify_attention_observers(module: nn.Module, spec: AttentionSpec) -> None:
    """Hand ``spec`` to every observer; for attention that runs our kernels outside a
    ``MultiHeadAttention`` (Hugging Face modules through :mod:`multihead.interop`)."""
    for observer in list(_OBSERVERS.values()):
        observer(module, spec)
