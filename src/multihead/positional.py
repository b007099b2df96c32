"""Position information: absolute encodings added to the token embeddings, and the relative
schemes applied inside attention (rotary embeddings, ALiBi).

A config's ``positional`` is one of :data:`POSITIONAL_KINDS`. Two kinds are additive, built by
name with :func:`build_positional`:

* ``"sinusoidal"``: the fixed encoding of Vaswani et al. (2017), Sec. 3.5. It has no parameters
  and is defined for every position, so it extends on demand past ``max_len``.
* ``"learned"``: one trained vector per position (as in BERT, GPT-2 and ViT). Positions past
  ``max_len`` were never trained, so asking for them is a ``ValueError``.

Both are :class:`AdditivePositionalEncoding` modules: ``forward(x, offset)`` returns
``x + P[offset : offset + N]``. ``offset`` is the position of ``x``'s first token, which is what
incremental decoding needs when it feeds one new token at a time.

Three kinds add nothing to the embeddings; :class:`~multihead.MultiHeadAttention` applies them
(``rotary=True`` / ``alibi=True``) to self-attention:

* ``"rope"``: :class:`RotaryEmbedding` (Su et al., 2021) rotates queries and keys by angles
  proportional to their absolute positions, so that ``q . k`` depends only on the offset.
* ``"alibi"``: :func:`alibi_bias` (Press et al., 2022) adds ``-m_h * |i - j|`` to the logits.
* ``"none"``: no position information (a causal stack still infers some).

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

from ._validation import check_int

__all__ = [
    "ADDITIVE_KINDS",
    "POSITIONAL_KINDS",
    "AdditivePositionalEncoding",
    "LearnedPositionalEncoding",
    "RotaryEmbedding",
    "SinusoidalPositionalEncoding",
    "alibi_bias",
    "alibi_slopes",
    "build_positional",
    "sinusoidal_encoding",
]

POSITIONAL_KINDS = ("sinusoidal", "learned", "rope", "alibi", "none")
ADDITIVE_KINDS = ("sinusoidal", "learned")  # the kinds that build_positional makes


def check_positions(positions: object, batch: int, n: int) -> Tensor:
    """Check explicit positions: an integer tensor ``(N,)`` or ``(B, N)`` of values ``>= 0``."""
    if not isinstance(positions, Tensor):
        raise TypeError(f"positions must be a torch.Tensor or None, got {type(positions).__name__}")
    if positions.is_floating_point() or positions.is_complex() or positions.dtype == torch.bool:
        raise TypeError(f"positions must be an integer tensor, got dtype {positions.dtype}")
    if tuple(positions.shape) not in ((n,), (batch, n)):
        raise ValueError(
            f"positions must be (N,) = ({n},) or (B, N) = ({batch}, {n}), "
            f"got shape {tuple(positions.shape)}"
        )
    if positions.numel() and int(positions.min()) < 0:
        raise ValueError(f"positions must be >= 0, got min {int(positions.min())}")
    return positions


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
    d = check_int(d, "d")
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
        self.d_model = check_int(d_model, "d_model")
        self.max_len = check_int(max_len, "max_len")

    def encoding(
        self, n: int, offset: int = 0, *, dtype: torch.dtype, device: torch.device
    ) -> Tensor:
        """The encodings ``(N, E)`` of positions ``offset .. offset + n - 1``."""
        raise NotImplementedError

    def forward(self, x: Tensor, offset: int = 0, *, positions: Tensor | None = None) -> Tensor:
        """``x (B, N, E)`` plus the encodings of positions ``offset .. offset + N - 1``, or of
        ``positions`` (``(N,)`` or ``(B, N)`` integer) when given (e.g. for left padding)."""
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ValueError(f"x must be 3-D (B, N, E={self.d_model}), got shape {tuple(x.shape)}")
        if positions is None:
            offset = check_int(offset, "offset", minimum=0)
            return x + self.encoding(x.shape[1], offset, dtype=x.dtype, device=x.device)
        positions = check_positions(positions, x.shape[0], x.shape[1])
        end = int(positions.max()) + 1 if positions.numel() else 0
        table = self.encoding(end, 0, dtype=x.dtype, device=x.device)  # (end, E)
        return x + table[positions.to(x.device)]

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
            # Outside inference mode, so that a table grown while decoding stays usable later.
            with torch.inference_mode(False):
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
    """The additive positional encoding module named ``kind`` (one of :data:`ADDITIVE_KINDS`).

    ``"rope"``, ``"alibi"`` and ``"none"`` add nothing to the embeddings and are a
    ``ValueError`` here: attention applies the first two (``MultiHeadAttention(rotary=True)``,
    ``MultiHeadAttention(alibi=True)``).

    Example:
        >>> build_positional("learned", 16, 64)
        LearnedPositionalEncoding(d_model=16, max_len=64)
    """
    if kind == "sinusoidal":
        return SinusoidalPositionalEncoding(d_model, max_len)
    if kind == "learned":
        return LearnedPositionalEncoding(d_model, max_len)
    if kind in POSITIONAL_KINDS:
        raise ValueError(
            f"build_positional makes the additive encodings {ADDITIVE_KINDS}; positional={kind!r} "
            "adds nothing to the embeddings (rope and alibi are applied inside attention)"
        )
    raise ValueError(f"positional must be one of {POSITIONAL_KINDS}, got {kind!r}")


# ------------------------------------------------------------------------------ rotary


class RotaryEmbedding(nn.Module):
    r"""Rotary position embedding, RoPE (Su et al., 2021, "RoFormer", Eq. 34).

    Feature pairs of a query or key at position ``p`` are rotated by the angles
    ``p * theta_i``, ``theta_i = base^(-2i/D)``, ``i = 0 .. D/2 - 1``:

    .. math::
        (x_a, x_b) \mapsto (x_a \cos p	heta_i - x_b \sin p	heta_i,\;
                           x_b \cos p	heta_i + x_a \sin p	heta_i)

    Rotations compose, so ``R_p q . R_s k = q . R_{s-p} k`` depends only on the offset
    ``s - p`` (Eq. 16): the attention logits become relative while the cached keys stay fixed.

    **Pairing convention.** The paper pairs adjacent features ``(2i, 2i+1)``. This class uses the
    *half-split* pairing of GPT-NeoX and LLaMA: feature ``i`` with feature ``i + D/2``. The two
    differ by a fixed permutation of the head's features, which the q/k projections absorb, so
    they are equally expressive, but weights converted from a checkpoint must use the convention
    it was trained with (Hugging Face LLaMA/GPT-NeoX weights use this one).

    The cos/sin tables are non-persistent buffers (a function of ``D`` and ``base``, not trained
    values), computed in float64 and grown by doubling when a later position comes in.

    Args:
        dim: ``D``, the head size being rotated; even.
        base: the wavelength base (10000 in the paper and in LLaMA-1/2).
        max_len: positions to precompute (more are added on demand).

    Shapes: ``x (..., N, D)`` and ``positions (N,)`` or ``(B, N)`` (with ``x (B, H, N, D)``)
    -> ``(..., N, D)``.

    Example:
        >>> rope = RotaryEmbedding(8)
        >>> q = torch.randn(2, 4, 5, 8)  # (B, H, N, D)
        >>> rope(q, torch.arange(5)).shape
        torch.Size([2, 4, 5, 8])
    """

    cos: Tensor
    sin: Tensor

    def __init__(self, dim: int, *, base: float = 10000.0, max_len: int = 512) -> None:
        super().__init__()
        dim = check_int(dim, "dim")
        if dim % 2:
            raise ValueError(f"dim must be even to pair features for rotation, got {dim}")
        if isinstance(base, bool) or not isinstance(base, (int, float)) or not base > 1.0:
            raise ValueError(f"base must be a number > 1, got {base!r}")
        self.dim = dim
        self.base = float(base)
        cos, sin = self._tables(check_int(max_len, "max_len"), None)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def _tables(self, n: int, device: torch.device | None) -> tuple[Tensor, Tensor]:
        # Built outside inference mode so that a table grown while decoding can still be used by
        # a later training step; float64 angles because p * theta loses precision in float32 at
        # large p.
        with torch.inference_mode(False), torch.no_grad():
            inv_freq = self.base ** (
                -torch.arange(0, self.dim, 2, dtype=torch.float64, device=device) / self.dim
            )  # (D/2,)
            angle = torch.arange(n, dtype=torch.float64, device=device)[:, None] * inv_freq
            angle = torch.cat([angle, angle], dim=-1)  # (n, D): half-split pairs share angles
            return angle.cos().float(), angle.sin().float()

    def cos_sin(
        self, positions: Tensor, *, dtype: torch.dtype, device: torch.device
    ) -> tuple[Tensor, Tensor]:
        """``cos``, ``sin`` of shape ``positions.shape + (D,)`` for integer ``positions``."""
        end = int(positions.max()) + 1 if positions.numel() else 0
        if end > self.cos.shape[0]:
            size = max(end, 2 * self.cos.shape[0])
            self.cos, self.sin = self._tables(size, self.cos.device)
        cos, sin = self.cos, self.sin
        if cos.dtype != dtype or cos.device != device:
            cos, sin = cos.to(device=device, dtype=dtype), sin.to(device=device, dtype=dtype)
        positions = positions.to(cos.device)
        return cos[positions], sin[positions]

    def cos_sin_range(
        self, offset: int, n: int, *, dtype: torch.dtype, device: torch.device
    ) -> tuple[Tensor, Tensor]:
        """``cos``, ``sin`` ``(n, D)`` of positions ``offset .. offset + n - 1`` (views; the
        common, contiguous case without an index gather)."""
        end = offset + n
        if end > self.cos.shape[0]:
            size = max(end, 2 * self.cos.shape[0])
            self.cos, self.sin = self._tables(size, self.cos.device)
        cos, sin = self.cos[offset:end], self.sin[offset:end]
        if cos.dtype != dtype or cos.device != device:
            cos, sin = cos.to(device=device, dtype=dtype), sin.to(device=device, dtype=dtype)
        return cos, sin

    def rotate_qk(
        self,
        q: Tensor,
        k: Tensor,
        offset: int = 0,
        positions: Tensor | None = None,
        *,
        same_tokens: bool = True,
    ) -> tuple[Tensor, Tensor]:
        """Rotate queries ``(B, H, Nq, D)`` and keys ``(B, Hkv, Nk, D)`` of one attention call.

        Self-attention (``same_tokens``): both at ``positions`` (``(N,)`` or ``(B, N)``), or
        counted from ``offset``. Otherwise (cross-attention over one sequence) keys sit at
        ``0 .. Nk - 1`` and queries bottom-right, the last query at the last key.
        """
        if not same_tokens:
            nq, nk = q.shape[2], k.shape[2]
            if nk < nq:
                raise ValueError(
                    f"rotary attention aligns queries bottom-right with the keys, so it "
                    f"needs Nq <= Nk, got Nq={nq} and Nk={nk}"
                )
            cos, sin = self.cos_sin_range(0, nk, dtype=q.dtype, device=q.device)
            return self.rotate(q, cos[nk - nq :], sin[nk - nq :]), self.rotate(k, cos, sin)
        if positions is None:
            cos, sin = self.cos_sin_range(offset, q.shape[2], dtype=q.dtype, device=q.device)
        else:
            cos, sin = self.cos_sin(positions, dtype=q.dtype, device=q.device)
            if positions.dim() == 2:
                cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # (B, 1, N, D): every head
        return self.rotate(q, cos, sin), self.rotate(k, cos, sin)

    @staticmethod
    def rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        """Rotate ``x (..., N, D)`` by precomputed ``cos``/``sin`` broadcastable to it."""
        x1, x2 = x.chunk(2, dim=-1)  # the half-split pairs (i, i + D/2)
        rotated = torch.cat([-x2, x1], dim=-1)
        return x * cos + rotated * sin

    def forward(self, x: Tensor, positions: Tensor | int = 0) -> Tensor:
        """Rotate ``x (..., N, D)`` at ``positions`` (an int offset, ``(N,)`` or ``(B, N)``)."""
        if not isinstance(x, Tensor) or x.dim() < 2 or x.shape[-1] != self.dim:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"x must be (..., N, D={self.dim}), got {shape}")
        n = x.shape[-2]
        if isinstance(positions, int):
            cos, sin = self.cos_sin_range(
                check_int(positions, "offset", minimum=0), n, dtype=x.dtype, device=x.device
            )
        else:
            batch = x.shape[0] if x.dim() >= 3 else 1
            positions = check_positions(positions, batch, n)
            cos, sin = self.cos_sin(positions, dtype=x.dtype, device=x.device)
            if positions.dim() == 2 and x.dim() == 4:
                cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # (B, 1, N, D) over heads
        return self.rotate(x, cos, sin)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, base={self.base}"


# ------------------------------------------------------------------------------ ALiBi


def alibi_slopes(num_heads: int) -> Tensor:
    """ALiBi head slopes ``(H,)`` (Press et al., 2022, Sec. 3), float32.

    For ``H`` a power of two the slopes are the geometric sequence ``2^(-8i/H)``,
    ``i = 1..H`` (``1/2 ... 1/256`` for 8 heads). Otherwise the paper takes the sequence for
    the largest power of two ``P < H`` and adds every other slope of the ``2P`` sequence, so
    the slopes still cover the same range.

    Example:
        >>> alibi_slopes(4)
        tensor([0.2500, 0.0625, 0.0156, 0.0039])
        >>> alibi_slopes(6).shape
        torch.Size([6])
    """
    check_int(num_heads, "num_heads")

    def geometric(n: int) -> list[float]:
        ratio = 2.0 ** (-8.0 / n)
        return [ratio ** (i + 1) for i in range(n)]

    power = 1 << (num_heads.bit_length() - 1)  # largest power of two <= H
    slopes = geometric(power)
    if power < num_heads:
        slopes += geometric(2 * power)[0::2][: num_heads - power]
    return torch.tensor(slopes, dtype=torch.float32)


def alibi_bias(slopes: Tensor, q_positions: Tensor, k_positions: Tensor) -> Tensor:
    r"""The ALiBi logit bias ``(H, Nq, Nk)``: ``-m_h * |i - j|`` for the query at position ``i``
    and the key at position ``j`` (Press et al., 2022, Sec. 3).

    The paper defines ``-m_h (i - j)`` for the keys a causal query may see (``j <= i``); the
    absolute value extends it symmetrically to keys after the query, for encoders, and agrees
    with the paper wherever a causal mask lets a query look. The bias has no batch axis: it
    broadcasts over ``B`` instead of being materialized ``B`` times.

    Args:
        slopes: ``(H,)`` float, from :func:`alibi_slopes`.
        q_positions: ``(Nq,)`` integer absolute positions of the queries.
        k_positions: ``(Nk,)`` integer absolute positions of the keys.

    Example:
        >>> alibi_bias(torch.tensor([0.5]), torch.arange(3), torch.arange(3))[0, 2].tolist()
        [-1.0, -0.5, -0.0]
    """
    distance = (q_positions[:, None] - k_positions[None, :]).abs()  # (Nq, Nk)
    return -slopes[:, None, None] * distance.to(slopes.dtype)
