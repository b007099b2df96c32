"""Dynamic int8 quantization of a model's attention projections and feed-forward layers, for
inference on a CPU: ``quantize(model)`` without ``weights=`` (see :mod:`multihead.quantize`).

"Dynamic" means weights are quantized once, ahead of time, and activations are quantized on
the fly at every call from their own range, so no calibration data is needed. What changes:

* every ``nn.Linear`` inside a :class:`~multihead.modules.attention.MultiHeadAttention`
  (``q_proj``, ``k_proj``, ``v_proj``, ``out_proj``) and a
  :class:`~multihead.modules.feedforward.FeedForward` (``linear1``, ``linear2``, ``gate``);
* nothing else: embeddings, LayerNorms and the output head stay float. The head is usually tied
  to the embedding, and its logits pick every token, so it is the worst place to lose precision
  for the least time saved.

Weights are quantized per output channel, symmetrically (one scale per row of ``W``), which
also makes the fused self-attention projection exact to quantize: with one scale per row,
quantizing ``cat([W_q, W_k, W_v])`` is the same as concatenating the three quantized matrices.
(A quantized ``q_proj.weight`` is a method, not a tensor, so the float module's ``torch.cat`` of
the three weights would fail; the quantized module below gives the fused product its own
quantized ``qkv_proj`` instead.)

Activations get one scale **per token** (per row) in the default kernel, so a sequence's
output never depends on its batch mates or on padding, and cached decoding gives the tokens of
uncached decoding (issue 12, item 4). Kernels:

* ``"onednn"`` (the default where it runs): oneDNN's int8 GEMM
  (``torch.ops.onednn.qlinear_pointwise``, the kernel behind PyTorch's x86 quantization in
  ``torch.compile``) on our own per-token integers, given to it with a unit activation scale;
  the float32 scales are applied to its float32 output. Integer sums are exact, so a row's
  result never depends on the others. On CPUs without VNNI instructions its u8 x s8 products
  are summed in pairs into saturating 16-bit integers, so activations get 7 bits there (as
  FBGEMM's ``reduce_range``), 8 bits with VNNI.
* ``"int8pack"``: int8 weights, 8-bit per-token activations held
  as bfloat16 integers (exact: |x| <= 127 needs 8 bits), multiplied by PyTorch's
  ``aten._weight_int8pack_mm`` (vectorised for bf16 activations). The integer sums are rounded
  to bf16, a step function that amplifies ulp-level differences upstream (a sequence's logits
  moved by 0.1 in a padded batch on the character LM): per-token, but not invariant in
  practice.
* ``"reference"``: the same arithmetic as float32 products of integer values (exact: every
  product of int8 values and their sums below 2^24 are exact float32 integers); more accurate
  (~0.8% per layer from the 8-bit activations alone) but no faster than float, since it
  widens the weights to float32 at every call.
* ``"torch"``: PyTorch's dynamic quantized linear (``torch.ao.nn.quantized.dynamic.Linear``,
  FBGEMM int8 GEMM), the default before issue 12. Its activations get **one scale per call**
  (per tensor, 7-bit on x86), so a sequence's logits change with its batch mates and padding
  (up to 0.3 on a small LM) and cached and uncached greedy decoding can differ. Kept for
  comparison; ``torch.ao.quantization`` is deprecated in favour of ``torchao``.

``"auto"`` takes the first of ``"onednn"``, ``"int8pack"``, ``"reference"`` that runs here.

Example:
    >>> import torch
    >>> from multihead import MultiHeadAttention
    >>> from multihead.quantize import quantize
    >>> mha = MultiHeadAttention(64, 4).eval()
    >>> qmha = quantize(mha)  # a copy: mha stays float
    >>> x = torch.randn(2, 10, 64)
    >>> ref, out = mha(x).output, qmha(x).output
    >>> bool((out - ref).norm() / ref.norm() < 0.1), type(mha.q_proj).__name__
    (True, 'Linear')
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..modules.attention import MultiHeadAttention
from ..modules.feedforward import FeedForward
from ..modules.lean_decode import register_lean_attention
from .kernels import cpu_flags, int8_kernel_available, probe_kernel
from .weight_only import float_checkpoint_error

__all__ = [
    "KERNELS",
    "Int8DynamicLinear",
    "QuantizedMultiHeadAttention",
    "onednn_kernel_available",
    "quantize_dynamic",
    "quantized_linear",
    "torch_kernels_available",
]

KERNELS = ("auto", "onednn", "int8pack", "torch", "reference")
DTYPES = (torch.qint8, torch.float16)


def torch_kernels_available() -> bool:
    """Whether PyTorch's dynamic quantized linear (``torch.ao``) can run here.

    Example:
        >>> isinstance(torch_kernels_available(), bool)
        True
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            import torch.ao.nn.quantized.dynamic
            import torch.ao.quantization
    except ImportError:
        return False
    return bool(torch.backends.quantized.supported_engines)


