"""Weight-only linear layers for decoding on a CPU: int8, int4 and bfloat16 weights.

Decoding one token per step multiplies every weight matrix by one activation row per sequence:
the time goes into reading the weights, not into arithmetic. Storing them in fewer bytes is
what makes a step faster (llama.cpp and CTranslate2 do the same). Activations stay floating
point; only the weights are rounded, once.

Kernels: PyTorch's own CPU kernels, and one of ours for int8.

* ``int8``: one scale per output channel, or per group of ``group_size`` input channels.
  multihead's own kernel (:mod:`multihead.quantize.native`, C compiled on first use) multiplies
  float32 activations by the int8 weights in float32 arithmetic; where it cannot be built,
  per-channel int8 uses ``torch.ops.aten._weight_int8pack_mm`` (bf16 activations, with a
  one-line warning) and grouped int8 is refused.
* ``int4``: ``torch.ops.aten._weight_int4pack_mm_for_cpu`` (weights packed by
  ``_convert_weight_to_int4pack_for_cpu``), asymmetric, one scale and zero point per group of
  ``group_size`` input channels.
* ``bf16``: oneDNN's bf16 matrix product on a prepacked weight (``mkldnn._linear_pointwise``),
  which accumulates in float32. Only where the CPU has bf16 units (see :func:`bf16_units`).
* ``float32``: no rounding at all; the float32 weights are held in oneDNN's own (blocked)
  layout, which its matrix-vector kernel reads 1.5-2.3x faster than ``F.linear`` reads a
  row-major ``(N, K)`` weight (measured in torch 2.13 on an AVX-512 CPU, one thread, weights
  larger than the caches; ``benchmarks/RESULTS.md``). Inference only.

Measured in torch 2.13 on an AVX-512 CPU: both of PyTorch's integer kernels are vectorised only
for bfloat16 activations; with float32 activations they run a scalar loop 10-20x *slower* than a
float32 matrix product. So on PyTorch's kernels (int4, and int8 without ours) activations are
cast to bf16 (8 bits of mantissa) for the product and the result back to float32; the scales
and the bias are applied in float32. Each output row depends on its own input row only (no
batch-wide statistics), so results do not change with batch mates or padding.

Checkpoints hold a portable form (int8 rows, int4 nibbles two to a byte, plain bf16 rows); the
kernel's packed layout depends on the CPU and the PyTorch version, so it is rebuilt on load.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any

import torch
from torch import Tensor, nn

from .._validation import check_int
from . import native
from .kernels import (
    bf16_units,
    float32_packing_available,
    int4_kernel_available,
    int8_kernel_available,
    probe_kernel,
)

__all__ = [
    "DEFAULT_GROUP_SIZE",
    "WEIGHT_FORMATS",
    "BF16WeightLinear",
    "Float32PackedLinear",
    "Int4WeightLinear",
    "Int8WeightLinear",
    "WeightOnlyLinear",
    "bf16_units",
    "float32_packing_available",
    "int4_kernel_available",
    "int4_scales_zeros",
    "int8_kernel_available",
    "int8_scales",
    "probe_kernel",
]

WEIGHT_FORMATS = ("int8", "int4", "bf16", "float32")
DEFAULT_GROUP_SIZE = 64  # int4: 32 is more accurate, 128 faster; 64 sits between (issue 13)
_INT4_ROWS = 16  # _convert_weight_to_int4pack_for_cpu wants N divisible by 16


def float_checkpoint_error(problem: str, weights: str | None) -> ValueError:
    """The error for a float checkpoint loaded into a quantized model: ``problem``, then what
    to do instead (``weights``: the format to name, ``None`` for any)."""
    how = "quantize()" if weights is None else f"quantize(model, weights={weights!r})"
    return ValueError(
        f"{problem}; load the float checkpoint into a float model and call "
        f"multihead.quantize.{how} afterwards"
    )


def int8_scales(weight: Tensor, group_size: int | None = None) -> Tensor:
    r"""The int8 format's scales of ``weight (N, K)``: one per output channel,
    :math:`s_i = \max_j |W_{ij}| / 127` ``(N,)`` float32; with ``group_size``, one per row and
    group of ``group_size`` input channels, ``(N, K / group_size)``.

    Example:
        >>> int8_scales(torch.tensor([[254.0, -1.0], [0.0, 0.0]]))[0]
        tensor(2.)
        >>> int8_scales(torch.tensor([[254.0, -1.0, 127.0, 0.0]]), 2)
        tensor([[2., 1.]])
    """
    w = weight.float().abs()
    if group_size is not None:
        w = w.reshape(w.shape[0], -1, group_size)
    # A zero row would get scale 0 and divide by it; any positive scale maps it to zeros.
    return (w.amax(dim=-1) / 127.0).clamp_min(torch.finfo(torch.float32).tiny)


def int4_scales_zeros(weight: Tensor, group_size: int) -> Tensor:
    """The int4 format's scale and zero of each row and group of ``group_size`` input channels
    of ``weight (N, K)``: ``(N, K / group_size, 2)`` float32, ``[..., 0]`` the scale
    ``(max - min) / 15``, ``[..., 1]`` the zero ``min + 8 * scale``; the weight ``w`` is coded
    as ``q = round((w - min) / scale)`` in [0, 15] and read back as ``(q - 8) * scale + zero``.

    Example:
        >>> int4_scales_zeros(torch.tensor([[0.0, 15.0]]), 2)
        tensor([[[1., 8.]]])
    """
    rows, k = weight.shape
    wg = weight.float().reshape(rows, k // group_size, group_size)  # (N, groups, g)
    low, high = wg.amin(dim=-1), wg.amax(dim=-1)  # (N, groups)
    scale = ((high - low) / 15.0).clamp_min(1e-8)
    return torch.stack([scale, low + 8.0 * scale], dim=-1)


class WeightOnlyLinear(nn.Module):
    """Base of the weight-only layers: ``x (..., in_features)`` float -> ``(..., out_features)``
    float32 (or ``x``'s dtype). Subclasses store the weights and implement :meth:`_matmul`.

    The buffers named in ``_PORTABLE`` are the checkpoint; ``_pack`` rebuilds whatever the
    kernel needs from them (after construction and after ``load_state_dict``).
    """

    format: str = ""
    bias: Tensor | None

    def __init__(self, in_features: int, out_features: int, bias: bool) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)

    @classmethod
    def from_float(cls, linear: nn.Linear, **options: Any) -> WeightOnlyLinear:
        """Round ``linear``'s weights (``options``: ``group_size`` for int4)."""
        raise NotImplementedError

    def _pack(self) -> None:
        """Build the kernel's layout from the portable buffers."""

    def _matmul(self, x2d: Tensor) -> Tensor:
        """``(M, in_features)`` bf16 -> ``(M, out_features)`` float32, bias added (one fused
        op where possible: at batch 1 each extra elementwise op costs a few microseconds per
        layer, hundreds per token)."""
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        x2d = x.reshape(-1, self.in_features).to(torch.bfloat16)  # (M, K)
        y = self._matmul(x2d)  # (M, N) float32, bias included
        return y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        if prefix + "weight" in state_dict and self.format != "bf16":
            raise float_checkpoint_error(
                f"{prefix}weight: the checkpoint holds float weights but this layer is "
                f"{self.format}-quantized",
                self.format,
            )
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        self._pack()

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, weights={self.format}"
        )


