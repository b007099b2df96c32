"""Quantized copies of models for CPU inference.

Two families, one entry point, :func:`quantize`:

* ``quantize(model)``: **dynamic int8** (:mod:`multihead.quantize.dynamic`): attention
  projections and feed-forward layers get int8 weights and per-token int8 activations; the
  head stays float. For batch work (translation, classification).
* ``quantize(model, weights="int8" | "int4" | "bf16")``: **weight-only**
  (:mod:`multihead.quantize.weight_only`): every ``nn.Linear``, the LM head included, stores
  its weights in fewer bytes; activations and the key/value cache stay floating point. For
  decoding, whose steps are bound by reading the weights. int8 runs in multihead's own kernel
  (:mod:`multihead.quantize.native`: float32 arithmetic, per-channel or, with ``group_size``,
  per-group scales), compiled on first use with the machine's C compiler.
  ``weights="float32"`` rounds nothing and only re-lays the float32 weights out for oneDNN's
  faster matrix-vector kernel.
  With ``calibration=ids``, int8/int4 weights are rounded by GPTQ
  (:mod:`multihead.quantize.gptq`) instead of to nearest, on the same grid and kernels.

Quantized models save with :func:`save_quantized` and load with :func:`load_quantized` (a
float model of the same configuration is the skeleton). Loading a float checkpoint into a
quantized model, or a quantized checkpoint as a float one, is a ``ValueError`` that says what to
do instead. See ``docs/quantization.md``.

Example:
    >>> import torch
    >>> from multihead.modules.models import DecoderLM, TransformerConfig
    >>> lm = DecoderLM(TransformerConfig(vocab_size=40, d_model=64, num_heads=2, d_ff=128))
    >>> q8 = quantize(lm, weights="int8")
    >>> type(q8.lm_head).__name__, type(lm.lm_head).__name__
    ('Int8WeightLinear', 'Linear')
    >>> q8.generate(torch.tensor([[1, 2, 3]]), 4).shape
    torch.Size([1, 7])
"""

from __future__ import annotations

import copy
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..modules.attention import MultiHeadAttention
from .dynamic import (
    KERNELS,
    Int8DynamicLinear,
    QuantizedMultiHeadAttention,
    quantize_dynamic,
    quantized_linear,
    torch_kernels_available,
)
from .gptq import RoundedWeight, check_calibration, gptq_weights
from .native import native_available, native_problem
from .weight_only import (
    DEFAULT_GROUP_SIZE,
    WEIGHT_FORMATS,
    BF16WeightLinear,
    Float32PackedLinear,
    Int4WeightLinear,
    Int8WeightLinear,
    WeightOnlyLinear,
    bf16_units,
    float32_packing_available,
    int4_kernel_available,
    int8_kernel_available,
    weight_only_linear,
)

__all__ = [
    "DEFAULT_GROUP_SIZE",
    "KERNELS",
    "MODES",
    "WEIGHT_FORMATS",
    "BF16WeightLinear",
    "Float32PackedLinear",
    "Int4WeightLinear",
    "Int8DynamicLinear",
    "Int8WeightLinear",
    "QuantizedMultiHeadAttention",
    "WeightOnlyLinear",
    "bf16_units",
    "float32_packing_available",
    "int4_kernel_available",
    "int8_kernel_available",
    "load_quantized",
    "native_available",
    "native_problem",
    "quantization_of",
    "quantize",
    "quantized_linear",
    "save_quantized",
    "torch_kernels_available",
]

MODES = ("dynamic", *WEIGHT_FORMATS)  # what ``weights=`` (and ``generate --quantize``) accept
_MARK = "_multihead_quantization"  # set on the returned root module: {"weights": ..., ...}
_FILE_FORMAT = "multihead.quantized/1"


def quantization_of(model: nn.Module) -> dict[str, Any] | None:
    """How ``model`` was quantized (``{"weights": "int8", "group_size": 64, ...}``), or ``None``
    for a float model.

    Example:
        >>> quantization_of(nn.Linear(2, 2)) is None
        True
    """
    mark = getattr(model, _MARK, None)
    if isinstance(mark, dict):
        return dict(mark)
    for module in model.modules():
        if isinstance(
            module, (QuantizedMultiHeadAttention, WeightOnlyLinear, Int8DynamicLinear)
        ) or module._get_name() in ("DynamicQuantizedLinear",):
            return {"weights": "unknown"}
    return None