@probe_kernel
def onednn_kernel_available() -> None:
    """Whether oneDNN's int8 linear (``torch.ops.onednn.qlinear_pointwise``) runs here."""
    packed = torch.ops.onednn.qlinear_prepack(torch.ones(16, 32, dtype=torch.int8), None)
    torch.ops.onednn.qlinear_pointwise(
        torch.full((1, 32), 128, dtype=torch.uint8),
        1.0,
        128,
        packed,
        torch.ones(16),
        torch.zeros(16, dtype=torch.int64),
        None,
        1.0,
        0,
        torch.float32,
        "none",
        [],
        "",
    )


@functools.cache
def _activation_levels() -> int:
    """127 (8-bit activations) where u8 x s8 products accumulate in 32 bits (VNNI, AMX);
    63 otherwise, so that a pair of products fits a saturating 16-bit sum."""
    flags = cpu_flags()
    return 127 if flags & {"avx512_vnni", "avx_vnni", "amx_int8"} else 63


class Int8DynamicLinear(nn.Module):
    r"""A linear layer with int8 weights and dynamically quantized int8 activations.

    .. math::
        y = s_x s_w \odot (\hat{x} \hat{W}^\top) + b, \quad
        \hat{W} = \mathrm{round}(W / s_w),\ s_w = \max_j |W_{ij}| / 127 \ \text{(per row)},
        \quad \hat{x} = \mathrm{round}(x / s_x),\ s_x = \max_j |x_j| / 127 \ \text{(per token)}

    ``kernel="int8pack"`` computes :math:`\hat{x} \hat{W}^\top` with
    ``aten._weight_int8pack_mm`` on bf16-held integers; ``"reference"`` with a float32 product.
    Both see one token at a time, so the output of a row never depends on the other rows.
    With ``dtype=torch.float16`` the weights are stored in float16 and nothing is rounded to
    integers (weight-only half precision). Shapes: ``x (..., in_features)`` ->
    ``(..., out_features)``.

    Example:
        >>> lin = nn.Linear(16, 8)
        >>> q = Int8DynamicLinear.from_float(lin)
        >>> x = torch.randn(3, 16)
        >>> bool(((q(x) - lin(x)).norm() / lin(x).norm()) < 0.05)
        True
    """

    weight_q: Tensor
    weight_scale: Tensor | None
    bias_f: Tensor | None
    # One activation scale per token: each output row depends on its input row alone (read by
    # the lean decoding step).
    rows_independent = True
    _ones: Tensor
    _packed: Tensor
    _zero_points: Tensor

    def __init__(
        self,
        weight: Tensor,
        weight_scale: Tensor | None,
        bias: Tensor | None,
        *,
        dtype: torch.dtype = torch.qint8,
        kernel: str = "reference",
    ) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.dtype = dtype
        self.kernel = kernel
        self.register_buffer("weight_q", weight)  # (out, in), int8 or float16
        self.register_buffer("weight_scale", weight_scale)  # (out,) float32, or None
        self.register_buffer("bias_f", bias)  # (out,) or None
        # The kernel's own (bf16) scales are ones: the float32 scales are applied afterwards.
        ones = torch.ones(self.out_features, dtype=torch.bfloat16)
        self.register_buffer("_ones", ones, persistent=False)
        self.register_buffer("_packed", torch.empty(0, dtype=torch.int8), persistent=False)
        zero_points = torch.zeros(self.out_features, dtype=torch.int64)  # symmetric weights
        self.register_buffer("_zero_points", zero_points, persistent=False)
        self._pack()

    def _pack(self) -> None:
        """oneDNN's layout of the int8 weights (CPU-specific, so rebuilt, never saved)."""
        if self.kernel == "onednn":
            self._packed = torch.ops.onednn.qlinear_prepack(self.weight_q, None)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args)
        self._pack()

    @classmethod
    def from_float(
        cls, linear: nn.Linear, *, dtype: torch.dtype = torch.qint8, kernel: str = "reference"
    ) -> Int8DynamicLinear:
        """Quantize ``linear``'s weights (per output channel, symmetric)."""
        w = linear.weight.detach().float()
        bias = None if linear.bias is None else linear.bias.detach().float().clone()
        if dtype == torch.float16:
            return cls(w.half(), None, bias, dtype=dtype, kernel="reference")
        # A zero row would get scale 0 and divide by it; any positive scale maps it to zeros.
        scale = (w.abs().amax(dim=1) / 127.0).clamp_min(torch.finfo(torch.float32).tiny)
        weight = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
        return cls(weight, scale, bias, dtype=dtype, kernel=kernel)

    def forward(self, x: Tensor) -> Tensor:
        xf = x.float()
        if self.weight_scale is None:  # float16 weights: weight-only, nothing else rounded
            y = F.linear(xf, self.weight_q.float(), self.bias_f)
            return y.to(x.dtype)
        # Per-token scale: one outlier token cannot flatten the resolution of the others, and
        # no token's numbers depend on another's.
        tiny = torch.finfo(torch.float32).tiny
        if self.kernel == "onednn":
            return self._forward_onednn(xf).to(x.dtype)
        sx = xf.abs().amax(dim=-1, keepdim=True).clamp_min(tiny) / 127
        xq = torch.round(xf / sx).clamp_(-127, 127)  # integer values in float32
        if self.kernel == "int8pack":
            x2d = xq.reshape(-1, self.in_features).to(torch.bfloat16)  # exact: |xq| <= 127
            y = torch.ops.aten._weight_int8pack_mm(x2d, self.weight_q, self._ones).float()
            y = y.reshape(*xq.shape[:-1], self.out_features)
        else:
            y = F.linear(xq, self.weight_q.float())
        y = y * (sx * self.weight_scale)
        if self.bias_f is not None:
            y = y + self.bias_f
        return y.to(x.dtype)

    def _forward_onednn(self, xf: Tensor) -> Tensor:
        assert self.weight_scale is not None
        levels = _activation_levels()
        x2d = xf.reshape(-1, self.in_features)  # (M, K)
        tiny = torch.finfo(torch.float32).tiny
        sx = x2d.abs().amax(dim=-1, keepdim=True).clamp_min(tiny) / levels  # (M, 1)
        # Shifted to unsigned (oneDNN's activations are u8 with a zero point).
        zero = levels + 1
        qx = (torch.round(x2d / sx).clamp_(-levels, levels) + zero).to(torch.uint8)
        y = torch.ops.onednn.qlinear_pointwise(
            qx,
            1.0,
            zero,
            self._packed,
            self.weight_scale,
            self._zero_points,
            None,
            1.0,
            0,
            torch.float32,
            "none",
            [],
            "",
        )  # (M, N) = integer sums x weight scales, float32
        y = y * sx if self.bias_f is None else torch.addcmul(self.bias_f, y, sx)
        return y.reshape(*xf.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"dtype={self.dtype}, kernel={self.kernel!r}, per_channel_weights=True, "
            "per_token_activations=True"
        )


