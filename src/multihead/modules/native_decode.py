"""A whole decoding step of a float32 :class:`~multihead.modules.models.DecoderLM` in C.

At batch 1 a step reads every weight once; the products alone run at the memory's speed, and
what separates a step from it is everything else: on GPT-2 small, one core, about 150 operator
calls per step (norms, attention, activations, residual adds) and the Python between them cost
~2.5 ms of a ~17 ms step. ``csrc/decode_step.c`` (built by :mod:`multihead._native`) runs all
layers, the final norm and the LM head for one new token per row in one call: products on the
weights as ``nn.Linear`` stores them, in float32, everything between them fused into a few loops
(see the C file for the arithmetic). :class:`~multihead.modules.lean_decode.LeanStepper` uses
it for every step that feeds one token per row (the prompt stays in PyTorch), where
:func:`native_step` accepts the model: every tensor float32 on the CPU, contiguous; layers of
exactly the classes this file reads (``MultiHeadAttention`` without rotary positions or ALiBi,
``FeedForward``, ``nn.LayerNorm``/``nn.RMSNorm``, ``nn.Linear``), the methods it stands in for
as they were at import. Anything else, the C code missing (no compiler, ``MULTIHEAD_NATIVE=0``),
or autocast on: the lean step's PyTorch path, with the same results up to float32 rounding.

Every call checks, before C reads a pointer, that the model is still the one the step was built
for: the same modules, of the same classes, in the same places, in evaluation mode, with nothing
set on their instances since (a hook, a ``forward``, ``torch.compile``), the same activation
functions and norm epsilons, no parameter where there was none, each weight the tensor it was,
with the same storage, shape, strides and dtype, and no method it stands in for patched.
Anything changed (``layer.weight.data = ...``, a new ``lm_head``, a bias added) turns the C
step off for that stepper; weights changed in place are read as they are. The cache and input
are checked too.
"""

from __future__ import annotations

import ctypes
from typing import TYPE_CHECKING, Any, NamedTuple, cast

import torch
from torch import Tensor, nn

from .. import _native
from .attention import MultiHeadAttention
from .feedforward import _ACTIVATION_FNS, FeedForward
from .layers import EncoderLayer

if TYPE_CHECKING:
    from .models import DecoderLM

__all__ = ["NativeStep", "native_step"]

# Codes shared with decode_step.c.
_NORMS = {nn.LayerNorm: 0, nn.RMSNorm: 1}
_ACTIVATIONS = {"gelu": 1, "relu": 2, "gelu_tanh": 3, "silu": 4}
_DIMS = 16  # D_COUNT

# The methods whose arithmetic the C step reproduces, as they were at import: one patched later
# (instrumentation, a LoRA wrapper) keeps the PyTorch path.
_READS: dict[tuple[type, str], object] = {
    (cls, "forward"): cls.forward
    for cls in (nn.Linear, nn.LayerNorm, nn.RMSNorm, nn.Identity, FeedForward)
}
_READS.update(
    {
        (MultiHeadAttention, name): getattr(MultiHeadAttention, name)
        for name in ("project", "_project_query", "_project_kv", "_heads")
    }
)


def _patched() -> bool:
    return any(getattr(cls, name, None) is not fn for (cls, name), fn in _READS.items())


def _activation_code(ff: FeedForward) -> int:
    """The C code of the function ``ff`` runs (``ff._act``, which must be the one its name
    says), or 0."""
    if _ACTIVATION_FNS.get(ff.activation) is not ff._act:
        return 0
    return _ACTIVATIONS.get(ff.activation, 0)


class _Slot(NamedTuple):
    """One tensor the C code reads: where it lives and what it was when the step was built."""

    owner: nn.Module
    name: str
    tensor: Tensor
    ptr: int
    shape: torch.Size
    stride: tuple[int, ...]


def _norm_kind(module: Any, e: int) -> int | None:
    """The C code of a norm over ``e`` features (its weight and bias, where it has them,
    ``(e,)``: C reads ``e`` values of each), or ``None``."""
    kind = _NORMS.get(type(module))
    if kind is None or tuple(module.normalized_shape) != (e,):
        return None
    for p in (module.weight, getattr(module, "bias", None)):
        if p is not None and tuple(p.shape) != (e,):
            return None
    return kind