def _check_weight_format(weights: Any) -> str:
    if not isinstance(weights, str):
        raise TypeError(f"weights must be a str or None, got {type(weights).__name__}")
    if weights not in MODES:
        raise ValueError(f"weights must be one of {MODES} or None, got {weights!r}")
    # The integer formats have no fallback: their kernel, and what to use where it is missing.
    # (Looked up at call time, so a test can stand in for a machine without the kernel.)
    needs = {
        "int8": (int8_kernel_available, "_weight_int8pack_mm", "'bf16' or None (dynamic int8)"),
        "int4": (int4_kernel_available, "_weight_int4pack_mm_for_cpu", "'int8'"),
    }
    if weights == "int8" and native_available():
        return weights
    if weights in needs:
        available, kernel, alternative = needs[weights]
        if not available():
            ours = f" (or multihead's int8 kernel: {native_problem()})" if weights == "int8" else ""
            raise ValueError(
                f"weights={weights!r} needs torch.ops.aten.{kernel}{ours}, which does not run "
                f"with this PyTorch/CPU; use weights={alternative} instead"
            )
    return weights


def _check_on_cpu(model: nn.Module, weights: str) -> None:
    devices = {t.device.type for t in (*model.parameters(), *model.buffers())}
    if devices - {"cpu"}:
        raise ValueError(
            f"weights={weights!r} uses PyTorch's CPU kernels; the model is on {sorted(devices)}: "
            "call quantize(model.cpu(), ...)"
        )


