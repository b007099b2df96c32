"""Absolute position encodings that are added to the token embeddings.

Two kinds, chosen by name with :func:`build_positional`:

* ``"sinusoidal"``: the fixed encoding of Vaswani et al. (2017), Sec. 3.5. It has no parameters
  and is defined for every position, so it extends on demand past ``max_len``.
* ``"learned"``: one trained vector per position (as in BERT, GPT-2 and ViT). Positions past
  ``max_len`` were never trained, so asking for them is a ``ValueError``.

Both are :class:`AdditivePositionalEncoding` modules: ``forward(x, offset)`` returns
``x + P[offset : offset + N]``. ``offset`` is the position of ``x``'s first token, which is what
incremental decoding needs when it feeds one new token at a time.

Relative schemes that act inside attention (rotary embeddings, ALiBi) are not additive; they will
live here too but be applied by the attention module, so :func:`build_positional` is the one
place that maps a config's ``positional`` name to a module.

Shape legend: ``B`` batch, ``N`` sequence length, ``E`` model size (``d_model``).

Example:
    >>> import torch
    >>> pe = SinusoidalPositionalEncoding(16, max_len=32)
    >>> pe(torch.zeros(2, 5, 16)).shape
    torch.Size([2, 5, 16])
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = [
    "POSITIONAL_KINDS",
    "AdditivePositionalEncoding",
    "LearnedPositionalEncoding",
    "SinusoidalPositionalEncoding",
    "build_positional",
    "sinusoidal_encoding",
]

POSITIONAL_KINDS = ("sinusoidal", "learned")


def _check_positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value}")
    return value


def _check_offset(offset: object) -> int:
    if isinstance(offset, bool) or not isinstance(offset, int):
        raise TypeError(f"offset must be an int, got {type(offset).__name__}")
    if offset < 0:
        raise ValueError(f"offset must be >= 0, got {offset}")
    return offset


def sinusoidal_encoding(
    n: int,
    d: int,
    *,
    base: float = 10000.0,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    r"""The sinusoidal position encoding ``(n, d)`` of Vaswani et al. (2017), Sec. 3.5.

    .. math::
        PE_{(pos, 2i)} = \sin(pos / base^{2i/d}), \quad
        PE_{(pos, 2i+1)} = \cos(pos / base^{2i/d})

    Even dimensions hold sines and odd ones cosines, so an odd ``d`` ends with a sine.

    Args:
        n: number of positions (``0 .. n-1``); ``0`` gives an empty ``(0, d)`` tensor.
        d: encoding size ``E``.
        base: the wavelength base (10000 in the paper).
        dtype: result dtype (default: ``torch.get_default_dtype()``). The angles are computed
            in float64 whatever the dtype, because ``pos * freq`` loses the fine frequencies
            in float32 at large positions.
        device: result device.

    Example:
        >>> pe = sinusoidal_encoding(4, 6)
        >>> pe.shape, pe[0, :2].tolist()
        (torch.Size([4, 6]), [0.0, 1.0])
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    d = _check_positive_int(d, "d")
    if isinstance(base, bool) or not isinstance(base, (int, float)) or not base > 1.0:
        raise ValueError(f"base must be a number > 1, got {base!r}")
    dtype = torch.get_default_dtype() if dtype is None else dtype
    position = torch.arange(n, dtype=torch.float64, device=device).unsqueeze(1)  # (n, 1)
    two_i = torch.arange(0, d, 2, dtype=torch.float64, device=device)  # (ceil(d/2),)
    angle = position * torch.exp(two_i * (-math.log(base) / d))  # (n, ceil(d/2))
    pe = torch.empty(n, d, dtype=torch.float64, device=device)
    pe[:, 0::2] = torch.sin(angle)
    pe[:, 1::2] = torch.cos(angle[:, : d // 2])  # odd d has one sine more than cosines
    return pe.to(dtype)


class AdditivePositionalEncoding(nn.Module):
    """Base class of encodings added to the input: ``forward(x, offset) = x + P[offset:offset+N]``.

    Subclasses implement :meth:`encoding`. Input ``x (B, N, E)``; output ``(B, N, E)``.
    """

    def __init__(self, d_model: int, max_len: int) -> None:
        super().__init__()
        self.d_model = _check_positive_int(d_model, "d_model")
        self.max_len = _check_positive_int(max_len, "max_len")

    def encoding(
        self, n: int, offset: int = 0, *, dtype: torch.dtype, device: torch.device
    ) -> Tensor:
        """The encodings ``(N, E)`` of positions ``offset .. offset + n - 1``."""
        raise NotImplementedError

    def forward(self, x: Tensor, offset: int = 0) -> Tensor:
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ValueError(f"x must be 3-D (B, N, E={self.d_model}), got shape {tuple(x.shape)}")
        offset = _check_offset(offset)
        return x + self.encoding(x.shape[1], offset, dtype=x.dtype, device=x.device)

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, max_len={self.max_len}"


class SinusoidalPositionalEncoding(AdditivePositionalEncoding):
    """Fixed sinusoidal positions (see :func:`sinusoidal_encoding`), added to ``x (B, N, E)``.

    The table of ``max_len`` positions is a non-persistent buffer: it is not in the
    ``state_dict`` (it is a function of the shape, not a trained value) and it grows on demand
    when a longer sequence (or a larger ``offset``) comes in.

    Example:
        >>> pe = SinusoidalPositionalEncoding(8, max_len=4)
        >>> pe(torch.zeros(1, 6, 8)).shape  # longer than max_len: the table extends
        torch.Size([1, 6, 8])
    """

    pe: Tensor

    def __init__(self, d_model: int, max_len: int = 512, *, base: float = 10000.0) -> None:
        super().__init__(d_model, max_len)
        self.base = float(base)
        self.register_buffer(
            "pe", sinusoidal_encoding(max_len, d_model, base=base), persistent=False
        )

    def encoding(
        self, n: int, offset: int = 0, *, dtype: torch.dtype, device: torch.device
    ) -> Tensor:
        end = offset + n
        if end > self.pe.shape[0]:
            # Doubling keeps the number of rebuilds logarithmic when decoding token by token.
            size = max(end, 2 * self.pe.shape[0])
            self.pe = sinusoidal_encoding(
                size, self.d_model, base=self.base, dtype=self.pe.dtype, device=self.pe.device
            )
        return self.pe[offset:end].to(dtype=dtype, device=device)


class LearnedPositionalEncoding(AdditivePositionalEncoding):
    """One trained vector per position (``max_len`` of them), added to ``x (B, N, E)``.

    A sequence that reaches past ``max_len`` (counting ``offset``) raises ``ValueError``:
    there is no trained vector for those positions.

    Example:
        >>> pe = LearnedPositionalEncoding(8, max_len=4)
        >>> pe(torch.zeros(1, 3, 8), offset=1).shape
        torch.Size([1, 3, 8])
    """

    def __init__(self, d_model: int, max_len: int = 512) -> None:
        super().__init__(d_model, max_len)
        self.weight = nn.Parameter(torch.empty(max_len, d_model))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Normal with std 0.02, the scale of the token embeddings (as in GPT-2 and ViT)."""
        nn.init.normal_(self.weight, std=0.02)

    def encoding(
        self, n: int, offset: int = 0, *, dtype: torch.dtype, device: torch.device
    ) -> Tensor:
        end = offset + n
        if end > self.max_len:
            raise ValueError(
                f"LearnedPositionalEncoding has max_len={self.max_len} positions, but a sequence "
                f"of length {n} at offset {offset} needs {end}; use a larger max_len or "
                "positional='sinusoidal'"
            )
        return self.weight[offset:end].to(dtype=dtype, device=device)


def build_positional(kind: str, d_model: int, max_len: int) -> AdditivePositionalEncoding:
    """The positional encoding module named ``kind`` (one of :data:`POSITIONAL_KINDS`).

    Example:
        >>> build_positional("learned", 16, 64)
        LearnedPositionalEncoding(d_model=16, max_len=64)
    """
    if kind == "sinusoidal":
        return SinusoidalPositionalEncoding(d_model, max_len)
    if kind == "learned":
        return LearnedPositionalEncoding(d_model, max_len)
    raise ValueError(f"positional must be one of {POSITIONAL_KINDS}, got {kind!r}")