def _copy_bias(layer: WeightOnlyLinear, linear: nn.Linear) -> None:
    if linear.bias is not None and layer.bias is not None:
        layer.bias.copy_(linear.bias.detach().float())


class Int8WeightLinear(WeightOnlyLinear):
    r"""int8 weights (symmetric): :math:`W \approx s \odot \hat W` with one float32 scale per
    output channel, :math:`s_i = \max_j |W_{ij}| / 127`, or with ``group_size`` one per output
    channel and group of ``group_size`` input channels.

    The product runs in multihead's kernel (float32 activations and arithmetic,
    :mod:`multihead.quantize.native`) where it builds; otherwise per-channel layers use
    PyTorch's ``_weight_int8pack_mm`` (bf16 activations, warned once) and grouped layers raise.

    Example (what is stored: the int8 matrix and one scale per row, or per row and group):
        >>> q = Int8WeightLinear.from_float(nn.Linear(64, 32))
        >>> q.qweight.dtype, tuple(q.qweight.shape), tuple(q.scale.shape)
        (torch.int8, (32, 64), (32,))
        >>> if native.native_available():  # grouped scales need multihead's kernel
        ...     print(tuple(Int8WeightLinear(64, 32, group_size=16).scale.shape))
        ... else:
        ...     print((32, 4))
        (32, 4)
    """

    format = "int8"
    rows_independent = True  # row i of the output reads row i of the input alone
    qweight: Tensor
    scale: Tensor
    _ones: Tensor

    def __init__(
        self, in_features: int, out_features: int, bias: bool = True, group_size: int | None = None
    ) -> None:
        super().__init__(in_features, out_features, bias)
        check_int(group_size, "group_size", optional=True)
        if group_size is not None and in_features % group_size:
            raise ValueError(f"group_size must divide in_features={in_features}, got {group_size}")
        self.group_size = group_size
        self.register_buffer("qweight", torch.zeros(out_features, in_features, dtype=torch.int8))
        # (N,) float32 per channel, (N, K / group_size) per group.
        self._groups = 1 if group_size is None else in_features // group_size
        self.register_buffer(
            "scale",
            torch.ones(out_features)
            if group_size is None
            else torch.ones(out_features, self._groups),
        )
        # PyTorch's kernel multiplies by bf16 scales; passing ones and scaling the float32
        # result keeps the scales exact.
        self.register_buffer(
            "_ones", torch.ones(out_features, dtype=torch.bfloat16), persistent=False
        )
        self._native = False
        self._pack()

    @classmethod
    def from_float(cls, linear: nn.Linear, **options: Any) -> Int8WeightLinear:
        """Round ``linear``'s weights to nearest (``options``: ``group_size``, ``None`` for
        per-channel scales)."""
        group_size = options.get("group_size")
        w = linear.weight.detach().float()  # (N, K)
        scale = int8_scales(w, group_size)
        grid = scale[:, None] if group_size is None else scale.repeat_interleave(group_size, 1)
        codes = torch.round(w / grid).clamp_(-127, 127).to(torch.int8)
        return cls.from_codes(codes, scale, linear.bias)

    @classmethod
    def from_codes(cls, codes: Tensor, scale: Tensor, bias: Tensor | None) -> Int8WeightLinear:
        """The layer of integer weights ``codes (N, K)`` in [-127, 127], ``scale (N,)`` (per
        channel) or ``(N, G)`` (per group of ``K / G`` input channels) and ``bias (N,)`` or
        ``None`` (however the codes were rounded: nearest or GPTQ)."""
        n, k = codes.shape
        group_size = None if scale.dim() == 1 else k // scale.shape[1]
        layer = cls(k, n, bias is not None, group_size=group_size)
        layer.qweight.copy_(codes)
        layer.scale.copy_(scale)
        if bias is not None and layer.bias is not None:
            layer.bias.copy_(bias.detach().float())
        return layer

    def _pack(self) -> None:
        # Which kernel: ours where it builds; per channel, PyTorch's where ours has no vector
        # path here (its plain C loop is slower) and PyTorch's runs.
        problem = native.native_problem()
        if (
            problem is None
            and self.group_size is None
            and native.vector_lanes() < 8
            and int8_kernel_available()
        ):
            problem = "its build here has no vector path (AVX2 or AVX-512)"
        self._native = problem is None
        if problem is None:
            return
        if self.group_size is not None:
            raise RuntimeError(
                f"int8 weights with group_size={self.group_size} need multihead's int8 kernel, "
                f"which is not available here: {problem}"
            )
        _warn_int8_fallback(problem)

    def dequantized(self) -> Tensor:
        """The float32 weight ``(N, K)`` the codes and scales stand for."""
        scale = self.scale.float().reshape(self.out_features, self._groups)
        group = self.in_features // self._groups
        return self.qweight.float() * scale.repeat_interleave(group, dim=1)

    def forward(self, x: Tensor) -> Tensor:
        on_cpu = self.qweight.device.type == "cpu"
        if not (self._native and on_cpu):
            if self.group_size is not None:  # PyTorch's kernel has no groups
                raise ValueError(
                    f"int8 weights with group_size={self.group_size} run on the CPU only "
                    f"(multihead's int8 kernel); this layer is on {self.qweight.device}"
                )
            return super().forward(x)  # PyTorch's kernel (also its CUDA one)
        x2d = x.reshape(-1, self.in_features)
        bias = None if self.bias is None else self.bias.float()
        weights_need_grad = self.scale.requires_grad or (bias is not None and bias.requires_grad)
        if x2d.shape[0] >= _MANY_ROWS or (torch.is_grad_enabled() and weights_need_grad):
            # Many rows (a prompt, or 32+ sequences at once): the product is bound by
            # arithmetic, where a float32 GEMM is faster than the kernel; the same float32
            # weights, another order of summation (rows stay independent of each other).
            y = torch.nn.functional.linear(x2d.float(), self.dequantized(), bias)
        else:
            scale = self.scale.float().reshape(self.out_features, self._groups)
            if torch.is_grad_enabled() and x2d.requires_grad:
                y = _Int8Product.apply(x2d, self.qweight, scale, bias)
            else:  # decoding: no autograd bookkeeping per call
                y = native.int8_mm(x2d, self.qweight, scale, bias)
        return y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)

    def _matmul(self, x2d: Tensor) -> Tensor:
        y = torch.ops.aten._weight_int8pack_mm(x2d, self.qweight, self._ones)  # (M, N) bf16
        if self.bias is None:
            return y.float() * self.scale
        return torch.addcmul(self.bias, y.float(), self.scale)

    def extra_repr(self) -> str:
        group = "" if self.group_size is None else f", group_size={self.group_size}"
        return super().extra_repr() + group


