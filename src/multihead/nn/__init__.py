"""A drop-in for :class:`torch.nn.MultiheadAttention`: PyTorch's constructor, parameters,
``state_dict``, call signature and mask semantics, running on :func:`multihead.functional.attention`.

Use it to change one import in existing code (or :func:`swap_attention` on a built model). New
code should use :class:`multihead.MultiHeadAttention`, which is batch-first and reads a bool mask
as ``True`` = may attend. Everything PyTorch's module accepts is translated here, at the boundary,
into the kernel's convention: ``(B, H, N, D)`` layout, bool ``True`` = may attend, float additive.

The one intended difference from PyTorch: a query row whose every key is masked gets a zero
output and zero weights, with finite gradients, where PyTorch returns NaN (when it computes
weights, and on its fused inference path).

Shape legend: ``B`` batch, ``L`` target (query) length, ``S`` source (key) length, ``E`` model size
``embed_dim``, ``H`` heads ``num_heads``, ``Hkv`` key/value heads, ``D = E // H``.
"""

from .attention import MultiheadAttention
from .swap import swap_attention

__all__ = ["MultiheadAttention", "swap_attention"]
