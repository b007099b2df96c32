"""A lean decoding step for decoder-only language models.

A decoding step at batch 1 reads every weight once and does little else, so the time it spends
outside the matrix products is what separates it from the memory's speed. The module tree
adds about 1 ms to a 17 ms GPT-2-small step on one core: module calls, per-call argument
checks, mask planning and cache bookkeeping, each paid 12 times per token. This module runs the
same computation as :class:`~multihead.modules.models.DecoderLM`'s cached ``forward`` without
them: one loop over the layers, a key/value cache preallocated as one tensor per layer, the
prompt and each new token written into it in place, PyTorch's ``scaled_dot_product_attention``
over the filled part (with the sdpa backend's NaN rule: a query holding NaN gives NaN). For a
float32 model, a step of one new token per row runs all of that in C instead
(:mod:`multihead.modules.native_decode`), from the same cache, where the model allows it.

It serves every :class:`~multihead.modules.models.DecoderLM` in evaluation mode whose
self-attention is a :class:`MultiHeadAttention` or a class registered with
:func:`register_lean_attention` (:mod:`multihead.quantize` registers its own, which reads one
fused q/k/v matrix). :func:`lean_stepper` returns ``None`` for anything it cannot be sure to
reproduce (ALiBi, cosine scores, a named attention backend, context parallelism, module or
global hooks, attention observers, a ``forward`` replaced on an instance, a subclass of the
decoder, its layers or the attention), and decoding then goes through the modules as before.

Shape legend: ``R`` rows (sequences), ``T`` tokens so far, ``N`` new tokens, ``H``/``Hkv``
query/key heads, ``L`` the cache's room, ``E`` model size.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..cache import DecoderCache, KVCache
from ..functional import backend_names, get_backend, sdpa
from ..functional.sdpa import _HAS_GQA
from ..positional import RotaryEmbedding
from .attention import MultiHeadAttention
from .layers import EncoderLayer
from .native_decode import native_step
from .observers import has_attention_observers
from .stacks import Encoder

if TYPE_CHECKING:
    from .models import DecoderLM

__all__ = ["LeanStepper", "lean_stepper", "register_lean_attention"]


# Methods the lean step stands in for, per class, as defined when the class was registered
# here: a method patched onto one of these classes later (steering, instrumentation) keeps the
# module path.
_STANDS_IN_FOR: dict[type, dict[str, object]] = {}
_ATTENTION_METHODS = ("forward", "_self_cached", "_spec", "build_mask", "project")


def _stand_in_for(cls: type, names: tuple[str, ...]) -> None:
    _STANDS_IN_FOR[cls] = {name: getattr(cls, name) for name in names}


_stand_in_for(Encoder, ("forward", "run", "embed"))
_stand_in_for(EncoderLayer, ("forward", "_self_attention", "_input", "_add", "_drop"))
_stand_in_for(KVCache, ("update", "next_num_keys"))
_stand_in_for(DecoderCache, ("advance",))

# Attention classes whose cached self-attention the lean step reproduces: their ``project``
# gives q, k, v split into heads, and the rest of their forward is MultiHeadAttention's.
# multihead.quantize registers its class (this package cannot import it: quantize builds on it).
_LEAN_ATTENTION: set[type[nn.Module]] = set()


def register_lean_attention(cls: type[nn.Module]) -> type[nn.Module]:
    """Let the lean step run self-attention modules of exactly class ``cls`` (no subclasses):
    a :class:`MultiHeadAttention` subclass that changes only how ``project`` computes
    ``q, k, v``. Its methods as they are now are recorded: patching one later turns the lean
    step off."""
    _LEAN_ATTENTION.add(cls)
    _stand_in_for(cls, _ATTENTION_METHODS)
    return cls


register_lean_attention(MultiHeadAttention)


def _sdpa_and_those_ahead() -> dict[str, object]:
    """PyTorch's sdpa backend and every exact backend that ``"auto"`` would try before it: the
    lean step runs sdpa, as the module path does while these are what they were at import."""
    first = get_backend("sdpa")
    ahead = {
        name: b
        for name in backend_names()
        if (b := get_backend(name)).exact and (b.priority, b.name) < (first.priority, first.name)
    }
    return {"sdpa": first, **ahead}


_BACKENDS = _sdpa_and_those_ahead()


def _hooked(module: nn.Module) -> bool:
    """Whether anything watches ``module`` or its children, or replaces their code: module
    hooks, global module hooks, attention observers, a method set on an instance or patched
    onto a class, ``Module.compile()``. The lean step would skip them."""
    hooks = nn.modules.module
    if hooks._global_forward_hooks or hooks._global_forward_pre_hooks:
        return True
    if hooks._global_backward_hooks or has_attention_observers():
        return True
    if any(
        getattr(cls, name, None) is not fn
        for cls, methods in _STANDS_IN_FOR.items()
        for name, fn in methods.items()
    ):
        return True
    for m in module.modules():
        if m._forward_hooks or m._forward_pre_hooks or m._backward_hooks:
            return True
        if getattr(m, "_compiled_call_impl", None) is not None:
            return True
        if any(callable(getattr(type(m), name, None)) for name in vars(m)):
            return True  # e.g. ``layer.forward = ...`` on one instance
    return False


def _unsupported(model: DecoderLM) -> str | None:
    """Why the lean step cannot run ``model``, or ``None`` when it can."""
    if any(m.training for m in model.modules()):
        return "a module in training mode (dropout would apply)"
    if model.config.positional == "alibi":
        return "ALiBi"
    if type(model.decoder) is not Encoder or not model.decoder.causal:
        return f"decoder of type {type(model.decoder).__name__} (not a causal Encoder)"
    if _hooked(model):
        return "hooks, observers, compiled or replaced code"
    if _sdpa_and_those_ahead() != _BACKENDS:
        return 'an attention backend that "auto" would try before sdpa, or sdpa replaced'
    for layer in model.decoder.layers:
        if type(layer) is not EncoderLayer:
            return f"layer type {type(layer).__name__}"
        attn = layer.self_attn
        if type(attn) not in _LEAN_ATTENTION:
            return f"self-attention of type {type(attn).__name__}"
        if attn.score != "dot" or attn.backend != "auto":
            return f"score={attn.score!r}, backend={attn.backend!r}"
        if attn.alibi_slopes is not None or attn.context_parallel is not None:
            return "ALiBi or context parallelism"
    return None


def _rows_independent(module: nn.Module) -> bool:
    """Whether each row of ``module``'s output depends on that row of the input alone: then the
    prompt's last position can go through the head by itself. PyTorch's linear layers and
    norms, and classes that declare ``rows_independent = True`` (multihead's quantized
    layers, whose activation scales are per token)."""
    plain = (nn.Linear, nn.LayerNorm, nn.RMSNorm, nn.Identity)
    # Declared by the class itself: a subclass (per-tensor scales, say) does not inherit it.
    return type(module) in plain or vars(type(module)).get("rows_independent") is True


class _Layer(NamedTuple):
    """What the step reads of one layer, looked up once: bound ``forward`` methods (the
    modules carry no hooks, so ``__call__`` would add only its own cost) and the head layout."""

    norm_first: bool
    norm1: Callable[[Tensor], Tensor]
    norm2: Callable[[Tensor], Tensor]
    project: Callable[[Tensor, Tensor, Tensor], tuple[Tensor, Tensor, Tensor]]
    out: Callable[[Tensor], Tensor]
    feed_forward: Callable[[Tensor], Tensor]
    rotary: RotaryEmbedding | None
    heads: int
    kv_heads: int
    head_dim: int
    v_head_dim: int

    @classmethod
    def of(cls, layer: EncoderLayer) -> _Layer:
        attn = layer.self_attn
        return cls(
            layer.norm_first,
            layer.norm1.forward,
            layer.norm2.forward,
            attn.project,
            attn.out_proj.forward,
            layer.feed_forward.forward,
            attn.rotary,
            attn.num_heads,
            attn.num_kv_heads,
            attn.head_dim,
            attn.v_head_dim,
        )


class LeanStepper:
    """Cached decoding of a :class:`~multihead.modules.models.DecoderLM` for
    :func:`multihead.decoding.generate_lm`: ``next_logits(tokens (R, T))`` feeds the tokens not
    fed yet and returns the next token's logits ``(R, V)``; ``select(rows)`` keeps (and repeats)
    rows of the cache. Built by :func:`lean_stepper`, which checks that the model is one it
    reproduces; ``max_len`` is the room for prompt and new tokens."""

    def __init__(self, model: DecoderLM, max_len: int) -> None:
        self.model = model
        self.max_len = max_len
        self.fed = 0
        self._layers = [_Layer.of(cast(EncoderLayer, m)) for m in model.decoder.layers]
        self._rows_independent = all(
            _rows_independent(m) for m in (model.decoder.norm, model.lm_head)
        )
        self._keys: list[Tensor] = []  # per layer (R, Hkv, L, D)
        self._values: list[Tensor] = []  # per layer (R, Hkv, L, Dv)
        # The whole step in C for steps of one token per row, where the model allows it.
        self._native = native_step(model)

    @torch.inference_mode()
    def next_logits(self, tokens: Tensor) -> Tensor:
        new = tokens[:, self.fed :]  # (R, N)
        start, n = self.fed, new.shape[1]
        stop = start + n
        if n == 0:
            raise ValueError(
                f"tokens must hold new tokens after the {start} fed, got shape "
                f"{tuple(tokens.shape)}"
            )
        if stop > self.max_len:
            raise ValueError(
                f"the cache holds {self.max_len} tokens; feeding {n} after {start} needs {stop}"
            )
        if self._keys and tokens.shape[0] != self._keys[0].shape[0]:
            raise ValueError(
                f"tokens must have the cache's {self._keys[0].shape[0]} rows (select() changes "
                f"them), got shape {tuple(tokens.shape)}"
            )
        decoder = self.model.decoder
        x = decoder.embed(new, start)  # (R, N, E)
        r = x.shape[0]
        if not self._keys:  # room for every layer, in its keys' and values' dtype (autocast)
            self._keys = [torch.empty(0)] * len(self._layers)
            self._values = [torch.empty(0)] * len(self._layers)
        if n == 1 and self._native is not None:
            if start == 0:
                self._allocate(x)
            logits = self._native(x[:, 0], self._keys, self._values, start)
            if logits is not None:
                self.fed = stop
                return logits
        # The new tokens see every cached one and, among themselves, the earlier ones; with an
        # empty cache that is plain causal attention, and one new token needs no mask at all.
        mask = None
        if n > 1 and start > 0:
            mask = torch.ones(n, stop, dtype=torch.bool, device=x.device).tril(start)
        causal = n > 1 and start == 0
        for i, layer in enumerate(self._layers):
            heads, kv_heads = layer.heads, layer.kv_heads
            h = layer.norm1(x) if layer.norm_first else x
            # The module's own projection (a quantized one reads its fused q/k/v weights once):
            # q (R, H, N, D), k (R, Hkv, N, D), v (R, Hkv, N, Dv).
            q, k, v = layer.project(h, h, h)
            if layer.rotary is not None:
                q, k = layer.rotary.rotate_qk(q, k, start, None)
            if start == 0:
                self._keys[i] = k.new_empty((r, kv_heads, self.max_len, k.shape[-1]))
                self._values[i] = v.new_empty((r, kv_heads, self.max_len, v.shape[-1]))
            keys, values = self._keys[i], self._values[i]
            keys[:, :, start:stop] = k
            values[:, :, start:stop] = v
            k, v = keys[:, :, :stop], values[:, :, :stop]
            options = {}
            if kv_heads != heads:  # query head h reads key/value head h // (H // Hkv)
                if _HAS_GQA:
                    options["enable_gqa"] = True
                else:
                    k = k.repeat_interleave(heads // kv_heads, dim=1)
                    v = v.repeat_interleave(heads // kv_heads, dim=1)
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, is_causal=causal, **options
            )  # (R, H, N, Dv)
            # As the module's sdpa backend: a query row holding NaN/inf gives NaN, not zeros.
            out = sdpa._propagate_nan_queries(out, q)
            out = layer.out(out.transpose(1, 2).flatten(2))  # (R, N, H * Dv)
            if layer.norm_first:
                x = x + out
                x = x + layer.feed_forward(layer.norm2(x))
            else:
                x = layer.norm1(x + out)
                x = layer.norm2(x + layer.feed_forward(x))
        self.fed = stop
        if n > 1 and not self._rows_independent:
            # As in forward: a head or norm may mix positions (one activation scale per tensor).
            return self.model.lm_head(decoder.norm(x))[:, -1]  # (R, V)
        # Only the last position's logits are asked for, and each row's are its own.
        return self.model.lm_head(decoder.norm(x[:, -1:]))[:, -1]  # (R, V)

    def _allocate(self, x: Tensor) -> None:
        """Empty caches for every layer, in ``x``'s dtype: a first step of one token per row."""
        r = x.shape[0]
        self._keys = [
            x.new_empty((r, layer.kv_heads, self.max_len, layer.head_dim)) for layer in self._layers
        ]
        self._values = [
            x.new_empty((r, layer.kv_heads, self.max_len, layer.v_head_dim))
            for layer in self._layers
        ]

    @torch.inference_mode()
    def select(self, rows: Tensor) -> None:
        self._keys = [k.index_select(0, rows.to(k.device)) for k in self._keys]
        self._values = [v.index_select(0, rows.to(v.device)) for v in self._values]


def lean_stepper(model: DecoderLM, max_len: int) -> LeanStepper | None:
    """A :class:`LeanStepper` for ``model`` with room for ``max_len`` tokens, or ``None`` when
    the model has something the lean step does not reproduce (see the module docstring)."""
    return None if _unsupported(model) is not None else LeanStepper(model, max_len)