# Rows at which the int8 layer hands the product to a float32 GEMM on the dequantized weight
# (a prompt, or 32+ sequences decoded at once; one thread, K = N = 1024: the kernel took
# 2.2 ms at 64 rows where F.linear took 1.5 ms, and tied at about 32 rows with the cost of
# dequantizing).
_MANY_ROWS = 32


class _Int8Product(torch.autograd.Function):
    """multihead's int8 kernel with a backward: ``d x = d y @ W``, ``W`` the weights as they
    were at the forward (the codes and scales are buffers and get no gradient)."""

    @staticmethod
    def forward(ctx: Any, x2d: Tensor, codes: Tensor, scale: Tensor, bias: Tensor | None) -> Tensor:
        ctx.save_for_backward(codes, scale)
        return native.int8_mm(x2d, codes, scale, bias)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None, None]:
        codes, scale = ctx.saved_tensors
        group = codes.shape[1] // scale.shape[1]
        weight = codes.float() * scale.repeat_interleave(group, dim=1)
        return grad @ weight, None, None, None


@functools.cache
def _warn_int8_fallback(problem: str) -> None:
    warnings.warn(
        f"multihead's int8 kernel is not available ({problem}); int8 layers use PyTorch's "
        "_weight_int8pack_mm, which rounds activations and sums to bfloat16",
        RuntimeWarning,
        stacklevel=4,
    )


