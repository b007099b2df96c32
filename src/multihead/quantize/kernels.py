"""Which of PyTorch's quantized CPU kernels run on this machine: cached one-call probes.

A missing op, or one not built for this CPU, raises on its first call; each probe makes that
call once, on a tiny input, and remembers the answer.
"""

from __future__ import annotations

import functools
import platform
from collections.abc import Callable
from pathlib import Path

import torch

__all__ = [
    "bf16_units",
    "cpu_flags",
    "float32_packing_available",
    "int4_kernel_available",
    "int8_kernel_available",
    "probe_kernel",
]


def probe_kernel(smoke: Callable[[], object]) -> Callable[[], bool]:
    """Turn ``smoke``, one tiny call of a kernel, into a cached ``() -> bool`` check (with
    ``smoke``'s name and docstring) that says whether the kernel runs here. A missing op, or one
    not built for this CPU, raises ``RuntimeError``, ``AttributeError`` or
    ``NotImplementedError``.

    Example:
        >>> check = probe_kernel(lambda: torch.ops.aten.no_such_kernel())
        >>> check()
        False
    """

    @functools.cache
    def available() -> bool:
        try:
            smoke()
        except (RuntimeError, AttributeError, NotImplementedError):
            return False
        return True

    return functools.update_wrapper(available, smoke)


@probe_kernel
def int8_kernel_available() -> None:
    """Whether ``aten._weight_int8pack_mm`` runs on this CPU with bf16 activations."""
    torch.ops.aten._weight_int8pack_mm(
        torch.ones(1, 32, dtype=torch.bfloat16),
        torch.ones(16, 32, dtype=torch.int8),
        torch.ones(16, dtype=torch.bfloat16),
    )


@probe_kernel
def int4_kernel_available() -> None:
    """Whether ``aten._weight_int4pack_mm_for_cpu`` (and its packing op) run here."""
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(
        torch.zeros(16, 64, dtype=torch.int32), 1
    )
    torch.ops.aten._weight_int4pack_mm_for_cpu(
        torch.ones(1, 64, dtype=torch.bfloat16),
        packed,
        32,
        torch.ones(2, 16, 2, dtype=torch.bfloat16),
    )


def cpu_flags() -> set[str]:
    """The CPU's feature flags from ``/proc/cpuinfo`` (empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return set()


def _packed_linear(dtype: torch.dtype) -> None:
    """One oneDNN linear of ``dtype`` on a prepacked weight."""
    weight = torch.ops.mkldnn._reorder_linear_weight(torch.ones(4, 8, dtype=dtype), None)
    torch.ops.mkldnn._linear_pointwise(torch.ones(1, 8, dtype=dtype), weight, None, "none", [], "")


@probe_kernel
def bf16_units() -> None:
    """Whether this CPU multiplies bfloat16 in hardware (x86: ``avx512_bf16`` or
    ``amx_bf16``; elsewhere: what oneDNN reports) and oneDNN's bf16 product runs.

    Without such units a bf16 product converts every element in software and is slower than
    float32, so :func:`~multihead.quantize.quantize` keeps float32 weights instead.
    """
    if platform.machine().lower() in ("x86_64", "amd64", "i686"):
        if not cpu_flags() & {"avx512_bf16", "amx_bf16"}:
            raise RuntimeError("no avx512_bf16/amx_bf16")
    elif not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        raise RuntimeError("oneDNN reports no bf16 support")
    _packed_linear(torch.bfloat16)


@probe_kernel
def float32_packing_available() -> None:
    """Whether oneDNN's float32 linear on a prepacked weight runs with this PyTorch/CPU."""
    _packed_linear(torch.float32)