def _fits(linear: Any, shape: tuple[int, int]) -> bool:
    """Whether ``linear`` is an ``nn.Linear`` with a weight of ``shape`` and a bias, if any, of
    ``(shape[0],)``: C reads that many values of each."""
    if type(linear) is not nn.Linear or tuple(linear.weight.shape) != shape:
        return False
    return linear.bias is None or tuple(linear.bias.shape) == (shape[0],)


def _eps(module: Any) -> float:
    if not hasattr(module, "eps"):
        return 0.0  # nn.Identity: no final norm, an unused slot
    eps = module.eps
    return torch.finfo(torch.float32).eps if eps is None else float(eps)  # RMSNorm's default


class NativeStep:
    """The C decoding step of one model; built by :func:`native_step`. ``__call__(x, keys,
    values, pos)`` runs it, or returns ``None`` when it cannot be sure to reproduce the model
    now (a weight replaced since it was built, autocast on, a cache of another layout)."""

    def __init__(self, model: DecoderLM, dims: dict[str, int], norms: list[nn.Module]) -> None:
        self.model = model
        self.dims = dims
        self._slots: list[_Slot | None] = []  # None: a NULL pointer (no bias, no gate)
        self._empty: list[tuple[nn.Module, str]] = []  # parameters that were None
        # Every module the C step stands in for, as (parent, attribute, module or None, type).
        self._tree: list[tuple[nn.Module, str, object, type]] = []
        decoder = model.decoder
        self._record(model, "decoder", "lm_head")
        self._record(decoder, "layers", "norm")
        for i, layer in enumerate(_layers(model)):
            self._record(decoder.layers, str(i))
            self._record(layer, "self_attn", "feed_forward", "norm1", "norm2")
            self._record(layer.self_attn, "q_proj", "k_proj", "v_proj", "out_proj")
            self._record(layer.feed_forward, "linear1", "gate", "linear2")
        # Each module with the size of its instance dictionary: anything set on an instance
        # since (a ``forward``, ``_call_impl``, ``torch.compile``'s ``_compiled_call_impl``)
        # grows it.
        self._modules = [
            (m, len(m.__dict__)) for _, _, m, _ in self._tree if isinstance(m, nn.Module)
        ]
        self._activations = [(ff, ff._act) for ff in self._feed_forwards()]
        self._norms = [(m, getattr(m, "eps", None)) for m in norms]
        for layer in _layers(model):
            attn, ff = layer.self_attn, cast(FeedForward, layer.feed_forward)
            owners = (
                layer.norm1,
                attn.q_proj,
                attn.k_proj,
                attn.v_proj,
                attn.out_proj,
                layer.norm2,
                ff.linear1,
                ff.gate,
                ff.linear2,
            )
            for owner in owners:
                self._slots += [self._slot(owner, "weight"), self._slot(owner, "bias")]
        final: nn.Module | None = model.decoder.norm
        final = None if type(final) is nn.Identity else final
        self._slots += [self._slot(final, "weight"), self._slot(final, "bias")]
        self._slots += [self._slot(model.lm_head, "weight"), self._slot(model.lm_head, "bias")]
        self._checked = [s for s in self._slots if s is not None]
        pointers = [0 if s is None else s.ptr for s in self._slots]
        self._params = (ctypes.c_void_p * len(pointers))(*pointers)
        self._eps = (ctypes.c_double * len(norms))(*(_eps(m) for m in norms))
        self.stale = False

    def _record(self, parent: nn.Module, *names: str) -> None:
        for name in names:
            child = _child(parent, name)
            self._tree.append((parent, name, child, type(child)))

    def _feed_forwards(self) -> list[FeedForward]:
        return [cast(FeedForward, layer.feed_forward) for layer in _layers(self.model)]

    def _slot(self, owner: nn.Module | None, name: str) -> _Slot | None:
        t = None if owner is None else owner._parameters.get(name)
        if t is None:
            if owner is not None:
                self._empty.append((owner, name))
            return None
        # A detached alias keeps the storage alive even if the parameter's data is swapped:
        # the pointer never dangles, and the check below notices the swap.
        alias = t.detach()
        return _Slot(owner, name, alias, t.data_ptr(), t.shape, t.stride())  # type: ignore[arg-type]

    def _unchanged(self) -> bool:
        """Whether the model is still what the C step was built for (see the module
        docstring). A weight on another device or of another dtype is other memory or another
        dtype: both checked."""
        if _patched():
            return False
        hooks = nn.modules.module
        if hooks._global_forward_hooks or hooks._global_forward_pre_hooks:
            return False
        for parent, name, child, cls in self._tree:
            if _child(parent, name) is not child or type(child) is not cls:
                return False
        for m, size in self._modules:
            d = m.__dict__
            if len(d) != size or d["training"] or m._forward_hooks or m._forward_pre_hooks:
                return False
        for ff, act in self._activations:
            if ff._act is not act or _activation_code(ff) == 0:
                return False
        for m, eps in self._norms:
            if getattr(m, "eps", None) != eps:
                return False
        for owner, name in self._empty:
            if owner._parameters.get(name) is not None:
                return False
        f32 = torch.float32
        for owner, name, _, ptr, shape, stride in self._checked:
            t = owner._parameters.get(name)
            if (
                t is None
                or t.data_ptr() != ptr
                or t.dtype is not f32
                or t.stride() != stride
                or t.shape != shape
            ):
                return False
        return True

    def __call__(
        self, x: Tensor, keys: list[Tensor], values: list[Tensor], pos: int
    ) -> Tensor | None:
        """``x (R, E)``: the embeddings of one new token per row, at position ``pos``; the
        caches ``keys[l] (R, Hkv, L, D)`` and ``values[l] (R, Hkv, L, Dv)``, filled before
        ``pos``, are written at ``pos``. Returns the logits ``(R, V)``, or ``None`` (see the
        class)."""
        if self.stale or torch.is_autocast_enabled("cpu"):
            return None
        if not self._unchanged():
            # Something was replaced: this stepper keeps PyTorch's path (and lets go of the
            # aliases that kept the old weights' memory alive).
            self.stale = True
            self._slots, self._checked = [], []
            return None
        d = self.dims
        lib = _native._library(_native.DECODE)
        if isinstance(lib, str):
            return None
        r = x.shape[0]
        if x.dtype is not torch.float32 or x.device.type != "cpu" or x.shape != (r, d["E"]):
            return None
        room = keys[0].shape[2] if keys and keys[0].dim() == 4 else 0
        if not 0 <= pos < room or len(keys) != d["layers"] or len(values) != d["layers"]:
            return None
        key_shape = (r, d["Hkv"], room, d["D"])
        value_shape = (r, d["Hkv"], room, d["Dv"])
        for cache, shape in ((keys, key_shape), (values, value_shape)):
            for t in cache:
                if (
                    t.dtype is not torch.float32
                    or t.device.type != "cpu"
                    or t.shape != shape
                    or not t.is_contiguous()
                ):
                    return None
        x = x.contiguous().clone()  # written in place by the step
        logits = torch.empty(r, d["V"], dtype=torch.float32)
        dims = (ctypes.c_int64 * _DIMS)(
            d["E"],
            d["H"],
            d["Hkv"],
            d["D"],
            d["Dv"],
            d["F"],
            d["V"],
            room,
            d["layers"],
            d["norm"],
            d["norm_first"],
            d["act"],
            d["gated"],
            d["final_norm"],
            r,
            pos,
        )
        key_ptrs = (ctypes.c_void_p * len(keys))(*(t.data_ptr() for t in keys))
        value_ptrs = (ctypes.c_void_p * len(values))(*(t.data_ptr() for t in values))
        done = lib.mh_decode_step(
            dims,
            self._params,
            self._eps,
            x.data_ptr(),
            key_ptrs,
            value_ptrs,
            logits.data_ptr(),
            torch.get_num_threads(),
        )
        if done != 0:
            raise MemoryError("the C decoding step could not allocate its work memory")
        return logits


