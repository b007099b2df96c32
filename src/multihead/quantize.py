"""Dynamic int8 quantization of a model's attention projections and feed-forward layers, for
inference on a CPU.

"Dynamic" means weights are quantized once, ahead of time, and activations are quantized on
the fly at every call from their own range, so no calibration data is needed. What changes:

* every ``nn.Linear`` inside a :class:`~multihead.modules.attention.MultiHeadAttention`
  (``q_proj``, ``k_proj``, ``v_proj``, ``out_proj``) and a
  :class:`~multihead.modules.feedforward.FeedForward` (``linear1``, ``linear2``);
* nothing else: embeddings, LayerNorms and the output head stay float. The head is usually tied
  to the embedding, and its logits pick every token, so it is the worst place to lose precision
  for the least time saved.

Weights are quantized per output channel, symmetrically (one scale per row of ``W``), which
also makes the fused self-attention projection exact to quantize: ``MultiHeadAttention``
multiplies by ``cat([W_q, W_k, W_v])`` in one product when query, key and value are one
tensor, and with one scale per row, quantizing the concatenation is the same as concatenating
the three quantized matrices. (A quantized ``q_proj.weight`` is a method, not a tensor, so the
float module's ``torch.cat`` of the three weights would fail; the quantized module below gives
the fused product its own quantized ``qkv_proj`` instead.)

Two kernels:

* ``"torch"``: PyTorch's dynamic quantized linear (``torch.ao.nn.quantized.dynamic.Linear``,
  FBGEMM/oneDNN int8 GEMM). PyTorch has deprecated ``torch.ao.quantization`` in favour of the
  separate ``torchao`` package, but in 2.13 the kernels are still there and about 2x faster
  than float32 on large batches of tokens on an AVX2 CPU. Activations get one (per-tensor)
  scale per call, 7-bit on x86 (FBGEMM's ``reduce_range``), so the error per layer is ~2%.
* ``"reference"``: written here for when those kernels are gone: int8 weights with per-channel
  scales and a per-token activation scale, computed as float matmuls of integer values (exact:
  every product of int8 values and their sums below 2^24 are exact float32 integers). More
  accurate (~0.8% per layer) but no faster than float: ``torch._int_mm`` exists on the CPU but
  measured 10-20x *slower* than a float32 matmul here, so it is not used.

``"auto"`` takes ``"torch"`` when it is available.

Example:
    >>> import torch
    >>> from multihead import MultiHeadAttention
    >>> mha = MultiHeadAttention(64, 4).eval()
    >>> qmha = quantize(mha)
    >>> x = torch.randn(2, 10, 64)
    >>> ref, out = mha(x).output, qmha(x).output
    >>> bool((out - ref).norm() / ref.norm() < 0.1), type(mha.q_proj).__name__
    (True, 'Linear')
"""

from __future__ import annotations

import copy
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .modules.attention import MultiHeadAttention
from .modules.feedforward import FeedForward

__all__ = [
    "KERNELS",
    "Int8DynamicLinear",
    "QuantizedMultiHeadAttention",
    "quantize",
    "quantized_linear",
    "torch_kernels_available",
]

KERNELS = ("auto", "torch", "reference")
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


class Int8DynamicLinear(nn.Module):
    r"""A linear layer with int8 weights and dynamically quantized int8 activations.

    .. math::
        y = s_x s_w \odot (\hat{x} \hat{W}^\top) + b, \quad
        \hat{W} = \mathrm{round}(W / s_w),\ s_w = \max_j |W_{ij}| / 127 \ \text{(per row)},
        \quad \hat{x} = \mathrm{round}(x / s_x),\ s_x = \max_j |x_j| / 127 \ \text{(per token)}

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

    def __init__(
        self,
        weight: Tensor,
        weight_scale: Tensor | None,
        bias: Tensor | None,
        *,
        dtype: torch.dtype = torch.qint8,
    ) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.dtype = dtype
        self.register_buffer("weight_q", weight)  # (out, in), int8 or float16
        self.register_buffer("weight_scale", weight_scale)  # (out,) float32, or None
        self.register_buffer("bias_f", bias)  # (out,) or None

    @classmethod
    def from_float(
        cls, linear: nn.Linear, *, dtype: torch.dtype = torch.qint8
    ) -> Int8DynamicLinear:
        """Quantize ``linear``'s weights (per output channel, symmetric)."""
        w = linear.weight.detach().float()
        bias = None if linear.bias is None else linear.bias.detach().float().clone()
        if dtype == torch.float16:
            return cls(w.half(), None, bias, dtype=dtype)
        # A zero row would get scale 0 and divide by it; any positive scale maps it to zeros.
        scale = (w.abs().amax(dim=1) / 127.0).clamp_min(torch.finfo(torch.float32).tiny)
        weight = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
        return cls(weight, scale, bias, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        xf = x.float()
        if self.weight_scale is None:  # float16 weights: weight-only, nothing else rounded
            y = F.linear(xf, self.weight_q.float(), self.bias_f)
            return y.to(x.dtype)
        # Per-token scale: one outlier token cannot flatten the resolution of the others.
        sx = xf.abs().amax(dim=-1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny) / 127
        xq = torch.round(xf / sx).clamp_(-127, 127)  # integer values in float32
        y = F.linear(xq, self.weight_q.float()) * (sx * self.weight_scale)
        if self.bias_f is not None:
            y = y + self.bias_f
        return y.to(x.dtype)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"dtype={self.dtype}, per_channel_weights=True, per_token_activations=True"
        )