def _resolve_kernel(kernel: str) -> str:
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    if kernel == "torch" and not torch_kernels_available():
        raise ValueError(
            "kernel='torch' needs torch.ao dynamic quantization, which this PyTorch lacks; "
            "use kernel='auto', 'int8pack' or 'reference'"
        )
    if kernel == "int8pack" and not int8_kernel_available():
        raise ValueError(
            "kernel='int8pack' needs torch.ops.aten._weight_int8pack_mm with bf16 inputs, "
            "which does not run here; use kernel='reference' (same numbers, slower)"
        )
    if kernel == "onednn" and not onednn_kernel_available():
        raise ValueError(
            "kernel='onednn' needs torch.ops.onednn.qlinear_pointwise, which does not run "
            "here; use kernel='auto' or 'reference'"
        )
    if kernel == "auto":
        if onednn_kernel_available():
            return "onednn"
        return "int8pack" if int8_kernel_available() else "reference"
    return kernel


def quantized_linear(
    linear: nn.Linear, *, dtype: torch.dtype = torch.qint8, kernel: str = "auto"
) -> nn.Module:
    """A dynamically quantized copy of ``linear`` (per-channel symmetric int8 weights).

    Example:
        >>> q = quantized_linear(nn.Linear(8, 4), kernel="reference")
        >>> q(torch.randn(2, 8)).shape
        torch.Size([2, 4])
    """
    if not isinstance(linear, nn.Linear):
        raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}")
    _check_dtype(dtype)
    kernel = _resolve_kernel(kernel)
    if kernel != "torch":
        return Int8DynamicLinear.from_float(linear, dtype=dtype, kernel=kernel)
    with warnings.catch_warnings():
        # PyTorch warns that torch.ao.quantization and quantized tensors are deprecated on
        # every call; the module docstring says what we do about it, once.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*quantize_per_.*deprecated.*")
        from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear
        from torch.ao.quantization import float16_dynamic_qconfig, per_channel_dynamic_qconfig

        float_copy = nn.Linear(
            linear.in_features, linear.out_features, bias=linear.bias is not None
        )
        with torch.no_grad():
            float_copy.weight.copy_(linear.weight.detach().float())
            if linear.bias is not None:
                float_copy.bias.copy_(linear.bias.detach().float())
        qconfig = per_channel_dynamic_qconfig if dtype == torch.qint8 else float16_dynamic_qconfig
        float_copy.qconfig = qconfig  # type: ignore[assignment]
        return DynamicLinear.from_float(float_copy)