def _child(parent: nn.Module, name: str) -> object:
    """``getattr(parent, name)`` for a sub-module or a plain attribute (``FeedForward.gate``
    is ``None`` without a gate), without ``nn.Module.__getattr__``'s slower path."""
    modules = parent._modules
    return modules[name] if name in modules else parent.__dict__.get(name)


def _layers(model: DecoderLM) -> list[EncoderLayer]:
    """The decoder's layers (the lean step has checked they are ``EncoderLayer`` s)."""
    return [cast(EncoderLayer, layer) for layer in model.decoder.layers]


def native_problem_of(model: DecoderLM) -> str | None:
    """Why :func:`native_step` declines ``model`` (a lean-step model, checked by the caller),
    or ``None``."""
    if _patched():
        return "a method of nn.Linear, a norm, FeedForward or MultiHeadAttention patched"
    for t in model.parameters():
        if t.dtype is not torch.float32 or t.device.type != "cpu" or not t.is_contiguous():
            return f"a parameter of {t.dtype} on {t.device} (contiguous float32 CPU ones only)"
    return None


def native_step(model: DecoderLM) -> NativeStep | None:
    """The C step for ``model``, or ``None`` where it does not apply (see the module docstring).
    ``model`` is one the lean step accepts (:func:`~multihead.modules.lean_decode.lean_stepper`
    checked it: evaluation mode, a causal ``Encoder`` of ``EncoderLayer`` s, no hooks)."""
    if native_problem_of(model) is not None:
        return None
    layers = _layers(model)
    if not layers:
        return None
    first = layers[0]
    if (
        type(first.self_attn) is not MultiHeadAttention
        or type(first.feed_forward) is not FeedForward
    ):
        return None
    e = model.config.d_model
    attn0, ff0 = first.self_attn, cast(FeedForward, first.feed_forward)
    dims = {
        "E": e,
        "H": attn0.num_heads,
        "Hkv": attn0.num_kv_heads,
        "D": attn0.head_dim,
        "Dv": attn0.v_head_dim,
        "F": ff0.linear1.out_features,
        "V": model.lm_head.out_features,
        "layers": len(layers),
        "norm": _NORMS.get(type(first.norm1), -1),
        "norm_first": int(first.norm_first),
        "act": _activation_code(ff0),
        "gated": int(ff0.gate is not None),
        "final_norm": int(type(model.decoder.norm) is not nn.Identity),
    }
    if dims["act"] == 0 or dims["H"] % dims["Hkv"]:
        return None
    norms: list[nn.Module] = []
    for layer in layers:
        attn, ff = layer.self_attn, layer.feed_forward
        if type(attn) is not MultiHeadAttention or attn.rotary is not None:
            return None
        if (attn.num_heads, attn.num_kv_heads, attn.head_dim, attn.v_head_dim) != (
            dims["H"],
            dims["Hkv"],
            dims["D"],
            dims["Dv"],
        ):
            return None
        if type(ff) is not FeedForward or _activation_code(ff) != dims["act"]:
            return None
        if int(ff.gate is not None) != dims["gated"] or layer.norm_first != first.norm_first:
            return None
        # A list, not a dict: one module in two roles is checked for both shapes.
        linears = [
            (attn.q_proj, (dims["H"] * dims["D"], e)),
            (attn.k_proj, (dims["Hkv"] * dims["D"], e)),
            (attn.v_proj, (dims["Hkv"] * dims["Dv"], e)),
            (attn.out_proj, (e, dims["H"] * dims["Dv"])),
            (ff.linear1, (dims["F"], e)),
            (ff.linear2, (e, dims["F"])),
        ]
        if ff.gate is not None:
            linears.append((ff.gate, (dims["F"], e)))
        if not all(_fits(linear, shape) for linear, shape in linears):
            return None
        for n in (layer.norm1, layer.norm2):
            if _norm_kind(n, e) != dims["norm"]:
                return None
            norms.append(n)
    final = model.decoder.norm
    if dims["final_norm"]:
        if _norm_kind(final, e) != dims["norm"]:
            return None
        norms.append(final)
    else:
        norms.append(final)  # an unused epsilon slot
    if not _fits(model.lm_head, (dims["V"], e)):
        return None
    if _native.native_problem(_native.DECODE) is not None:  # compiled here, on first use
        return None
    return NativeStep(model, dims, norms)
