"""Transformer models: encoder-decoder, decoder-only LM, encoder classifier and a small ViT.

Every model is built from one frozen config (:class:`TransformerConfig` or :class:`ViTConfig`),
keeps it as ``.config``, and takes batch-first token ids with optional bool padding masks
(``True`` = real token, as Hugging Face's ``attention_mask``). Padding is expected on the right.

Shape legend: ``B`` batch, ``H`` heads, ``Ns``/``Nt`` source/target lengths, ``N`` a length,
``E`` model size (``d_model``), ``V`` vocabulary size, ``C`` classes.

Incremental decoding: :class:`DecoderLM` and :class:`Seq2SeqTransformer` make a key/value cache
with ``new_cache()`` and take it as ``cache=`` (see :mod:`multihead.cache`); each call then feeds
only new tokens and returns exactly the logits of a full pass. ``DecoderLM.generate`` and
:mod:`multihead.decoding` use it.

``state_dict`` keys (stable: weight converters such as :mod:`multihead.interop` map onto them).
A stack is ``encoder`` / ``decoder`` (:class:`Seq2SeqTransformer`), ``decoder``
(:class:`DecoderLM`, a causal :class:`Encoder`) or ``encoder`` (:class:`EncoderClassifier`):

* ``<stack>.embedding.weight (V, E)``: token embeddings (tied ones appear under every name
  that shares them, e.g. ``lm_head.weight``);
* ``<stack>.positional.weight (max_len, E)``: ``positional="learned"`` only (sinusoidal tables,
  rotary tables and ALiBi slopes are not stored);
* ``<stack>.token_type.weight (type_vocab_size, E)``: when ``type_vocab_size > 0``;
* ``<stack>.embedding_norm.{weight,bias}``: when ``embedding_norm`` (no bias for RMSNorm);
* ``<stack>.layers.<i>.self_attn.{q,k,v,out}_proj.{weight,bias}``, and in a seq2seq decoder
  ``...cross_attn.{q,k,v,out}_proj.*``: ``nn.Linear`` layout ``(out, in)``, ``q_proj (H*Dk, E)``,
  ``k_proj``/``v_proj (Hkv*Dk, E)``, ``out_proj (E, H*Dk)``; no ``bias`` keys when
  ``bias=False``;
* ``<stack>.layers.<i>.feed_forward.{linear1,linear2}.{weight,bias}`` (``linear1 (d_ff, E)``
  is the up projection, ``linear2 (E, d_ff)`` the down one) and, for ``ffn="gated"``,
  ``feed_forward.gate.*`` ``(d_ff, E)``;
* ``<stack>.layers.<i>.norm1``, ``norm2`` (and ``norm3`` in a seq2seq decoder layer):
  ``.weight`` (and ``.bias`` for LayerNorm). Pre-norm: ``norm1`` before self-attention,
  ``norm2`` before the next sub-layer. Post-norm (``norm_first=False``, BERT): ``norm1`` after
  the attention residual, ``norm2`` after the feed-forward residual;
* ``<stack>.norm.{weight,bias}``: the final norm (when ``final_norm``, by default iff
  pre-norm);
* ``lm_head.weight (V, E)`` (no bias); ``head.{weight,bias} (C, E)`` for the classifier.

Every stack has ``embed(ids, offset=0, *, positions=None)`` (and ``token_type_ids=`` for
encoders), the input of its first layer; :class:`DecoderLM` and :class:`EncoderClassifier`
expose it as ``model.embed``.

Hugging Face-style options in :class:`TransformerConfig`: ``embed_scale`` (False for GPT-2 and
BERT), ``norm``/``norm_eps``, ``activation="gelu_tanh"`` (GPT-2), ``ffn="gated"`` with
``activation="silu"`` (LLaMA), ``bias=False`` (LLaMA), ``positional="rope"`` with ``rope_base``,
``embedding_norm`` and ``type_vocab_size`` (BERT), ``final_norm``, ``tie_embeddings``.

Example:
    >>> import torch
    >>> config = TransformerConfig(vocab_size=20, d_model=32, num_heads=2, d_ff=64)
    >>> model = Seq2SeqTransformer(config)
    >>> src, tgt = torch.randint(0, 20, (2, 7)), torch.randint(0, 20, (2, 5))
    >>> model(src, tgt).shape
    torch.Size([2, 5, 20])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from .._validation import check_options, check_padding_mask, check_token_ids
from ..cache import DecoderCache
from ..config import TransformerConfig, ViTConfig
from ..decoding import GenerateOptions, generate_lm
from ..positional import LearnedPositionalEncoding
from .layers import EncoderLayer
from .lean_decode import LeanStepper, lean_stepper
from .stacks import (
    Decoder,
    DecoderOutput,
    EmbedOptions,
    Encoder,
    EncoderOutput,
    check_config,
    final_norm,
    masked_mean,
    new_embedding,
    new_head,
)

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = [
    "AttentionMaps",
    "Decoder",
    "DecoderLM",
    "DecoderOutput",
    "Encoder",
    "EncoderClassifier",
    "EncoderOutput",
    "Seq2SeqTransformer",
    "TransformerConfig",
    "ViTClassifier",
    "ViTConfig",
    "num_parameters",
]


@dataclass(frozen=True, kw_only=True)
class AttentionMaps:
    """Per-layer attention weights of one forward pass, each ``(B, H, Nq, Nk)``.

    Rows of real queries sum to 1; padded keys get weight 0. Models fill the groups they have:
    an encoder-decoder all three, a decoder-only LM ``decoder_self``, encoders ``encoder_self``.
    """

    encoder_self: tuple[Tensor, ...] = ()  # (B, H, Ns, Ns) per encoder layer
    decoder_self: tuple[Tensor, ...] = ()  # (B, H, Nt, Nt) per decoder layer, causal
    decoder_cross: tuple[Tensor, ...] = ()  # (B, H, Nt, Ns) per decoder layer


class Seq2SeqTransformer(nn.Module):
    """The encoder-decoder Transformer of Vaswani et al. (2017).

    With ``config.tie_embeddings`` the decoder's input embedding is the output projection
    (Sec. 3.4), and when the vocabularies are shared (``tgt_vocab_size=None``) the source
    embedding is that same matrix too. Without it, all three are separate.

    Shapes: ``src (B, Ns)``, ``tgt (B, Nt)`` token ids; ``src_padding_mask (B, Ns)``,
    ``tgt_padding_mask (B, Nt)`` bool, ``True`` = real; logits ``(B, Nt, V)``. Target position
    ``t`` sees target positions ``<= t`` only (teacher forcing: feed ``[BOS, y1, ..., yn-1]``
    and train against ``[y1, ..., yn]``).

    Example:
        >>> config = TransformerConfig(vocab_size=12, d_model=16, num_heads=2, d_ff=32)
        >>> model = Seq2SeqTransformer(config)
        >>> src = torch.randint(0, 12, (3, 6))
        >>> memory = model.encode(src)
        >>> model.decode(torch.ones(3, 1, dtype=torch.long), memory).shape
        torch.Size([3, 1, 12])
    """

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        check_config(config, TransformerConfig)
        self.config = config
        tgt_embedding = new_embedding(config.target_vocab_size, config.d_model)
        if config.tie_embeddings and config.shared_vocab:
            src_embedding = tgt_embedding
        else:
            src_embedding = new_embedding(config.vocab_size, config.d_model)
        self.encoder = Encoder(config, embedding=src_embedding)
        self.decoder = Decoder(config, embedding=tgt_embedding)
        self.lm_head = new_head(config.d_model, config.target_vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = tgt_embedding.weight

    def _encode(
        self, src: Tensor, src_padding_mask: Tensor | None, need_weights: bool
    ) -> EncoderOutput:
        check_token_ids(src, "src", self.config.vocab_size)
        check_padding_mask(src_padding_mask, "src_padding_mask", tuple(src.shape))
        return self.encoder.run(src, src_padding_mask, need_weights)

    def encode(self, src: Tensor, src_padding_mask: Tensor | None = None) -> Tensor:
        """``src (B, Ns)`` -> ``memory (B, Ns, E)``, computed once per input when decoding."""
        return self._encode(src, src_padding_mask, False).hidden

    def new_cache(self, *, max_len: int | None = None, window: int | None = None) -> DecoderCache:
        """An empty :class:`~multihead.cache.DecoderCache` for :meth:`decode`: one self-attention
        and one cross-attention cache per decoder layer. ``max_len`` preallocates room for that
        many target tokens; ``window`` makes the self-attention caches sliding windows."""
        return DecoderCache(
            self.config.num_decoder_layers, max_len=max_len, window=window, cross=True
        )

    def decode(
        self,
        tgt: Tensor,
        memory: Tensor,
        memory_padding_mask: Tensor | None = None,
        tgt_padding_mask: Tensor | None = None,
        *,
        cache: DecoderCache | None = None,
        positions: Tensor | None = None,
    ) -> Tensor:
        """``tgt (B, Nt)``, ``memory (B, Ns, E)`` -> logits ``(B, Nt, V)``.
        ``memory_padding_mask`` is the ``src_padding_mask`` given to :meth:`encode`.

        Incremental decoding: with ``cache`` (from :meth:`new_cache`) ``tgt`` holds only the
        tokens not fed before (``Nt`` may be 1), the logits are theirs, and the memory's
        keys/values are projected on the first call only (pass the same ``memory`` each step).
        ``tgt_padding_mask`` then covers all target tokens so far, ``(B, cache.length + Nt)``.

        Example:
            >>> config = TransformerConfig(vocab_size=12, d_model=16, num_heads=2, d_ff=32)
            >>> model = Seq2SeqTransformer(config).eval()
            >>> src, tgt = torch.randint(0, 12, (1, 5)), torch.randint(0, 12, (1, 4))
            >>> memory, cache = model.encode(src), model.new_cache(max_len=4)
            >>> steps = [model.decode(tgt[:, t : t + 1], memory, cache=cache) for t in range(4)]
            >>> torch.allclose(torch.cat(steps, 1), model.decode(tgt, memory), atol=1e-5)
            True
        """
        decoded = self.decoder(
            tgt,
            memory,
            tgt_padding_mask=tgt_padding_mask,
            memory_padding_mask=memory_padding_mask,
            cache=cache,
            positions=positions,
        )
        return self.lm_head(decoded.hidden)

    def forward(
        self,
        src: Tensor,
        tgt: Tensor,
        src_padding_mask: Tensor | None = None,
        tgt_padding_mask: Tensor | None = None,
    ) -> Tensor:
        """Teacher-forced logits ``(B, Nt, V)``; see the class docstring."""
        memory = self.encode(src, src_padding_mask)
        return self.decode(tgt, memory, src_padding_mask, tgt_padding_mask)

    def attention_maps(
        self,
        src: Tensor,
        tgt: Tensor,
        src_padding_mask: Tensor | None = None,
        tgt_padding_mask: Tensor | None = None,
    ) -> AttentionMaps:
        """The attention weights of every layer for one teacher-forced pass.

        Example:
            >>> config = TransformerConfig(vocab_size=12, d_model=16, num_heads=2, d_ff=32)
            >>> maps = Seq2SeqTransformer(config).eval().attention_maps(
            ...     torch.randint(0, 12, (1, 6)), torch.randint(0, 12, (1, 4))
            ... )
            >>> maps.decoder_cross[-1].shape  # (B, H, Nt, Ns)
            torch.Size([1, 2, 4, 6])
        """
        encoded = self._encode(src, src_padding_mask, True)
        decoded = self.decoder(
            tgt,
            encoded.hidden,
            tgt_padding_mask=tgt_padding_mask,
            memory_padding_mask=src_padding_mask,
            need_weights=True,
        )
        return AttentionMaps(
            encoder_self=encoded.weights,
            decoder_self=decoded.self_weights,
            decoder_cross=decoded.cross_weights,
        )


class DecoderLM(nn.Module):
    """A decoder-only causal language model (GPT): a causal self-attention stack of
    ``config.num_decoder_layers`` layers over ``config.vocab_size`` tokens, no cross-attention.

    With ``config.tie_embeddings`` the output projection is the token embedding.

    Shapes: ``ids (B, N)``, ``padding_mask (B, N)`` (right padding) -> logits ``(B, N, V)``;
    position ``t`` predicts token ``t + 1`` from tokens ``<= t``.

    Example:
        >>> lm = DecoderLM(TransformerConfig(vocab_size=30, d_model=16, num_heads=2, d_ff=32))
        >>> lm(torch.randint(0, 30, (2, 9))).shape
        torch.Size([2, 9, 30])
    """

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        check_config(config, TransformerConfig)
        if config.tgt_vocab_size not in (None, config.vocab_size):
            raise ValueError(
                "DecoderLM has one vocabulary (vocab_size); got a different "
                f"tgt_vocab_size={config.tgt_vocab_size} (leave it None)"
            )
        self.config = config
        self.decoder = Encoder(config, num_layers=config.num_decoder_layers, causal=True)
        self.lm_head = new_head(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.decoder.embedding.weight

    def new_cache(self, *, max_len: int | None = None, window: int | None = None) -> DecoderCache:
        """An empty :class:`~multihead.cache.DecoderCache` for :meth:`forward`, one
        self-attention cache per layer. ``max_len`` preallocates room for that many tokens
        (prompt plus new ones: no allocation while decoding); ``window`` keeps only the last
        ``window`` keys per layer (sliding-window attention while decoding)."""
        return DecoderCache(self.config.num_decoder_layers, max_len=max_len, window=window)

    def embed(self, ids: Tensor, offset: int = 0, *, positions: Tensor | None = None) -> Tensor:
        """``ids (B, N)`` -> the input of the first layer ``(B, N, E)`` (see
        :meth:`Encoder.embed`)."""
        return self.decoder.embed(ids, offset, positions=positions)

    def forward(
        self,
        ids: Tensor,
        padding_mask: Tensor | None = None,
        *,
        cache: DecoderCache | None = None,
        positions: Tensor | None = None,
    ) -> Tensor:
        """Next-token logits ``(B, N, V)``.

        With ``cache`` (from :meth:`new_cache`) ``ids`` are only the tokens not fed before; they
        attend to every cached token and their logits equal those of a full forward pass over
        the whole sequence. ``padding_mask`` then covers all tokens so far,
        ``(B, cache.length + N)``. ``positions`` ``(N,)`` or ``(B, N)``: explicit absolute
        positions of ``ids`` (e.g. left-padded prompts); not with ``positional="alibi"``.

        Example:
            >>> lm = DecoderLM(TransformerConfig(vocab_size=30, d_model=16, num_heads=2,
            ...                                  d_ff=32, positional="rope")).eval()
            >>> ids = torch.randint(0, 30, (2, 6))
            >>> cache = lm.new_cache(max_len=6)
            >>> steps = [lm(ids[:, :4], cache=cache), lm(ids[:, 4:5], cache=cache),
            ...          lm(ids[:, 5:], cache=cache)]
            >>> torch.allclose(torch.cat(steps, 1), lm(ids), atol=1e-5)
            True
        """
        hidden = self.decoder(ids, padding_mask, cache=cache, positions=positions).hidden
        return self.lm_head(hidden)

    def _lean_stepper(self, max_len: int) -> LeanStepper | None:
        """The lean cached step of :func:`~multihead.decoding.generate_lm`, or ``None`` (see
        :mod:`multihead.modules.lean_decode`); a subclass, or this class with ``forward``,
        ``new_cache`` or ``embed`` patched, always decodes through its own methods."""
        if type(self) is not DecoderLM or any(
            getattr(DecoderLM, name, None) is not fn for name, fn in _LEAN_STANDS_IN_FOR.items()
        ):
            return None  # a subclass or a patched method: its own code decides
        return lean_stepper(self, max_len)

    def generate(
        self, input_ids: Tensor, max_new_tokens: int, **options: Unpack[GenerateOptions]
    ) -> Tensor:
        """Continue ``input_ids (B, N)`` by up to ``max_new_tokens`` tokens -> ``(B, N + T)``.

        Greedy (``do_sample=False``: the most likely token) or sampling (``temperature``,
        ``top_k``, ``top_p`` as :func:`multihead.decoding.sample`). A sequence stops at its first
        ``eos_id`` (kept) and is padded with ``config.pad_id`` afterwards; generation ends early
        once all have stopped. ``use_cache`` feeds one new token per step through a
        preallocated key/value cache (the same tokens as without it, much faster).

        Example:
            >>> lm = DecoderLM(TransformerConfig(vocab_size=30, d_model=16, num_heads=2, d_ff=32))
            >>> lm.generate(torch.tensor([[1, 2, 3]]), 5).shape
            torch.Size([1, 8])
        """
        check_options(options, GenerateOptions, "generate")
        return generate_lm(self, input_ids, max_new_tokens=max_new_tokens, **options)

    def attention_maps(self, ids: Tensor, padding_mask: Tensor | None = None) -> AttentionMaps:
        """Per-layer causal self-attention weights, in ``AttentionMaps.decoder_self``."""
        return AttentionMaps(
            decoder_self=self.decoder(ids, padding_mask, need_weights=True).weights
        )


# DecoderLM's methods the lean step stands in for, as defined: patched ones keep the modules.
_LEAN_STANDS_IN_FOR = {name: getattr(DecoderLM, name) for name in ("forward", "new_cache", "embed")}


class EncoderClassifier(nn.Module):
    """An encoder with a linear classifier on the mean of its outputs over real tokens.

    Needs ``config.num_classes``. Shapes: ``ids (B, N)``, ``padding_mask (B, N)`` -> logits
    ``(B, C)``. Padded positions never change the result.

    Example:
        >>> config = TransformerConfig(vocab_size=30, d_model=16, num_heads=2, d_ff=32,
        ...                            num_classes=3)
        >>> EncoderClassifier(config)(torch.randint(0, 30, (4, 7))).shape
        torch.Size([4, 3])
    """

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        check_config(config, TransformerConfig)
        if config.num_classes is None:
            raise ValueError("EncoderClassifier needs config.num_classes, got None")
        self.config = config
        self.encoder = Encoder(config)
        self.dropout = nn.Dropout(config.dropout)
        self.head = new_head(config.d_model, config.num_classes, bias=True)

    def embed(self, ids: Tensor, offset: int = 0, **options: Unpack[EmbedOptions]) -> Tensor:
        """``ids (B, N)`` -> the input of the first layer ``(B, N, E)`` (see
        :meth:`Encoder.embed`; keywords ``positions``, ``token_type_ids``)."""
        return self.encoder.embed(ids, offset, **options)

    def _pool(self, hidden: Tensor, padding_mask: Tensor | None) -> Tensor:
        """``hidden (B, N, E)`` -> the vector classified, ``(B, E)``: the mean over real tokens."""
        return masked_mean(hidden, padding_mask)

    def forward(
        self,
        ids: Tensor,
        padding_mask: Tensor | None = None,
        *,
        token_type_ids: Tensor | None = None,
    ) -> Tensor:
        """Class logits ``(B, C)``. ``token_type_ids (B, N)``: segment ids (BERT), when
        ``config.type_vocab_size > 0``."""
        hidden = self.encoder(ids, padding_mask, token_type_ids=token_type_ids).hidden
        return self.head(self.dropout(self._pool(hidden, padding_mask)))

    def attention_maps(self, ids: Tensor, padding_mask: Tensor | None = None) -> AttentionMaps:
        """Per-layer self-attention weights, in ``AttentionMaps.encoder_self``."""
        return AttentionMaps(
            encoder_self=self.encoder(ids, padding_mask, need_weights=True).weights
        )


class ViTClassifier(nn.Module):
    """A Vision Transformer classifier (Dosovitskiy et al., 2021).

    Non-overlapping ``patch_size`` patches are embedded by a strided ``Conv2d`` (the same as
    flattening each patch and applying one linear map), a learned CLS token is prepended,
    learned positions are added, and the CLS output is classified.

    Shapes: ``images (B, in_channels, image_size, image_size)`` float -> logits ``(B, C)``.
    Attention maps have ``N = 1 + num_patches`` (the CLS token first).

    Example:
        >>> vit = ViTClassifier(ViTConfig(image_size=8, patch_size=2, num_classes=10))
        >>> vit(torch.randn(5, 1, 8, 8)).shape
        torch.Size([5, 10])
    """

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        check_config(config, ViTConfig)
        self.config = config
        d = config.d_model
        self.patch_embed = nn.Conv2d(
            config.in_channels, d, kernel_size=config.patch_size, stride=config.patch_size
        )
        self.cls_token = nn.Parameter(torch.empty(1, 1, d))
        self.positional = LearnedPositionalEncoding(d, config.num_patches + 1)
        self.dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(
            EncoderLayer(d, config.num_heads, config.d_ff, **config.layer_options())
            for _ in range(config.num_layers)
        )
        self.norm = final_norm(config)
        self.head = new_head(d, config.num_classes, bias=True)
        # The patch convolution is a linear map of the flattened patch: initialise it as one.
        weight = self.patch_embed.weight
        nn.init.xavier_uniform_(weight.view(weight.shape[0], -1))
        if self.patch_embed.bias is not None:
            nn.init.zeros_(self.patch_embed.bias)
        nn.init.normal_(self.cls_token, std=0.02)

    def _check_images(self, images: Any) -> None:
        c = self.config
        expected = (c.in_channels, c.image_size, c.image_size)
        if not isinstance(images, Tensor):
            raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
        if not images.is_floating_point():
            raise TypeError(f"images must be a floating tensor, got dtype {images.dtype}")
        if images.dim() != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(
                f"images must be (B, C, H, W) = (B, {', '.join(map(str, expected))}), "
                f"got shape {tuple(images.shape)}"
            )

    def _run(self, images: Tensor, need_weights: bool) -> EncoderOutput:
        self._check_images(images)
        b = images.shape[0]
        x = self.patch_embed(images)  # (B, E, H/p, W/p)
        x = x.flatten(2).transpose(1, 2)  # (B, P, E), patches in row-major order
        x = torch.cat([self.cls_token.expand(b, -1, -1), x], dim=1)  # (B, 1 + P, E)
        x = self.dropout(self.positional(x))
        weights = []
        for layer in self.layers:
            x, w = layer(x, need_weights=need_weights)
            if w is not None:
                weights.append(w)
        return EncoderOutput(self.norm(x), tuple(weights))

    def forward(self, images: Tensor) -> Tensor:
        """Class logits ``(B, C)`` from the CLS token's output."""
        return self.head(self._run(images, False).hidden[:, 0])

    def attention_maps(self, images: Tensor) -> AttentionMaps:
        """Per-layer self-attention weights ``(B, H, 1 + P, 1 + P)`` in ``encoder_self``."""
        return AttentionMaps(encoder_self=self._run(images, True).weights)


def num_parameters(model: nn.Module, *, trainable_only: bool = False) -> int:
    """The number of parameters of ``model``, counting tied (shared) weights once.

    Example:
        >>> num_parameters(nn.Linear(3, 2))
        8
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