def _check_dtype(dtype: Any) -> None:
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be a torch.dtype, got {type(dtype).__name__}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be torch.qint8 or torch.float16, got {dtype}")


class QuantizedMultiHeadAttention(MultiHeadAttention):
    """A :class:`MultiHeadAttention` whose four projections are quantized.

    Made by :func:`multihead.quantize.quantize` (not constructed directly). Self-attention uses
    one ``qkv_proj`` holding ``[W_q; W_k; W_v]``: one product reads the three matrices in one
    pass instead of three. Cross-attention uses ``q_proj``, ``k_proj`` and ``v_proj``. With
    per-channel (int8) or per-row-group (int4) scales both give the same numbers. The quantized
    weights are kept twice (fused and separate), still smaller than the float32 ones.
    """

    qkv_proj: nn.Module
    _fused_bias: bool
    _split: list[int]

    @classmethod
    def convert(
        cls,
        mha: MultiHeadAttention,
        make: Callable[[nn.Linear], nn.Module],
        make_fused: Callable[[list[nn.Linear], nn.Linear], nn.Module] | None = None,
    ) -> QuantizedMultiHeadAttention:
        """Quantize ``mha`` **in place** (turning it into this class) with ``make`` (float
        ``nn.Linear`` -> quantized module) and return it. ``make_fused([q, k, v], fused)``, if
        given, makes ``qkv_proj`` from the float projections and their stacked copy (default:
        ``make(fused)``)."""
        if not isinstance(mha, MultiHeadAttention):
            raise TypeError(f"mha must be a MultiHeadAttention, got {type(mha).__name__}")
        projections = (mha.q_proj, mha.k_proj, mha.v_proj)
        has_bias = mha.q_proj.bias is not None
        fused = nn.Linear(mha.embed_dim, sum(p.out_features for p in projections), bias=has_bias)
        with torch.no_grad():
            fused.weight.copy_(torch.cat([p.weight for p in projections]))
            if has_bias:
                fused.bias.copy_(torch.cat([p.bias for p in projections]))
        names = ("q_proj", "k_proj", "v_proj", "out_proj")
        quantized = {n: make(getattr(mha, n)) for n in names}
        # Changing the class keeps every attribute, hook and the isinstance(MultiHeadAttention)
        # checks of the models and observers; only project() and the helpers below differ.
        mha.__class__ = cls
        qmha: QuantizedMultiHeadAttention = mha  # type: ignore[assignment]
        qmha._fused_bias = has_bias
        if "_fused_qkv" in qmha.__dict__:  # the float module caches the stacked weights
            qmha.__dict__["_fused_qkv"] = None  # drop the float copy of [W_q; W_k; W_v]
        for name, module in quantized.items():
            setattr(qmha, name, module)
        qmha.qkv_proj = make(fused) if make_fused is None else make_fused(list(projections), fused)
        qmha._split = [p.out_features for p in projections]
        return qmha

    @property
    def bias(self) -> bool:
        return self._fused_bias

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        # A float model's state dict has q/k/v but no fused copy: loading it (even with
        # strict=False) would leave self-attention on the old fused weights.
        if not any(k.startswith(prefix + "qkv_proj.") for k in state_dict) and any(
            k.startswith(prefix + "q_proj.") for k in state_dict
        ):
            raise float_checkpoint_error(
                f"{prefix}qkv_proj: the checkpoint has no fused q/k/v projection (it looks like "
                "a float model's state dict)",
                None,
            )
        super()._load_from_state_dict(state_dict, prefix, *args)

    def reset_parameters(self) -> None:
        raise TypeError("a quantized MultiHeadAttention has no float weights to reset")

    def project(self, query: Tensor, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        if query is key and key is value:
            q, k, v = self.qkv_proj(query).split(self._split, dim=-1)
        else:
            q, k, v = self.q_proj(query), self.k_proj(key), self.v_proj(value)
        # (B, N, heads * D) -> (B, heads, N, D)
        q = q.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)
        k = k.unflatten(-1, (self.num_kv_heads, self.head_dim)).transpose(1, 2)
        v = v.unflatten(-1, (self.num_kv_heads, self.v_head_dim)).transpose(1, 2)
        return q, k, v


# A quantized DecoderLM decodes through the lean step (multihead.modules.lean_decode), which
# calls this class's project (one fused q/k/v product) directly.
register_lean_attention(QuantizedMultiHeadAttention)


def quantize_dynamic(
    qmodel: nn.Module, *, dtype: torch.dtype = torch.qint8, kernel: str = "auto"
) -> nn.Module:
    """Dynamically quantize the attention projections and feed-forward layers of ``qmodel``
    **in place** (callers pass a copy) and return it. See the module docstring."""
    _check_dtype(dtype)
    kernel = _resolve_kernel(kernel)

    def make(linear: nn.Linear) -> nn.Module:
        return quantized_linear(linear, dtype=dtype, kernel=kernel)

    for module in list(qmodel.modules()):
        if isinstance(module, MultiHeadAttention):
            QuantizedMultiHeadAttention.convert(module, make)
        elif isinstance(module, FeedForward):
            for name in ("linear1", "linear2", "gate"):
                linear = getattr(module, name, None)
                if isinstance(linear, nn.Linear):
                    setattr(module, name, make(linear))
    return qmodel.eval()
