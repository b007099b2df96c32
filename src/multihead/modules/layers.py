"""Transformer encoder and decoder layers (Vaswani et al., 2017, Sec. 3.1).

Each sub-layer (self-attention, cross-attention, feed-forward) sits in a residual branch with
dropout on its output. Two placements of the LayerNorm:

* post-norm (``norm_first=False``, the paper's "Add & Norm"): ``x = LayerNorm(x + Sublayer(x))``;
* pre-norm (``norm_first=True``): ``x = x + Sublayer(LayerNorm(x))``, which keeps an identity
  path from input to output and trains without learning-rate warm-up (Xiong et al., 2020). A
  pre-norm stack needs one more LayerNorm after its last layer (see
  :class:`multihead.modules.models.Encoder`).

Shape legend: ``B`` batch, ``H`` heads, ``Nq``/``Nk`` query/key lengths, ``E`` model size.
Padding masks are bool ``(B, N)`` with ``True`` = real token.
"""

from __future__ import annotations

from torch import Tensor, nn

from ..functional._checks import check_dropout
from .attention import MultiHeadAttention
from .feedforward import FeedForward

__all__ = ["DecoderLayer", "EncoderLayer"]


class EncoderLayer(nn.Module):
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
        activation: ``"gelu"`` or ``"relu"``.
        num_kv_heads: key/value heads for grouped-query attention (default ``num_heads``).

    Example:
        >>> import torch
        >>> layer = EncoderLayer(32, 4, 64)
        >>> x = torch.randn(2, 5, 32)
        >>> y, w = layer(x, padding_mask=torch.ones(2, 5, dtype=torch.bool), need_weights=True)
        >>> y.shape, w.shape
        (torch.Size([2, 5, 32]), torch.Size([2, 4, 5, 5]))
    """

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
    ) -> None:
        super().__init__()
        check_dropout(dropout, "dropout")
        if not isinstance(norm_first, bool):
            raise TypeError(f"norm_first must be a bool, got {type(norm_first).__name__}")
        self.norm_first = norm_first
        self.self_attn = MultiHeadAttention(
            d_model, num_heads, num_kv_heads=num_kv_heads, dropout=attn_dropout
        )
        self.feed_forward = FeedForward(d_model, d_ff, dropout, activation)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self,
        x: Tensor,
        padding_mask: Tensor | None = None,
        mask: Tensor | None = None,
        causal: bool = False,
        need_weights: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """``x (B, N, E)`` -> ``(y (B, N, E), weights (B, H, N, N) or None)``.

        ``padding_mask (B, N)``: bool, ``True`` = real token (padded keys are never attended
        to). ``mask``: any extra attention mask accepted by :class:`MultiHeadAttention`.
        """
        if self.norm_first:
            attended, weights = self.self_attn(
                self.norm1(x),
                mask=mask,
                key_padding_mask=padding_mask,
                causal=causal,
                need_weights=need_weights,
            )
            x = x + self.dropout(attended)
            x = x + self.dropout(self.feed_forward(self.norm2(x)))
        else:
            attended, weights = self.self_attn(
                x,
                mask=mask,
                key_padding_mask=padding_mask,
                causal=causal,
                need_weights=need_weights,
            )
            x = self.norm1(x + self.dropout(attended))
            x = self.norm2(x + self.dropout(self.feed_forward(x)))
        return x, weights


class DecoderLayer(nn.Module):
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
    ) -> None:
        super().__init__()
        check_dropout(dropout, "dropout")
        if not isinstance(norm_first, bool):
            raise TypeError(f"norm_first must be a bool, got {type(norm_first).__name__}")
        self.norm_first = norm_first
        self.self_attn = MultiHeadAttention(
            d_model, num_heads, num_kv_heads=num_kv_heads, dropout=attn_dropout
        )
        self.cross_attn = MultiHeadAttention(
            d_model, num_heads, num_kv_heads=num_kv_heads, dropout=attn_dropout
        )
        self.feed_forward = FeedForward(d_model, d_ff, dropout, activation)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self,
        x: Tensor,
        memory: Tensor,
        *,
        tgt_padding_mask: Tensor | None = None,
        memory_padding_mask: Tensor | None = None,
        need_weights: bool = False,
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """``x (B, Nt, E)``, ``memory (B, Ns, E)`` -> ``(y (B, Nt, E), self weights
        (B, H, Nt, Nt) or None, cross weights (B, H, Nt, Ns) or None)``.

        Self-attention is causal: target position ``t`` sees positions ``<= t`` only.
        ``tgt_padding_mask (B, Nt)`` and ``memory_padding_mask (B, Ns)``: bool, ``True`` = real.
        """
        if self.norm_first:
            h = self.norm1(x)
            attended, self_weights = self.self_attn(
                h, key_padding_mask=tgt_padding_mask, causal=True, need_weights=need_weights
            )
            x = x + self.dropout(attended)
            attended, cross_weights = self.cross_attn(
                self.norm2(x),
                memory,
                key_padding_mask=memory_padding_mask,
                need_weights=need_weights,
            )
            x = x + self.dropout(attended)
            x = x + self.dropout(self.feed_forward(self.norm3(x)))
        else:
            attended, self_weights = self.self_attn(
                x, key_padding_mask=tgt_padding_mask, causal=True, need_weights=need_weights
            )
            x = self.norm1(x + self.dropout(attended))
            attended, cross_weights = self.cross_attn(
                x, memory, key_padding_mask=memory_padding_mask, need_weights=need_weights
            )
            x = self.norm2(x + self.dropout(attended))
            x = self.norm3(x + self.dropout(self.feed_forward(x)))
        return x, self_weights, cross_weights
