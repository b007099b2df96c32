"""The stacks every token model is made of: the embedding stem, :class:`Encoder` and
:class:`Decoder`.

An :class:`Encoder` is token embedding, positions, dropout, a stack of
:class:`~multihead.modules.EncoderLayer` and (pre-norm) a final norm; with ``causal=True`` it is
the body of a decoder-only LM. A :class:`Decoder` adds cross-attention to an encoder's output.
Both are built from a :class:`~multihead.config.TransformerConfig`. ``state_dict`` keys are
documented in :mod:`multihead.modules.models`.

Shape legend: ``B`` batch, ``H`` heads, ``Ns``/``Nt`` source/target lengths, ``N`` a length,
``E`` model size (``d_model``).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, NamedTuple, TypedDict

from torch import Tensor, nn

from .._validation import check_int, check_padding_mask, check_token_ids
from ..cache import DecoderCache
from ..config import TransformerConfig, ViTConfig
from ..positional import (
    ADDITIVE_KINDS,
    AdditivePositionalEncoding,
    build_positional,
    check_positions,
)
from .layers import DecoderLayer, EncoderLayer, make_norm

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["Decoder", "DecoderOutput", "EmbedOptions", "Encoder", "EncoderOptions", "EncoderOutput"]


class EncoderOutput(NamedTuple):
    """What :class:`Encoder` returns: ``hidden (B, N, E)`` and, when asked, per-layer weights."""

    hidden: Tensor
    weights: tuple[Tensor, ...]


class DecoderOutput(NamedTuple):
    """What :class:`Decoder` returns: ``hidden (B, Nt, E)`` and, when asked, per-layer weights."""

    hidden: Tensor
    self_weights: tuple[Tensor, ...]
    cross_weights: tuple[Tensor, ...]


def check_config(config: Any, cls: type) -> None:
    if not isinstance(config, cls):
        raise TypeError(f"config must be a {cls.__name__}, got {type(config).__name__}")


def new_embedding(num_embeddings: int, d_model: int) -> nn.Embedding:
    embedding = nn.Embedding(num_embeddings, d_model)
    # std 0.02 as GPT-2/BERT; the sqrt(d_model) scale applied on lookup brings tokens to about
    # the amplitude of the positional encodings.
    nn.init.normal_(embedding.weight, std=0.02)
    return embedding


def new_head(d_model: int, out_features: int, *, bias: bool) -> nn.Linear:
    head = nn.Linear(d_model, out_features, bias=bias)
    nn.init.normal_(head.weight, std=0.02)
    if head.bias is not None:
        nn.init.zeros_(head.bias)
    return head


def final_norm(config: TransformerConfig | ViTConfig) -> nn.Module:
    # A pre-norm stack's residual stream is never normalized inside the layers.
    if isinstance(config, TransformerConfig):
        wanted = config.norm_first if config.final_norm is None else config.final_norm
        return make_norm(config.norm, config.d_model, config.norm_eps) if wanted else nn.Identity()
    return nn.LayerNorm(config.d_model) if config.norm_first else nn.Identity()


def check_cache(cache: Any, num_layers: int, *, cross: bool) -> None:
    if not isinstance(cache, DecoderCache):
        raise TypeError(
            f"cache must be a multihead.cache.DecoderCache (model.new_cache()), got "
            f"{type(cache).__name__}"
        )
    if len(cache) != num_layers:
        raise ValueError(f"cache has {len(cache)} layers but the model has {num_layers}")
    if cross and cache.cross_attn is None:
        raise ValueError(
            "an encoder-decoder needs cross-attention caches: make the cache with "
            "model.new_cache() (DecoderCache(..., cross=True))"
        )


class EmbedOptions(TypedDict, total=False):
    """The keywords of :meth:`Encoder.embed` that models pass on to it."""

    positions: Tensor | None
    token_type_ids: Tensor | None


class EncoderOptions(TypedDict, total=False):
    """The keywords :meth:`Encoder.forward` passes on to :meth:`Encoder.run`."""

    cache: DecoderCache | None
    positions: Tensor | None
    token_type_ids: Tensor | None


class _Stack(nn.Module):
    """What :class:`Encoder` and :class:`Decoder` share: the embedding stem (token embedding,
    positions, token types, optional norm, dropout), ``depth`` layers of ``layer_class`` and the
    final norm. Attribute names are ``state_dict`` keys; modules are made in the order that
    fixes how a seed initialises them."""

    positional: AdditivePositionalEncoding | None
    token_type: nn.Embedding | None
    embedding_norm: nn.Module | None

    def __init__(
        self,
        config: TransformerConfig,
        embedding: nn.Embedding | None,
        vocab_size: int,
        layer_class: type[EncoderLayer] | type[DecoderLayer],
        depth: int,
    ) -> None:
        super().__init__()
        self.config = config
        if embedding is None:
            embedding = new_embedding(vocab_size, config.d_model)
        elif not isinstance(embedding, nn.Embedding) or embedding.embedding_dim != config.d_model:
            raise ValueError(f"embedding must be an nn.Embedding of size d_model={config.d_model}")
        self.embedding = embedding
        # Sec. 3.4: "we multiply those weights by sqrt(d_model)" (unless the config says not).
        self.embed_scale = math.sqrt(config.d_model) if config.embed_scale else 1.0
        self.positional = (
            build_positional(config.positional, config.d_model, config.max_len)
            if config.positional in ADDITIVE_KINDS
            else None
        )
        self.token_type = (
            new_embedding(config.type_vocab_size, config.d_model)
            if config.type_vocab_size > 0
            else None
        )
        self.embedding_norm = (
            make_norm(config.norm, config.d_model, config.norm_eps)
            if config.embedding_norm
            else None
        )
        self.dropout = nn.Dropout(config.dropout)
        options = config.layer_options()
        self.layers = nn.ModuleList(
            layer_class(config.d_model, config.num_heads, config.d_ff, **options)
            for _ in range(depth)
        )
        self.norm = final_norm(config)

    def embed(
        self,
        ids: Tensor,
        offset: int = 0,
        *,
        positions: Tensor | None = None,
        token_type_ids: Tensor | None = None,
    ) -> Tensor:
        """``ids (B, N)`` -> ``(B, N, E)``: token embeddings (times ``sqrt(d_model)`` when
        ``config.embed_scale``), plus positions (additive kinds), plus token-type embeddings
        (when ``config.type_vocab_size > 0``; type 0 when ``token_type_ids`` is None), then the
        embedding norm (``config.embedding_norm``) and dropout.

        ``offset`` is the position of the first id (incremental decoding); ``positions``
        ``(N,)`` or ``(B, N)`` gives every id's position instead (e.g. left padding). Rotary
        and ALiBi positions are applied inside attention, not here.
        """
        x = self.embedding(ids)  # (B, N, E)
        if self.embed_scale != 1.0:
            x = x * self.embed_scale
        if self.positional is not None:
            x = self.positional(x, offset, positions=positions)
        if self.token_type is not None:
            if token_type_ids is None:
                x = x + self.token_type.weight[0]
            else:
                check_token_ids(token_type_ids, "token_type_ids", self.token_type.num_embeddings)
                if token_type_ids.shape != ids.shape:
                    raise ValueError(
                        f"token_type_ids must have the shape of the ids {tuple(ids.shape)}, got "
                        f"{tuple(token_type_ids.shape)}"
                    )
                x = x + self.token_type(token_type_ids)
        elif token_type_ids is not None:
            raise ValueError("token_type_ids given but config.type_vocab_size is 0")
        if self.embedding_norm is not None:
            x = self.embedding_norm(x)
        return self.dropout(x)

    def _prepare(
        self,
        ids: Tensor,
        padding_mask: Tensor | None,
        cache: DecoderCache | None,
        positions: Tensor | None,
        *,
        cross: bool,
        mask_name: str,
    ) -> tuple[int, Tensor | None]:
        """Check the cache and positions; return ``(offset, positions for attention)``."""
        b, n = ids.shape
        offset = 0
        if cache is not None:
            check_cache(cache, len(self.layers), cross=cross)
            cache.check_room(n)
            offset = cache.length
        check_padding_mask(padding_mask, mask_name, (b, offset + n))
        if positions is not None:
            if self.config.positional == "alibi":
                raise ValueError(
                    "positions is not supported with positional='alibi' (ALiBi reads distances "
                    "from the key order)"
                )
            positions = check_positions(positions, b, n)
        return offset, positions if self.config.positional == "rope" else None


def masked_mean(hidden: Tensor, padding_mask: Tensor | None) -> Tensor:
    """Mean of ``hidden (B, N, E)`` over real positions -> ``(B, E)``; zeros for no real one."""
    if padding_mask is None:
        return hidden.mean(dim=1)
    real = padding_mask.unsqueeze(-1)  # (B, N, 1)
    # masked_fill rather than a product, so that whatever sits at padded positions cannot leak.
    total = hidden.masked_fill(~real, 0.0).sum(dim=1)  # (B, E)
    count = real.sum(dim=1).clamp(min=1).to(hidden.dtype)  # (B, 1)
    return total / count


class Encoder(_Stack):
    """Token embedding (times ``sqrt(d_model)`` unless ``config.embed_scale=False``), positions,
    dropout, encoder layers and, for pre-norm, a final norm.

    Args:
        config: the model's :class:`TransformerConfig`.
        embedding: an ``nn.Embedding`` to share (weight tying); default a new
            ``(vocab_size, d_model)`` one.
        num_layers: depth (default ``config.num_encoder_layers``).
        causal: each position attends only to itself and earlier ones (a decoder-only LM).

    Shapes: ``ids (B, N)``, ``padding_mask (B, N)`` -> ``hidden (B, N, E)``.

    Example:
        >>> enc = Encoder(TransformerConfig(vocab_size=10, d_model=16, num_heads=2, d_ff=32))
        >>> hidden, weights = enc(torch.randint(0, 10, (2, 4)), need_weights=True)
        >>> hidden.shape, len(weights), weights[0].shape
        (torch.Size([2, 4, 16]), 2, torch.Size([2, 2, 4, 4]))
    """

    def __init__(
        self,
        config: TransformerConfig,
        *,
        embedding: nn.Embedding | None = None,
        num_layers: int | None = None,
        causal: bool = False,
    ) -> None:
        check_config(config, TransformerConfig)
        depth = config.num_encoder_layers if num_layers is None else num_layers
        check_int(depth, "Encoder.num_layers", minimum=0)
        super().__init__(config, embedding, config.vocab_size, EncoderLayer, depth)
        self.causal = causal

    def run(
        self,
        ids: Tensor,
        padding_mask: Tensor | None,
        need_weights: bool,
        *,
        cache: DecoderCache | None = None,
        positions: Tensor | None = None,
        token_type_ids: Tensor | None = None,
    ) -> EncoderOutput:
        """:meth:`forward` without the id checks, for callers that have checked already.

        With ``cache`` (causal stacks: incremental decoding) ``ids`` are the new tokens only,
        placed after the ``cache.length`` cached ones; ``padding_mask`` then covers every token
        so far, ``(B, cache.length + N)``. ``positions``: see :meth:`embed`.
        """
        offset, attn_positions = self._prepare(
            ids, padding_mask, cache, positions, cross=False, mask_name="padding_mask"
        )
        x = self.embed(ids, offset, positions=positions, token_type_ids=token_type_ids)
        weights = []
        for i, layer in enumerate(self.layers):
            x, w = layer(
                x,
                padding_mask,
                causal=self.causal,
                need_weights=need_weights,
                cache=None if cache is None else cache.self_attn[i],
                positions=attn_positions,
            )
            if w is not None:
                weights.append(w)
        if cache is not None:
            cache.advance(ids.shape[1])
        return EncoderOutput(self.norm(x), tuple(weights))

    def forward(
        self,
        ids: Tensor,
        padding_mask: Tensor | None = None,
        *,
        need_weights: bool = False,
        **options: Unpack[EncoderOptions],
    ) -> EncoderOutput:
        """Check ``ids`` and :meth:`run` (keywords ``cache``, ``positions``,
        ``token_type_ids``)."""
        check_token_ids(ids, "ids", self.embedding.num_embeddings)
        return self.run(ids, padding_mask, need_weights, **options)


class Decoder(_Stack):
    """Target embedding, positions, dropout, decoder layers (causal self-attention,
    cross-attention, feed-forward) and, for pre-norm, a final norm. Returns hidden states;
    the output projection belongs to :class:`Seq2SeqTransformer`.

    Shapes: ``tgt (B, Nt)``, ``memory (B, Ns, E)`` -> ``hidden (B, Nt, E)``.

    Example:
        >>> dec = Decoder(TransformerConfig(vocab_size=10, d_model=16, num_heads=2, d_ff=32))
        >>> dec(torch.randint(0, 10, (2, 3)), torch.randn(2, 5, 16)).hidden.shape
        torch.Size([2, 3, 16])
    """

    def __init__(self, config: TransformerConfig, *, embedding: nn.Embedding | None = None) -> None:
        check_config(config, TransformerConfig)
        super().__init__(
            config, embedding, config.target_vocab_size, DecoderLayer, config.num_decoder_layers
        )

    def forward(
        self,
        tgt: Tensor,
        memory: Tensor,
        *,
        tgt_padding_mask: Tensor | None = None,
        memory_padding_mask: Tensor | None = None,
        need_weights: bool = False,
        cache: DecoderCache | None = None,
        positions: Tensor | None = None,
    ) -> DecoderOutput:
        """``tgt (B, Nt)`` ids attending to ``memory (B, Ns, E)``, the encoder's output.

        With ``cache`` ``tgt`` holds the new tokens only and ``tgt_padding_mask`` covers every
        target token so far; the memory is projected for cross-attention on the first call and
        reused afterwards.
        """
        check_token_ids(tgt, "tgt", self.embedding.num_embeddings)
        check_memory(memory, memory_padding_mask, tgt.shape[0], self.config.d_model)
        offset, attn_positions = self._prepare(
            tgt, tgt_padding_mask, cache, positions, cross=True, mask_name="tgt_padding_mask"
        )
        x = self.embed(tgt, offset, positions=positions)
        self_weights, cross_weights = [], []
        for i, layer in enumerate(self.layers):
            x, sw, cw = layer(
                x,
                memory,
                tgt_padding_mask=tgt_padding_mask,
                memory_padding_mask=memory_padding_mask,
                need_weights=need_weights,
                cache=None if cache is None else cache.self_attn[i],
                cross_cache=None
                if cache is None or cache.cross_attn is None
                else cache.cross_attn[i],
                positions=attn_positions,
            )
            if sw is not None and cw is not None:
                self_weights.append(sw)
                cross_weights.append(cw)
        if cache is not None:
            cache.advance(tgt.shape[1])
        return DecoderOutput(self.norm(x), tuple(self_weights), tuple(cross_weights))


def check_memory(memory: Any, memory_padding_mask: Any, batch: int, d_model: int) -> None:
    if not isinstance(memory, Tensor):
        raise TypeError(f"memory must be a torch.Tensor, got {type(memory).__name__}")
    if memory.dim() != 3 or memory.shape[0] != batch or memory.shape[2] != d_model:
        raise ValueError(
            f"memory must be (B={batch}, Ns, E={d_model}) (the output of encode), "
            f"got shape {tuple(memory.shape)}"
        )
    check_padding_mask(memory_padding_mask, "memory_padding_mask", tuple(memory.shape[:2]))
