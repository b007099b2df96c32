"""multihead's own int8 weight-only product (``csrc/int8_weights.c``, built by
:mod:`multihead._native`).

PyTorch 2.13's CPU int8 weight-only kernel (``aten._weight_int8pack_mm``) is vectorised for
bfloat16 activations only: it rounds every activation to 8 bits of mantissa and returns a
bfloat16 sum, and it knows one scale per output channel only. On the trained character LM that
rounding, not the int8 weights, was what kept greedy decoding from matching float32's
(``benchmarks/RESULTS.md``). ``int8_weights.c`` multiplies float32 activations by the int8
weights in float32 arithmetic, with one scale per group of input channels (a group may be the
whole row: per-channel scales), reading the int8 rows as they are stored, one forward stream.

Where the library cannot be built (no compiler, ``MULTIHEAD_NATIVE=0``; see
:func:`native_problem`) the int8 layers use PyTorch's kernel (grouped scales, which that kernel
cannot read, are then refused: ``quantize()`` raises a ``ValueError``, a layer built directly a
``RuntimeError``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import _native
from .._native import native_available, native_problem, vector_lanes

__all__ = ["int8_mm", "native_available", "native_problem", "vector_lanes"]


def int8_mm(x: Tensor, codes: Tensor, scale: Tensor, bias: Tensor | None) -> Tensor:
    """``x (M, K) @ (codes * scale)^T + bias`` in float32 arithmetic: ``codes (N, K)`` int8,
    ``scale (N, G)`` float32 (one scale per group of ``K / G`` input channels; ``G = 1``:
    per channel), ``bias (N,)`` float32 or ``None``. Returns ``(M, N)`` float32.

    Raises ``RuntimeError`` where the kernel is not available (see :func:`native_problem`)
    and ``ValueError`` for tensors that do not fit together.

    Example:
        >>> if native_available():
        ...     codes = torch.tensor([[1, -2, 3, 4]], dtype=torch.int8)
        ...     y = int8_mm(torch.ones(1, 4), codes, torch.tensor([[0.5, 2.0]]), None)
        ...     print(y)  # 0.5 * (1 - 2) + 2 * (3 + 4)
        ... else:
        ...     print(torch.tensor([[13.5]]))
        tensor([[13.5000]])
    """
    # Every call, every operand: the C code trusts its pointers, and a layer's buffers can be
    # replaced or changed in place between calls (measured cost: ~2 us of a ~12 us call).
    _check_weights(codes, scale, bias)
    _check_input(x, codes.shape[1])
    lib = _native._library(_native.INT8)
    if isinstance(lib, str):
        raise RuntimeError(f"multihead's int8 kernel is not available: {lib}")
    x = x.float().contiguous()
    m, k = x.shape
    n, groups = scale.shape
    if k == 0:  # an empty sum: the bias alone
        y = torch.zeros(m, n, dtype=torch.float32)
        return y if bias is None else y + bias
    y = torch.empty(m, n, dtype=torch.float32)
    if m and n:
        lib.mh_int8_mm(
            x.data_ptr(),
            m,
            k,
            codes.data_ptr(),
            n,
            scale.data_ptr(),
            k // groups,
            None if bias is None else bias.data_ptr(),
            y.data_ptr(),
            torch.get_num_threads(),
        )
    return y


def _describe(t: Tensor) -> str:
    return f"{t.dtype} {tuple(t.shape)} on {t.device}"


def _check_input(x: Tensor, k: int) -> None:
    """``x`` must be a 2-D floating-point CPU tensor ``(M, k)`` (any layout: it is copied to a
    contiguous float32 one when it is not)."""
    if x.dim() != 2 or not x.is_floating_point() or x.device.type != "cpu":
        raise ValueError(f"x must be a 2-D floating-point CPU tensor (M, K), got {_describe(x)}")
    if x.shape[1] != k:
        raise ValueError(f"x must have {k} columns to match codes (N, {k}), got {_describe(x)}")


def _check_weights(codes: Tensor, scale: Tensor, bias: Tensor | None) -> None:
    """The C code trusts its pointers: every shape, dtype, device and layout of the weights is
    checked here (the input's in :func:`_check_input`)."""
    if codes.dtype != torch.int8 or codes.dim() != 2:
        raise ValueError(f"codes must be int8 (N, K), got {_describe(codes)}")
    if not codes.is_contiguous() or codes.device.type != "cpu":
        raise ValueError(f"codes must be a contiguous CPU tensor, got {_describe(codes)}")
    n, k = codes.shape
    if (
        scale.dtype != torch.float32
        or scale.dim() != 2
        or scale.shape[0] != n
        or scale.shape[1] < 1
        or k % scale.shape[1]
        or not scale.is_contiguous()
        or scale.device.type != "cpu"
    ):
        raise ValueError(
            f"scale must be contiguous float32 ({n}, G) on the CPU with G dividing {k}, got "
            f"{_describe(scale)}"
        )
    if bias is not None and (
        bias.dtype != torch.float32
        or bias.shape != (n,)
        or not bias.is_contiguous()
        or bias.device.type != "cpu"
    ):
        raise ValueError(
            f"bias must be contiguous float32 ({n},) on the CPU, got {_describe(bias)}"
        )