def quantize(
    model: nn.Module,
    *,
    weights: str | None = None,
    group_size: int | None = None,
    dtype: torch.dtype = torch.qint8,
    kernel: str = "auto",
    calibration: Any = None,
) -> nn.Module:
    """A quantized copy of ``model`` for CPU inference, in eval mode; ``model`` is untouched.

    Args:
        model: any module; its :class:`MultiHeadAttention` layers get a fused q/k/v product.
        weights: ``None`` or ``"dynamic"``: dynamic int8 of the attention and feed-forward
            layers (``dtype``, ``kernel`` as in :mod:`multihead.quantize.dynamic`).
            ``"int8"`` (per-channel scales), ``"int4"`` (grouped scales) or ``"bf16"``:
            weight-only, every ``nn.Linear`` including the LM head. ``"bf16"`` on a CPU
            without bf16 units keeps float32 weights and warns once. ``"float32"``: no
            rounding, the weights prepacked for oneDNN (faster decoding steps; without oneDNN it
            keeps ``nn.Linear`` and warns).
        group_size: input channels per scale, an even number dividing every layer's input
            size. int4: 32-128; ``None``: 64, else 128, else 32, the first that divides them
            all. int8: ``None`` (default) for one scale per output channel; a group size (128
            measured best on the character LM, ``docs/quantization.md``) for one per output
            channel and group, which needs multihead's int8 kernel. Other formats: leave it
            out.
        dtype, kernel: dynamic mode only.
        calibration: ``"int8"``/``"int4"`` of a :class:`~multihead.modules.models.DecoderLM`
            only: token ids ``(B, N)`` long (or an iterable of such batches), text like the
            model's training text. Given, the weights are rounded with GPTQ (Frantar et al.,
            2022; :mod:`multihead.quantize.gptq`) so as to keep each layer's outputs on these
            inputs, instead of each weight to its nearest grid point; same format, scales and
            kernels. ``None``: round to nearest.

    Returns:
        The quantized copy (no gradients).

    Raises:
        ValueError: ``model`` is already quantized; an unknown format; a kernel missing here
            (the message names the alternative); ``group_size`` with a format that has none,
            or not dividing every layer's input size; ``dtype``/``kernel`` given with
            ``weights``;
            ``calibration`` with another format than int8/int4, or with ids outside the
            vocabulary, of the wrong shape or longer than the model's positions.
        TypeError: ``calibration`` not long token ids, or given for a model that is not a
            ``DecoderLM``.

    Example:
        >>> from multihead.modules.models import Seq2SeqTransformer, TransformerConfig
        >>> model = Seq2SeqTransformer(TransformerConfig(vocab_size=12, d_model=32, num_heads=2))
        >>> qmodel = quantize(model)  # dynamic int8, per-token activation scales
        >>> type(qmodel.encoder.layers[0].feed_forward.linear1).__name__
        'Int8DynamicLinear'
        >>> type(model.encoder.layers[0].feed_forward.linear1).__name__  # the original: float
        'Linear'
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    done = quantization_of(model)
    if done is not None:
        raise ValueError(
            f"model is already quantized (weights={done['weights']!r}); quantize the float "
            "model instead"
        )
    mode = "dynamic" if weights is None else _check_weight_format(weights)
    batches = None
    if calibration is not None:
        if mode not in ("int8", "int4"):
            raise ValueError(
                f"calibration applies to weights='int8' or 'int4' (GPTQ rounding), got "
                f"weights={weights!r}; leave calibration out"
            )
        batches = check_calibration(model, calibration)
    if mode != "dynamic" and (dtype != torch.qint8 or kernel != "auto"):
        raise ValueError(
            f"dtype and kernel belong to the dynamic mode; with weights={mode!r} leave them "
            f"out (got dtype={dtype}, kernel={kernel!r})"
        )
    if group_size is not None and mode not in ("int8", "int4"):
        raise ValueError(
            f"group_size applies to weights='int8' or 'int4', got weights={weights!r} with "
            f"group_size={group_size!r}; leave it out"
        )
    if mode == "dynamic":
        qmodel = quantize_dynamic(copy.deepcopy(model), dtype=dtype, kernel=kernel)
        setattr(qmodel, _MARK, {"weights": "dynamic", "dtype": str(dtype)})
        return qmodel
    _check_on_cpu(model, mode)
    if mode == "int4":
        group_size = _check_group_size(model, group_size)
    elif mode == "int8" and group_size is not None:
        group_size = _check_group_size(model, group_size)
        problem = native_problem()
        if problem is not None:
            raise ValueError(
                f"weights='int8' with group_size={group_size} needs multihead's int8 kernel, "
                f"which is not available here ({problem}); leave group_size out for one scale "
                "per output channel"
            )
    qmodel = copy.deepcopy(model)
    missing = _missing_units(mode)
    if missing:
        warnings.warn(
            f"weights={mode!r}: {missing}; keeping float32 nn.Linear layers",
            RuntimeWarning,
            stacklevel=2,
        )
    else:
        rounded = None
        if batches is not None:
            rounded = gptq_weights(qmodel, mode, batches, group_size=group_size)
        _convert_weight_only(qmodel, mode, group_size, rounded)
    mark: dict[str, Any] = {"weights": mode}
    if group_size is not None:
        mark["group_size"] = group_size
    if batches is not None:
        mark["rounding"] = "gptq"
    if missing:
        mark["fallback"] = "float32"
    setattr(qmodel, _MARK, mark)
    return qmodel.eval()


def _missing_units(mode: str) -> str | None:
    """Why ``mode`` falls back to plain float32 layers on this machine, or ``None``."""
    if mode == "bf16" and not bf16_units():
        return "this CPU has no bf16 units (avx512_bf16/amx_bf16)"
    if mode == "float32" and not float32_packing_available():
        return "oneDNN's packed float32 linear does not run with this PyTorch/CPU"
    return None


def _check_group_size(model: nn.Module, group_size: Any) -> int:
    """int4's group size (``None``: the default that fits), or int8's explicit one."""
    sizes = sorted({m.in_features for m in model.modules() if isinstance(m, nn.Linear)})
    if group_size is None:
        for candidate in (DEFAULT_GROUP_SIZE, 128, 32):
            if all(k % candidate == 0 for k in sizes):
                return candidate
        raise ValueError(
            f"weights='int4' needs a group size of 32, 64 or 128 dividing the input size of "
            f"every linear layer; none divides all of {sizes}: use weights='int8'"
        )
    if isinstance(group_size, bool) or not isinstance(group_size, int):
        raise TypeError(f"group_size must be an int, got {type(group_size).__name__}")
    if group_size < 2 or group_size % 2:
        raise ValueError(f"group_size must be an even int >= 2, got {group_size}")
    bad = [k for k in sizes if k % group_size]
    if bad:
        raise ValueError(
            f"group_size={group_size} must divide the input size of every linear layer; it "
            f"does not divide {bad} (sizes here: {sizes})"
        )
    return group_size


def _from_rounded(rounded: RoundedWeight, weights: str, bias: torch.Tensor | None) -> nn.Module:
    # int8's grid is its scales, (N,) or (N, G): the layer reads the group size from them.
    if weights == "int8":
        return Int8WeightLinear.from_codes(rounded.codes, rounded.grid, bias)
    return Int4WeightLinear.from_codes(
        rounded.codes, rounded.grid, bias, out_features=rounded.codes.shape[0]
    )


def _convert_weight_only(
    qmodel: nn.Module,
    weights: str,
    group_size: int | None,
    rounded: dict[nn.Linear, RoundedWeight] | None = None,
) -> None:
    """Swap every ``nn.Linear`` of ``qmodel`` for a ``weights`` layer, rounded to nearest or,
    for the layers in ``rounded`` (layer: integer weights), as given there."""
    done = rounded or {}

    def make(linear: nn.Linear) -> nn.Module:
        if linear in done:
            return _from_rounded(done[linear], weights, linear.bias)
        return weight_only_linear(linear, weights, group_size=group_size)

    def make_fused(parts: list[nn.Linear], fused: nn.Linear) -> nn.Module:
        # Every output row is rounded on its own (per-row scales, the same H for q, k and v),
        # so stacking the three rounded matrices is rounding the stacked one.
        if not all(p in done for p in parts):
            return make(fused)
        pieces = [done[p] for p in parts]
        stacked = RoundedWeight(
            codes=torch.cat([r.codes for r in pieces]), grid=torch.cat([r.grid for r in pieces])
        )
        return _from_rounded(stacked, weights, fused.bias)

    for module in list(qmodel.modules()):
        if isinstance(module, MultiHeadAttention):
            QuantizedMultiHeadAttention.convert(module, make, make_fused)
    # Every remaining nn.Linear: feed-forward layers, heads. A tied LM head gets its own
    # quantized copy; the embedding stays float (a step reads one row of it).
    for parent in list(qmodel.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear:
                setattr(parent, name, make(child))


# ------------------------------------------------------------------------------ checkpoints


def save_quantized(model: nn.Module, path: str | os.PathLike[str]) -> None:
    """Write a quantized model's weights and how it was quantized to ``path`` (atomically).

    Example:
        >>> import tempfile, os
        >>> from multihead.modules.models import DecoderLM, TransformerConfig
        >>> config = TransformerConfig(vocab_size=20, d_model=32, num_heads=2, d_ff=64)
        >>> q = quantize(DecoderLM(config), weights="int8")
        >>> path = os.path.join(tempfile.mkdtemp(), "q.pt")
        >>> save_quantized(q, path)
        >>> again = load_quantized(path, DecoderLM(config))
        >>> torch.equal(again.lm_head.qweight, q.lm_head.qweight)
        True
    """
    mark = quantization_of(model)
    if mark is None or mark.get("weights") == "unknown":
        raise ValueError(
            "model is not a quantized model made by multihead.quantize.quantize; save a float "
            "model with torch.save(model.state_dict(), path)"
        )
    payload = {"format": _FILE_FORMAT, "quantization": mark, "state_dict": model.state_dict()}
    target = Path(path)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_quantized(path: str | os.PathLike[str], model: nn.Module) -> nn.Module:
    """Load a file written by :func:`save_quantized`: ``model`` is a float model of the same
    configuration (its values do not matter); returns the quantized model.

    A file holding a float state dict, or one written for another architecture, is a
    ``ValueError``. Loaded with ``torch.load(weights_only=True)``.
    """
    if quantization_of(model) is not None:
        raise ValueError("model must be the float skeleton to load into, not a quantized model")
    payload = torch.load(Path(path), map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != _FILE_FORMAT:
        raise ValueError(
            f"{str(path)!r} is not a quantized checkpoint from save_quantized (it looks like a "
            "float state dict); load it into a float model with load_state_dict, then call "
            "quantize()"
        )
    mark = payload["quantization"]
    weights = mark.get("weights")
    if weights == "dynamic":
        dtype = torch.float16 if mark.get("dtype") == str(torch.float16) else torch.qint8
        qmodel = quantize(model, dtype=dtype)
    else:
        with warnings.catch_warnings():
            # The bf16/float32 fallback was said at save time (the mark records it); the int8
            # kernel's fallback depends on this machine and is said here.
            warnings.filterwarnings(
                "ignore", message=r".*keeping float32 nn\.Linear layers", category=RuntimeWarning
            )
            qmodel = quantize(model, weights=weights, group_size=mark.get("group_size"))
    made = quantization_of(qmodel) or {}
    if "rounding" in mark:  # how the integers were chosen; the file holds them
        made["rounding"] = mark["rounding"]
        setattr(qmodel, _MARK, made)
    if made != mark:
        raise ValueError(
            f"{str(path)!r} was quantized as {mark} but this machine makes "
            f"{made}; quantize the float model here instead"
        )
    try:
        qmodel.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:
        raise ValueError(
            f"{str(path)!r} does not fit this model (another configuration?): {exc}"
        ) from None
    return qmodel
