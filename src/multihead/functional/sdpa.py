"""Backend on ``torch.nn.functional.scaled_dot_product_attention`` (PyTorch's fused kernels).

Equivalent to :mod:`multihead.functional.reference`. Two things are added around PyTorch's call
so that the contract holds: rows with no key to attend to are computed against all keys and
then zeroed (PyTorch would return NaN there), and bottom-right causal alignment for
``Nq != Nk`` is passed as an explicit mask (PyTorch's ``is_causal`` is top-left aligned).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from ._spec import AttentionResult, AttentionSpec, dead_rows

# enable_gqa arrived in torch 2.5; older versions get K/V repeated per query head.
_HAS_GQA = tuple(int(x) for x in torch.__version__.split(".")[:2]) >= (2, 5)


# A window this much narrower than the keys, on sequences this long, runs faster on a kernel
# that skips whole blocks (measured on CPU at N=16k, W=256: ~6x) than through a dense mask.
_NARROW_WINDOW_RATIO = 8
_NARROW_WINDOW_MIN_KEYS = 4096


def supports(spec: AttentionSpec) -> str | None:
    if spec.need_weights:
        return "fused kernels do not return attention weights (need_weights=True)"
    if spec.window is not None:
        nk = spec.key.shape[2]
        span = spec.window[0] + spec.window[1] + 1
        if nk >= _NARROW_WINDOW_MIN_KEYS and span * _NARROW_WINDOW_RATIO <= nk:
            return (
                f"window of {span} keys out of Nk={nk} would need a dense mask; "
                "block-skipping kernels are faster"
            )
    return None


def _propagate_nan_queries(out: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """``out`` with NaN on every row whose query holds NaN or inf, as the reference gives.

    PyTorch's fused CPU kernel returns zeros for such a row instead (its online softmax drops
    the NaN maximum). ``query * 0`` is 0 for finite values and NaN otherwise, so its row sums
    are exactly 0 or NaN and adding them changes nothing else. On the CPU one reduction decides
    first whether any value is not finite (a sync costs nothing there), so clean inputs pay a
    single pass over the query; on accelerators and while compiling the fix is always applied,
    since a host sync would cost more than it saves.
    """
    # A false alarm (a sum that overflows) only runs the exact fix below.
    cpu = query.device.type == "cpu" and not torch.compiler.is_compiling()
    if cpu and math.isfinite(query.sum().item()):
        return out
    return out + (query * 0).sum(dim=-1, keepdim=True)  # (B, H, Nq, 1) broadcast over Dv


def sdpa_attention(spec: AttentionSpec) -> AttentionResult:
    _, h, hkv, nq, nk, _, _ = spec.shape
    q, k, v = spec.query, spec.key, spec.value
    kwargs: dict[str, Any] = {}
    if h != hkv:
        if _HAS_GQA:
            kwargs["enable_gqa"] = True
        else:  # torch < 2.5
            k = k.repeat_interleave(h // hkv, dim=1)
            v = v.repeat_interleave(h // hkv, dim=1)

    plain = spec.mask is None and spec.window is None and spec.alibi_slopes is None
    if plain and (not spec.causal or nq == nk):
        # Nothing can leave a row empty: the fused kernel needs no help, except with NaN.
        out = F.scaled_dot_product_attention(
            q, k, v, dropout_p=spec.dropout_p, is_causal=spec.causal, scale=spec.scale, **kwargs
        )
        return AttentionResult(_propagate_nan_queries(out, q), None)

    mask = spec.merged_mask()
    assert mask is not None
    dead = dead_rows(mask)  # (B|1, H|1, Nq, 1)
    assert dead is not None
    # Causal structure alone (no caller mask, no window) leaves no row empty when Nq <= Nk, as
    # in prefill with a cache: skip the host sync. No data branch while compiling either.
    structure_only = spec.mask is None and spec.window is None and nq <= nk
    any_dead = not structure_only and (torch.compiler.is_compiling() or bool(dead.any()))
    # Let empty rows attend to every key so the kernel stays finite, then zero them.
    if mask.dtype == torch.bool:
        mask = mask | dead if any_dead else mask
    else:
        mask = mask.masked_fill(dead, 0.0) if any_dead else mask
        if mask.dtype != q.dtype:
            # A finite bias beyond half precision's range (HF's finfo(float32).min padding)
            # must stay finite, as in the reference: clamp it before the cast, keep -inf as is.
            low = torch.finfo(q.dtype).min
            mask = torch.where(torch.isneginf(mask), mask, mask.clamp_min(low)).to(q.dtype)
    out = F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, dropout_p=spec.dropout_p, scale=spec.scale, **kwargs
    )
    return AttentionResult(out.masked_fill(dead, 0.0) if any_dead else out, None)
