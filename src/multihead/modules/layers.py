"""Transformer encoder and decoder layers (Vaswani et al., 2017, Sec. 3.1).

Each sub-layer (self-attention, cross-attention, feed-forward) sits in a residual branch with
dropout on its output. Two placements of the LayerNorm:

* post-norm (``norm_first=False``, the paper's "Add & Norm"): ``x = LayerNorm(x + Sublayer(x))``;
* pre-norm (``norm_first=True``): ``x = x + Sublayer(LayerNorm(x))``, which keeps an identity
  path from input to output and trains without learning-rate warm-up (Xiong et al., 2020). A
  pre-norm stack needs one more LayerNorm after its last layer (see
  :class:`multihead.modules.models.Encoder`).

The norm is LayerNorm (Ba et al., 2016) or RMSNorm (Zhang & Sennrich, 2019, as in LLaMA), with
epsilon ``norm_eps``.

Both layers take a ``cache`` for incremental decoding (see :mod:`multihead.cache`): the
self-attention :class:`~multihead.cache.KVCache` and, for :class:`DecoderLayer`, a
cross-attention :class:`~multihead.cache.StaticKVCache`.

``state_dict`` keys: ``self_attn.*`` (and ``cross_attn.*``, see
:class:`~multihead.modules.attention.MultiHeadAttention`), ``feed_forward.*`` (see
:class:`~multihead.modules.feedforward.FeedForward`), ``norm1``, ``norm2`` (and ``norm3``)
with ``.weight`` (and ``.bias`` for LayerNorm). ``norm1`` guards self-attention, ``norm2`` the
next sub-layer (cross-attention in a decoder layer, else the feed-forward), ``norm3`` the
decoder's feed-forward.

Shape legend: ``B`` batch, ``H`` heads, ``Nq``/``Nk`` query/key lengths, ``E`` model size.
Padding masks are bool ``(B, N)`` with ``True`` = real token.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from .._validation import check_bool, check_choice, check_probability
from ..cache import KVCache, StaticKVCache
from ..config import NORMS
from .attention import MultiHeadAttention
from .feedforward import FeedForward

__all__ = ["NORMS", "DecoderLayer", "EncoderLayer", "make_norm"]


def make_norm(kind: str, d_model: int, eps: float = 1e-5) -> nn.Module:
    """``nn.LayerNorm`` or ``nn.RMSNorm`` (one of :data:`NORMS`) over ``d_model`` features.

    Example:
        >>> make_norm("rmsnorm", 8, 1e-6)
        RMSNorm((8,), eps=1e-06, elementwise_affine=True)
    """
    check_choice(kind, "norm", NORMS)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
        raise ValueError(f"norm_eps must be a float > 0, got {eps!r}")
    if kind == "rmsnorm":
        return nn.RMSNorm(d_model, eps=float(eps))
    return nn.LayerNorm(d_model, eps=float(eps))


def _attention(
    d_model: int,
    num_heads: int,
    num_kv_heads: int | None,
    attn_dropout: float,
    bias: bool,
    **positions: Any,
) -> MultiHeadAttention:
    return MultiHeadAttention(
        d_model, num_heads, num_kv_heads=num_kv_heads, dropout=attn_dropout, bias=bias, **positions
    )


class _Residual(nn.Module):
    """What both layers build: self-attention, cross-attention when the class asks for it, a
    feed-forward network, the norms and the residual dropout (in the order that fixes how a
    seed initialises them)."""

    cross_attention = False

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        d_ff: int,
        *,
        dropout: float = 0.1,
        attn_dropout: float = 0.0,
        norm_first: bool = True,
        activation: str = "gelu",
        num_kv_heads: int | None = None,
        bias: bool = True,
        norm: str = "layernorm",
        norm_eps: float = 1e-5,
        ffn: str = "mlp",
        rotary: bool = False,
        rope_base: float = 10000.0,
        alibi: bool = False,
    ) -> None:
        super().__init__()
        check_probability(dropout, "dropout")
        check_bool(norm_first, "norm_first")
        self.norm_first = norm_first
        self.self_attn = _attention(
            d_model,
            num_heads,
            num_kv_heads,
            attn_dropout,
            bias,
            rotary=rotary,
            rope_base=rope_base,
            alibi=alibi,
        )
        if self.cross_attention:
            # Relative positions are a property of one sequence: cross-attention has none.
            self.cross_attn = _attention(d_model, num_heads, num_kv_heads, attn_dropout, bias)
        self.feed_forward = FeedForward(d_model, d_ff, dropout, activation, kind=ffn, bias=bias)
        self.norm1 = make_norm(norm, d_model, norm_eps)
        self.norm2 = make_norm(norm, d_model, norm_eps)
        if self.cross_attention:
            self.norm3 = make_norm(norm, d_model, norm_eps)
        self.dropout = nn.Dropout(dropout)

    def _drop(self, x: Tensor) -> Tensor:
        # Calling the module in evaluation mode costs as much as the add it guards, once per
        # sub-layer and token when decoding: skip it.
        return self.dropout(x) if self.training and self.dropout.p > 0 else x

    def _input(self, x: Tensor, norm: nn.Module) -> Tensor:
        """What a sub-layer reads: ``norm(x)`` before it (pre-norm) or ``x`` itself."""
        return norm(x) if self.norm_first else x

    def _add(self, x: Tensor, out: Tensor, norm: nn.Module) -> Tensor:
        """The residual connection around a sub-layer's output ``out``, then ``norm`` after it
        (post-norm: the paper's "Add & Norm")."""
        x = x + self._drop(out)
        return x if self.norm_first else norm(x)

    def _self_attention(
        self,
        x: Tensor,
        padding_mask: Tensor | None,
        mask: Tensor | None,
        causal: bool,
        need_weights: bool,
        cache: KVCache | None,
        positions: Tensor | None,
    ) -> tuple[Tensor, Tensor | None]:
        """The first sub-layer of both layers, with its residual: ``x (B, N, E)`` -> ``(x,
        weights (B, H, N, Nk) or None)``."""
        attended, weights = self.self_attn(
            self._input(x, self.norm1),
            None,  # key and value: self-attention
            None,
            mask,
            padding_mask,
            causal=causal,
            need_weights=need_weights,
            cache=cache,
            positions=positions,
        )
        return self._add(x, attended, self.norm1), weights


class EncoderLayer(_Residual):
    """Self-attention and a feed-forward network, each in a residual branch.

    With ``causal=True`` in :meth:`forward` this is also the layer of a decoder-only language
    model (GPT has no cross-attention).

    Args:
        d_model: ``E``.
        num_heads: ``H``; ``E % H == 0``.
        d_ff: hidden size of the feed-forward network.
        dropout: residual dropout on each sub-layer's output and dropout inside the
            feed-forward network.
        attn_dropout: dropout on the attention probabilities.
        norm_first: pre-norm (``True``) or post-norm (``False``, the paper's layout).
        activation: one of :data:`~multihead.modules.feedforward.ACTIVATIONS`.
        num_kv_heads: key/value heads for grouped-query attention (default ``num_heads``).
        bias: biases in the attention projections and the feed-forward network.
        norm: ``"layernorm"`` or ``"rmsnorm"``; ``norm_eps`` its epsilon.
        ffn: ``"mlp"`` or ``"gated"`` (see :class:`FeedForward`).
        rotary, rope_base, alibi: position schemes of the self-attention (see
            :class:`MultiHeadAttention`).

    Example:
        >>> import torch
        >>> layer = EncoderLayer(32, 4, 64)
        >>> x = torch.randn(2, 5, 32)
        >>> y, w = layer(x, padding_mask=torch.ones(2, 5, dtype=torch.bool), need_weights=True)
        >>> y.shape, w.shape
        (torch.Size([2, 5, 32]), torch.Size([2, 4, 5, 5]))
    """

    def forward(
        self,
        x: Tensor,
        padding_mask: Tensor | None = None,
        mask: Tensor | None = None,
        causal: bool = False,
        need_weights: bool = False,
        *,
        cache: KVCache | None = None,
        positions: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """``x (B, N, E)`` -> ``(y (B, N, E), weights (B, H, N, Nk) or None)``.

        ``padding_mask (B, Nk)``: bool, ``True`` = real token (padded keys are never attended
        to). ``mask``: any extra attention mask accepted by :class:`MultiHeadAttention`.
        ``cache``: the self-attention :class:`~multihead.cache.KVCache` (then ``x`` holds only
        the new tokens, ``Nk`` counts the cached ones and ``padding_mask`` covers them all).
        ``positions``: absolute positions of ``x``'s tokens, for rotary attention.
        """
        x, weights = self._self_attention(
            x, padding_mask, mask, causal, need_weights, cache, positions
        )
        x = self._add(x, self.feed_forward(self._input(x, self.norm2)), self.norm2)
        return x, weights


class DecoderLayer(_Residual):
    """Causal self-attention, cross-attention to the encoder output, and a feed-forward network.

    Args: as :class:`EncoderLayer`.

    Example:
        >>> import torch
        >>> layer = DecoderLayer(32, 4, 64)
        >>> y, self_w, cross_w = layer(
        ...     torch.randn(2, 3, 32), torch.randn(2, 7, 32), need_weights=True
        ... )
        >>> y.shape, self_w.shape, cross_w.shape
        (torch.Size([2, 3, 32]), torch.Size([2, 4, 3, 3]), torch.Size([2, 4, 3, 7]))
    """

    cross_attention = True  # _Residual.__init__ adds cross_attn and norm3

    def forward(
        self,
        x: Tensor,
        memory: Tensor,
        *,
        tgt_padding_mask: Tensor | None = None,
        memory_padding_mask: Tensor | None = None,
        need_weights: bool = False,
        cache: KVCache | None = None,
        cross_cache: StaticKVCache | None = None,
        positions: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """``x (B, Nt, E)``, ``memory (B, Ns, E)`` -> ``(y (B, Nt, E), self weights
        (B, H, Nt, Nk) or None, cross weights (B, H, Nt, Ns) or None)``.

        Self-attention is causal: target position ``t`` sees positions ``<= t`` only.
        ``tgt_padding_mask (B, Nk)`` and ``memory_padding_mask (B, Ns)``: bool, ``True`` = real.
        ``cache``/``cross_cache``: the self-attention :class:`~multihead.cache.KVCache` and the
        cross-attention :class:`~multihead.cache.StaticKVCache` for incremental decoding (``x``
        then holds only the new tokens; ``memory`` is projected once, on the first step).
        """
        x, self_weights = self._self_attention(
            x, tgt_padding_mask, None, True, need_weights, cache, positions
        )
        attended, cross_weights = self.cross_attn(
            self._input(x, self.norm2),
            memory,
            key_padding_mask=memory_padding_mask,
            need_weights=need_weights,
            cache=cross_cache,
        )
        x = self._add(x, attended, self.norm2)
        x = self._add(x, self.feed_forward(self._input(x, self.norm3)), self.norm3)
        return x, self_weights, cross_weights