class Int4WeightLinear(WeightOnlyLinear):
    r"""int4 weights in groups of ``group_size`` input channels, asymmetric:
    :math:`W \approx (q - 8)\,s + z` with :math:`q \in [0, 15]`, one scale :math:`s` and zero
    :math:`z` per row and group (``z = min + 8 s``, the layout PyTorch's kernel expects).

    Rows are padded to a multiple of 16 for the kernel; the padding is cut from the output.

    Example (24 rows padded to 32, two nibbles a byte, one scale and zero per group and row):
        >>> q = Int4WeightLinear.from_float(nn.Linear(64, 24), group_size=32)
        >>> tuple(q.qweight.shape), tuple(q.scales_zeros.shape), q(torch.randn(3, 64)).shape
        ((32, 32), (2, 32, 2), torch.Size([3, 24]))
    """

    format = "int4"
    rows_independent = True  # row i of the output reads row i of the input alone
    qweight: Tensor
    scales_zeros: Tensor
    _packed: Tensor

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        group_size: int = DEFAULT_GROUP_SIZE,
    ) -> None:
        super().__init__(in_features, out_features, bias)
        if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 2:
            raise ValueError(f"group_size must be an int >= 2, got {group_size!r}")
        if in_features % group_size or group_size % 2:
            raise ValueError(
                f"group_size={group_size} must be even and divide in_features={in_features} "
                "(int4 groups run along the input channels)"
            )
        self.group_size = group_size
        rows = -(-out_features // _INT4_ROWS) * _INT4_ROWS
        # Two 4-bit values per byte, the even input channel in the low nibble.
        self.register_buffer("qweight", torch.zeros(rows, in_features // 2, dtype=torch.uint8))
        groups = in_features // group_size
        self.register_buffer("scales_zeros", torch.zeros(groups, rows, 2, dtype=torch.bfloat16))
        self.register_buffer("_packed", torch.empty(0, dtype=torch.uint8), persistent=False)
        self._pack()

    @classmethod
    def from_float(cls, linear: nn.Linear, **options: Any) -> Int4WeightLinear:
        group_size = options.get("group_size", DEFAULT_GROUP_SIZE)
        n, k = linear.out_features, linear.in_features
        rows = -(-n // _INT4_ROWS) * _INT4_ROWS
        w = torch.zeros(rows, k)
        w[:n] = linear.weight.detach().float()
        wg = w.view(rows, k // group_size, group_size)  # (N', groups, g)
        low = wg.amin(dim=-1)  # (N', groups)
        scale = int4_scales_zeros(w, group_size)[..., 0]
        q = torch.round((wg - low[..., None]) / scale[..., None]).clamp_(0, 15).to(torch.uint8)
        return cls.from_codes(
            q.view(rows, k), int4_scales_zeros(w, group_size), linear.bias, out_features=n
        )

    @classmethod
    def from_codes(
        cls, codes: Tensor, scales_zeros: Tensor, bias: Tensor | None, *, out_features: int
    ) -> Int4WeightLinear:
        """The layer of 4-bit weights ``codes (N', K)`` in [0, 15] with ``scales_zeros
        (N', K / group_size, 2)`` (:func:`int4_scales_zeros`), ``N'`` being ``out_features`` or
        already padded to a multiple of 16 (padding rows are cut from the output)."""
        rows, k = codes.shape
        group_size = k // scales_zeros.shape[1]
        layer = cls(k, out_features, bias is not None, group_size=group_size)
        padded = layer.qweight.shape[0]
        if rows < padded:  # pad as rows of zero weights would be
            pad = torch.zeros(padded - rows, k)
            codes = torch.cat([codes, torch.zeros(padded - rows, k, dtype=codes.dtype)])
            scales_zeros = torch.cat([scales_zeros, int4_scales_zeros(pad, group_size)])
        codes = codes.to(torch.uint8)
        layer.qweight.copy_(codes[:, 0::2] | (codes[:, 1::2] << 4))
        layer.scales_zeros.copy_(scales_zeros.transpose(0, 1))
        if bias is not None and layer.bias is not None:
            layer.bias.copy_(bias.detach().float())
        layer._pack()
        return layer

    def _pack(self) -> None:
        q = torch.stack([self.qweight & 0xF, self.qweight >> 4], dim=-1)  # (N', K/2, 2)
        q = q.view(self.qweight.shape[0], self.in_features).to(torch.int32)
        self._packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)

    def _matmul(self, x2d: Tensor) -> Tensor:
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(
            x2d, self._packed, self.group_size, self.scales_zeros
        )  # (M, N') bf16
        y = y[:, : self.out_features].float()
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, group_size={self.group_size}"


class BF16WeightLinear(WeightOnlyLinear):
    """bfloat16 weights, float32 accumulation (oneDNN), prepacked for the CPU's bf16 units.

    Example:
        >>> lin = nn.Linear(64, 32)
        >>> if bf16_units():
        ...     q = BF16WeightLinear.from_float(lin)
        ...     x = torch.randn(3, 64)
        ...     assert ((q(x) - lin(x)).norm() / lin(x).norm()) < 0.01
    """

    format = "bf16"
    rows_independent = True  # row i of the output reads row i of the input alone
    weight: Tensor
    _packed: Tensor

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__(in_features, out_features, bias)
        weight = torch.zeros(out_features, in_features, dtype=torch.bfloat16)
        self.register_buffer("weight", weight)  # (N, K), the portable copy
        self.register_buffer("_packed", weight, persistent=False)
        self._pack()

    @classmethod
    def from_float(cls, linear: nn.Linear, **options: Any) -> BF16WeightLinear:
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None)
        layer.weight.copy_(linear.weight.detach())
        _copy_bias(layer, linear)
        layer._pack()
        return layer

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        weight = state_dict.get(prefix + "weight")
        if isinstance(weight, Tensor) and weight.dtype != torch.bfloat16:
            raise float_checkpoint_error(
                f"{prefix}weight is {weight.dtype} but this layer holds bf16 weights", "bf16"
            )
        super()._load_from_state_dict(state_dict, prefix, *args)

    def _pack(self) -> None:
        self._packed = torch.ops.mkldnn._reorder_linear_weight(self.weight, None)

    def _matmul(self, x2d: Tensor) -> Tensor:
        y = torch.ops.mkldnn._linear_pointwise(x2d, self._packed, None, "none", [], "").float()
        return y if self.bias is None else y + self.bias


class Float32PackedLinear(WeightOnlyLinear):
    """float32 weights, unchanged, held only in oneDNN's blocked layout for its float32 kernel.

    Nothing is rounded: results equal ``nn.Linear``'s up to the order of the float32 sums. The
    state dict holds the plain ``(N, K)`` ``weight`` (unpacked on save), so it is the float
    model's own: a float checkpoint loads into this layer and this layer's into a float model.
    No autograd (the kernel has no backward); inputs of another dtype are computed in float32
    and returned in their dtype. Inside a model made by :func:`~multihead.quantize.quantize`,
    attention layers also hold a fused q/k/v copy, so a float model's checkpoint loads into the
    float model, not into the quantized one (a ``ValueError`` says so).

    Example:
        >>> lin = nn.Linear(64, 32)
        >>> if float32_packing_available():
        ...     q = Float32PackedLinear.from_float(lin)
        ...     x = torch.randn(3, 64)
        ...     assert torch.allclose(q(x), lin(x), atol=1e-5)
        ...     assert torch.equal(q.state_dict()["weight"], lin.weight)
    """

    format = "float32"
    rows_independent = True  # row i of the output reads row i of the input alone
    _packed: Tensor

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__(in_features, out_features, bias)
        self._set_weight(torch.zeros(out_features, in_features))

    def _set_weight(self, weight: Tensor) -> None:
        # A plain attribute, not a buffer: an opaque oneDNN tensor has no storage that
        # ``state_dict``, ``deepcopy`` of buffers or ``.to()`` could handle; the portable copy
        # is made on save instead.
        self._packed = torch.ops.mkldnn._reorder_linear_weight(weight.float().contiguous(), None)

    @classmethod
    def from_float(cls, linear: nn.Linear, **options: Any) -> Float32PackedLinear:
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None)
        layer._set_weight(linear.weight.detach())
        _copy_bias(layer, linear)
        return layer

    def __deepcopy__(self, memo: dict[int, Any]) -> Float32PackedLinear:
        # The opaque packed tensor cannot be deep-copied; the copy repacks the unpacked weight.
        copy = Float32PackedLinear(self.in_features, self.out_features, self.bias is not None)
        copy.load_state_dict(self.state_dict())
        memo[id(self)] = copy
        return copy.train(self.training)

    def _save_to_state_dict(
        self, destination: dict[str, Any], prefix: str, keep_vars: bool
    ) -> None:
        destination[prefix + "weight"] = self._packed.to_dense()
        super()._save_to_state_dict(destination, prefix, keep_vars)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        # args: local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        missing_keys, unexpected_keys, error_msgs = args[2], args[3], args[4]
        key = prefix + "weight"
        weight = state_dict.get(key)
        expected = (self.out_features, self.in_features)
        if weight is None:
            missing_keys.append(key)
        elif not isinstance(weight, Tensor) or not weight.is_floating_point():
            error_msgs.append(f"{key}: expected a float tensor, got {weight!r:.60}")
        elif tuple(weight.shape) != expected:
            error_msgs.append(f"{key}: expected shape {expected}, got {tuple(weight.shape)}")
        else:
            self._set_weight(weight.detach())
        nn.Module._load_from_state_dict(self, state_dict, prefix, *args)
        if key in unexpected_keys:  # nn.Module does not know the packed weight's key
            unexpected_keys.remove(key)

    def forward(self, x: Tensor) -> Tensor:
        # Other dtypes are computed in float32 and returned in their own, as the other formats do.
        y = torch.ops.mkldnn._linear_pointwise(x.float(), self._packed, self.bias, "none", [], "")
        return y.to(x.dtype)


WEIGHT_LAYERS: dict[str, type[WeightOnlyLinear]] = {
    "int8": Int8WeightLinear,
    "int4": Int4WeightLinear,
    "bf16": BF16WeightLinear,
    "float32": Float32PackedLinear,
}


def weight_only_linear(
    linear: nn.Linear, weights: str, *, group_size: int | None
) -> WeightOnlyLinear:
    """A weight-only copy of ``linear`` in format ``weights`` (no availability checks here);
    ``group_size``: int4's (required) or int8's (``None``: per channel).

    Example:
        >>> weight_only_linear(nn.Linear(64, 8), "int8", group_size=None)
        Int8WeightLinear(in_features=64, out_features=8, bias=True, weights=int8)
    """
    with torch.no_grad():
        return WEIGHT_LAYERS[weights].from_float(linear, group_size=group_size)