def _resolve_kernel(kernel: str) -> str:
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    available = torch_kernels_available()
    if kernel == "torch" and not available:
        raise ValueError(
            "kernel='torch' needs torch.ao dynamic quantization, which this PyTorch lacks; "
            "use kernel='reference' or 'auto'"
        )
    if kernel == "auto":
        return "torch" if available else "reference"
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
    if _resolve_kernel(kernel) == "reference":
        return Int8DynamicLinear.from_float(linear, dtype=dtype)
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
    """A :class:`MultiHeadAttention` whose four projections are dynamically quantized.

    Made by :func:`quantize` (not constructed directly). Self-attention uses one quantized
    ``qkv_proj`` holding ``[W_q; W_k; W_v]``, as the float module fuses them; cross-attention
    uses ``q_proj``, ``k_proj`` and ``v_proj``. With per-channel weight scales both give the same
    numbers. The int8 weights are kept twice (fused and separate), still half the size of the
    float32 ones.
    """

    qkv_proj: nn.Module
    _fused_bias: bool
    _split: list[int]

    @classmethod
    def convert(
        cls, mha: MultiHeadAttention, *, dtype: torch.dtype, kernel: str
    ) -> QuantizedMultiHeadAttention:
        """Quantize ``mha`` **in place** (turning it into this class) and return it."""
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
        quantized = {
            n: quantized_linear(getattr(mha, n), dtype=dtype, kernel=kernel) for n in names
        }
        # Changing the class keeps every attribute, hook and the isinstance(MultiHeadAttention)
        # checks of the models and observers; only project() and the helpers below differ.
        mha.__class__ = cls
        qmha: QuantizedMultiHeadAttention = mha  # type: ignore[assignment]
        qmha._fused_bias = has_bias
        if "_fused_qkv" in qmha.__dict__:  # the float module caches the stacked weights
            qmha.__dict__["_fused_qkv"] = None  # drop the float copy of [W_q; W_k; W_v]
        for name, module in quantized.items():
            setattr(qmha, name, module)
        qmha.qkv_proj = quantized_linear(fused, dtype=dtype, kernel=kernel)
        qmha._split = [p.out_features for p in projections]
        return qmha

    @property
    def bias(self) -> bool:
        return self._fused_bias

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


def quantize(
    model: nn.Module, *, dtype: torch.dtype = torch.qint8, kernel: str = "auto"
) -> nn.Module:
    """A copy of ``model`` for CPU inference with its attention projections and feed-forward
    layers dynamically quantized; ``model`` itself is left untouched.

    Args:
        model: any module containing :class:`MultiHeadAttention` and/or :class:`FeedForward`
            layers (a ``Seq2SeqTransformer``, a ``DecoderLM``, one ``MultiHeadAttention``...).
        dtype: ``torch.qint8`` (int8 weights and activations) or ``torch.float16`` (half
            precision weights only).
        kernel: ``"auto"``, ``"torch"`` (PyTorch's int8 GEMM) or ``"reference"`` (see the
            module docstring).

    Returns:
        The quantized copy, in eval mode (quantized layers have no gradients).

    Example:
        >>> from multihead.modules.models import Seq2SeqTransformer, TransformerConfig
        >>> model = Seq2SeqTransformer(TransformerConfig(vocab_size=12, d_model=16, num_heads=2))
        >>> qmodel = quantize(model)
        >>> qmodel.encoder.layers[0].feed_forward.linear1._get_name()  # PyTorch's int8 kernel
        'DynamicQuantizedLinear'
        >>> type(model.encoder.layers[0].feed_forward.linear1).__name__  # the original: float
        'Linear'
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    _check_dtype(dtype)
    kernel = _resolve_kernel(kernel)
    if any(isinstance(m, QuantizedMultiHeadAttention) for m in model.modules()):
        raise ValueError("model is already quantized (it contains a QuantizedMultiHeadAttention)")
    qmodel = copy.deepcopy(model)
    for module in list(qmodel.modules()):
        if isinstance(module, MultiHeadAttention):
            QuantizedMultiHeadAttention.convert(module, dtype=dtype, kernel=kernel)
        elif isinstance(module, FeedForward):
            module.linear1 = quantized_linear(module.linear1, dtype=dtype, kernel=kernel)  # type: ignore[assignment]
            module.linear2 = quantized_linear(module.linear2, dtype=dtype, kernel=kernel)  # type: ignore[assignment]
    return qmodel.eval()
