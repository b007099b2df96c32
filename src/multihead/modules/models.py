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

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from numbers import Real
from typing import Any, NamedTuple, TypeVar

import torch
from torch import Tensor, nn

from ..cache import DecoderCache
from ..positional import (
    ADDITIVE_KINDS,
    POSITIONAL_KINDS,
    AdditivePositionalEncoding,
    LearnedPositionalEncoding,
    build_positional,
    check_positions,
)
from .feedforward import ACTIVATIONS, FFN_KINDS
from .layers import NORMS, DecoderLayer, EncoderLayer, make_norm

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

# ------------------------------------------------------------------------------ configs

_Config = TypeVar("_Config")


def _check_int(owner: str, name: str, value: Any, minimum: int, *, optional: bool = False) -> None:
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        kind = "an int or None" if optional else "an int"
        raise TypeError(f"{owner}.{name} must be {kind}, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{owner}.{name} must be >= {minimum}, got {value}")


def _check_probability(config: Any, name: str) -> None:
    value = getattr(config, name)
    owner = type(config).__name__
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{owner}.{name} must be a float in [0, 1), got {type(value).__name__}")
    if not 0.0 <= float(value) < 1.0:
        raise ValueError(f"{owner}.{name} must be in [0, 1), got {value}")
    # JSON writes 0.0 as 0.0 but people write 0: store a float either way.
    object.__setattr__(config, name, float(value))


def _check_positive_float(config: Any, name: str, *, minimum_exclusive: float = 0.0) -> None:
    value = getattr(config, name)
    owner = type(config).__name__
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{owner}.{name} must be a float, got {type(value).__name__} {value!r}")
    if not float(value) > minimum_exclusive:
        raise ValueError(f"{owner}.{name} must be > {minimum_exclusive}, got {value}")
    object.__setattr__(config, name, float(value))  # JSON may give an int


def _check_bool(owner: str, name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{owner}.{name} must be a bool, got {type(value).__name__} {value!r}")


def _check_choice(owner: str, name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{owner}.{name} must be one of {choices}, got {value!r}")


def _check_heads(owner: str, d_model: int, num_heads: int, num_kv_heads: int | None) -> None:
    if d_model % num_heads != 0:
        raise ValueError(f"{owner}.d_model={d_model} must be divisible by num_heads={num_heads}")
    if num_kv_heads is not None and num_heads % num_kv_heads != 0:
        raise ValueError(
            f"{owner}.num_heads={num_heads} must be a multiple of num_kv_heads={num_kv_heads}"
        )


def _config_to_dict(config: Any) -> dict[str, Any]:
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}


def _config_from_dict(cls: type[_Config], data: Mapping[str, Any]) -> _Config:
    if not isinstance(data, Mapping):
        raise TypeError(f"d must be a mapping of field names, got {type(data).__name__}")
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    names = {f.name for f in fields}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(
            f"unknown {cls.__name__} fields {unknown}; expected fields are {sorted(names)}"
        )
    required = [
        f.name
        for f in fields
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    missing = [name for name in required if name not in data]
    if missing:
        raise ValueError(f"d is missing the required {cls.__name__} fields {missing}")
    return cls(**data)


@dataclass(frozen=True, kw_only=True)
class TransformerConfig:
    """Everything that shapes a token Transformer; shared by every token model here.

    Checked on construction (``TypeError``/``ValueError`` naming the field). ``to_dict`` gives
    plain JSON values for checkpoints; ``from_dict`` reads them back.

    Example:
        >>> config = TransformerConfig(vocab_size=100, d_model=64, num_heads=4)
        >>> TransformerConfig.from_dict(config.to_dict()) == config
        True
    """

    vocab_size: int  # source vocabulary (the only one for DecoderLM / EncoderClassifier)
    tgt_vocab_size: int | None = None  # None: the target shares the source vocabulary
    d_model: int = 128  # small enough to train on a CPU in minutes
    num_heads: int = 4  # head size d_model / num_heads = 32
    num_kv_heads: int | None = None  # None: num_heads (plain multi-head); 1: multi-query
    num_encoder_layers: int = 2
    num_decoder_layers: int = 2  # also the depth of DecoderLM
    d_ff: int = 512  # 4 * d_model, the paper's ratio (2048 / 512)
    dropout: float = 0.1  # the paper's P_drop for the base model
    attn_dropout: float = 0.0  # dropout on attention probabilities; off, as in most recent models
    max_len: int = 512  # positions: a hard limit for "learned", a table size for "sinusoidal"
    # "sinusoidal" | "learned" (added to the embeddings) | "rope" | "alibi" (inside
    # self-attention; relative, so no length limit) | "none"
    positional: str = "sinusoidal"
    rope_base: float = 10000.0  # RoPE's wavelength base (Su et al., 2021; LLaMA-1/2's value)
    norm_first: bool = True  # pre-norm: stable without warm-up; False gives the paper's post-norm
    # "gelu" | "relu" (the paper's) | "gelu_tanh" (GPT-2's approximate GELU) | "silu" (LLaMA's)
    activation: str = "gelu"
    ffn: str = "mlp"  # "mlp" | "gated": down(act(gate(x)) * up(x)), LLaMA's with "silu"
    norm: str = "layernorm"  # "layernorm" | "rmsnorm" (LLaMA)
    norm_eps: float = 1e-5  # torch's and GPT-2's LayerNorm epsilon; BERT uses 1e-12
    bias: bool = True  # biases in attention projections and the feed-forward (LLaMA: none)
    # None: a final norm after the last layer iff pre-norm (whose residual stream is never
    # normalized otherwise); True/False force it.
    final_norm: bool | None = None
    embed_scale: bool = True  # multiply token embeddings by sqrt(d_model) (Sec. 3.4); GPT-2/BERT
    # do not
    embedding_norm: bool = False  # a norm right after embeddings + positions (BERT)
    type_vocab_size: int = 0  # > 0: BERT's token-type (segment) embeddings; type 0 by default
    tie_embeddings: bool = True  # one matrix for input and output embeddings (Sec. 3.4)
    pad_id: int = 0  # the id decoding writes after EOS
    num_classes: int | None = None  # EncoderClassifier only

    def __post_init__(self) -> None:
        owner = type(self).__name__
        _check_int(owner, "vocab_size", self.vocab_size, 1)
        _check_int(owner, "tgt_vocab_size", self.tgt_vocab_size, 1, optional=True)
        _check_int(owner, "d_model", self.d_model, 1)
        _check_int(owner, "num_heads", self.num_heads, 1)
        _check_int(owner, "num_kv_heads", self.num_kv_heads, 1, optional=True)
        _check_heads(owner, self.d_model, self.num_heads, self.num_kv_heads)
        _check_int(owner, "num_encoder_layers", self.num_encoder_layers, 0)
        _check_int(owner, "num_decoder_layers", self.num_decoder_layers, 0)
        _check_int(owner, "d_ff", self.d_ff, 1)
        _check_probability(self, "dropout")
        _check_probability(self, "attn_dropout")
        _check_int(owner, "max_len", self.max_len, 1)
        _check_choice(owner, "positional", self.positional, POSITIONAL_KINDS)
        _check_positive_float(self, "rope_base", minimum_exclusive=1.0)
        if self.positional == "rope" and (self.d_model // self.num_heads) % 2:
            raise ValueError(
                f"{owner}.positional='rope' needs an even head size d_model / num_heads, got "
                f"{self.d_model} / {self.num_heads} = {self.d_model // self.num_heads}"
            )
        _check_bool(owner, "norm_first", self.norm_first)
        _check_choice(owner, "activation", self.activation, ACTIVATIONS)
        _check_choice(owner, "ffn", self.ffn, FFN_KINDS)
        _check_choice(owner, "norm", self.norm, NORMS)
        _check_positive_float(self, "norm_eps")
        _check_bool(owner, "bias", self.bias)
        if self.final_norm is not None:
            _check_bool(owner, "final_norm", self.final_norm)
        _check_bool(owner, "embed_scale", self.embed_scale)
        _check_bool(owner, "embedding_norm", self.embedding_norm)
        _check_int(owner, "type_vocab_size", self.type_vocab_size, 0)
        _check_bool(owner, "tie_embeddings", self.tie_embeddings)
        _check_int(owner, "pad_id", self.pad_id, 0)
        smallest = min(self.vocab_size, self.target_vocab_size)
        if self.pad_id >= smallest:
            raise ValueError(
                f"{owner}.pad_id={self.pad_id} must be a valid id in every vocabulary "
                f"(vocab_size={self.vocab_size}, tgt_vocab_size={self.tgt_vocab_size})"
            )
        _check_int(owner, "num_classes", self.num_classes, 1, optional=True)

    @property
    def target_vocab_size(self) -> int:
        """The target vocabulary size: ``tgt_vocab_size``, or ``vocab_size`` when shared."""
        return self.vocab_size if self.tgt_vocab_size is None else self.tgt_vocab_size

    @property
    def shared_vocab(self) -> bool:
        """Whether source and target use one vocabulary (``tgt_vocab_size`` is None)."""
        return self.tgt_vocab_size is None

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-serialisable dict."""
        return _config_to_dict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TransformerConfig:
        """Rebuild a config from :meth:`to_dict`'s output; unknown keys are a ``ValueError``."""
        return _config_from_dict(cls, d)


@dataclass(frozen=True, kw_only=True)
class ViTConfig:
    """A small Vision Transformer (Dosovitskiy et al., 2021) for square images.

    Example:
        >>> ViTConfig(image_size=8, patch_size=2).num_patches
        16
    """

    image_size: int = 8  # side of the square input image (the 8x8 scikit-learn digits)
    patch_size: int = 2  # side of a square patch; must divide image_size
    in_channels: int = 1  # grayscale
    num_classes: int = 10
    d_model: int = 64
    num_heads: int = 4
    num_kv_heads: int | None = None  # None: num_heads
    num_layers: int = 2
    d_ff: int = 128  # 2 * d_model: the task is tiny
    dropout: float = 0.1
    attn_dropout: float = 0.0
    norm_first: bool = True  # ViT is pre-norm
    activation: str = "gelu"  # ViT's

    def __post_init__(self) -> None:
        owner = type(self).__name__
        _check_int(owner, "image_size", self.image_size, 1)
        _check_int(owner, "patch_size", self.patch_size, 1)
        if self.image_size % self.patch_size != 0:
            raise ValueError(
                f"{owner}.patch_size={self.patch_size} must divide image_size={self.image_size}"
            )
        _check_int(owner, "in_channels", self.in_channels, 1)
        _check_int(owner, "num_classes", self.num_classes, 1)
        _check_int(owner, "d_model", self.d_model, 1)
        _check_int(owner, "num_heads", self.num_heads, 1)
        _check_int(owner, "num_kv_heads", self.num_kv_heads, 1, optional=True)
        _check_heads(owner, self.d_model, self.num_heads, self.num_kv_heads)
        _check_int(owner, "num_layers", self.num_layers, 0)
        _check_int(owner, "d_ff", self.d_ff, 1)
        _check_probability(self, "dropout")
        _check_probability(self, "attn_dropout")
        _check_bool(owner, "norm_first", self.norm_first)
        _check_choice(owner, "activation", self.activation, ACTIVATIONS)

    @property
    def num_patches(self) -> int:
        """Patches per image, ``(image_size / patch_size) ** 2``."""
        return (self.image_size // self.patch_size) ** 2

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-serialisable dict."""
        return _config_to_dict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ViTConfig:
        """Rebuild a config from :meth:`to_dict`'s output; unknown keys are a ``ValueError``."""
        return _config_from_dict(cls, d)


# ------------------------------------------------------------------------------ outputs


@dataclass(frozen=True, kw_only=True)
class AttentionMaps:
    """Per-layer attention weights of one forward pass, each ``(B, H, Nq, Nk)``.

    Rows of real queries sum to 1; padded keys get weight 0. Models fill the groups they have:
    an encoder-decoder all three, a decoder-only LM ``decoder_self``, encoders ``encoder_self``.
    """

    encoder_self: tuple[Tensor, ...] = ()  # (B, H, Ns, Ns) per encoder layer
    decoder_self: tuple[Tensor, ...] = ()  # (B, H, Nt, Nt) per decoder layer, causal
    decoder_cross: tuple[Tensor, ...] = ()  # (B, H, Nt, Ns) per decoder layer


class EncoderOutput(NamedTuple):
    """What :class:`Encoder` returns: ``hidden (B, N, E)`` and, when asked, per-layer weights."""

    hidden: Tensor
    weights: tuple[Tensor, ...]


class DecoderOutput(NamedTuple):
    """What :class:`Decoder` returns: ``hidden (B, Nt, E)`` and, when asked, per-layer weights."""

    hidden: Tensor
    self_weights: tuple[Tensor, ...]
    cross_weights: tuple[Tensor, ...]


# ------------------------------------------------------------------------------ checks


def _check_ids(ids: Any, name: str, vocab_size: int) -> None:
    if not isinstance(ids, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of token ids, got {type(ids).__name__}")
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor of token ids, got dtype {ids.dtype}")
    if ids.dim() != 2:
        raise ValueError(f"{name} must be 2-D (B, N), got shape {tuple(ids.shape)}")
    if ids.numel() and not torch.compiler.is_compiling():  # range check needs host values
        low, high = (int(v) for v in torch.aminmax(ids))
        if low < 0 or high >= vocab_size:
            raise ValueError(
                f"{name} must hold ids in [0, {vocab_size}), got min {low} and max {high}"
            )


def _check_padding_mask(mask: Any, name: str, shape: tuple[int, ...]) -> None:
    if mask is None:
        return
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
        what = f"dtype {mask.dtype}" if isinstance(mask, Tensor) else type(mask).__name__
        raise TypeError(f"{name} must be a bool tensor (True = real token) or None, got {what}")
    if tuple(mask.shape) != shape:
        raise ValueError(f"{name} must be (B, N) = {shape}, got shape {tuple(mask.shape)}")


def _check_config(config: Any, cls: type) -> None:
    if not isinstance(config, cls):
        raise TypeError(f"config must be a {cls.__name__}, got {type(config).__name__}")


def _new_embedding(num_embeddings: int, d_model: int) -> nn.Embedding:
    embedding = nn.Embedding(num_embeddings, d_model)
    # std 0.02 as GPT-2/BERT; the sqrt(d_model) scale applied on lookup brings tokens to about
    # the amplitude of the positional encodings.
    nn.init.normal_(embedding.weight, std=0.02)
    return embedding


def _new_head(d_model: int, out_features: int, *, bias: bool) -> nn.Linear:
    head = nn.Linear(d_model, out_features, bias=bias)
    nn.init.normal_(head.weight, std=0.02)
    if head.bias is not None:
        nn.init.zeros_(head.bias)
    return head


def _final_norm(config: TransformerConfig | ViTConfig) -> nn.Module:
    # A pre-norm stack's residual stream is never normalized inside the layers.
    if isinstance(config, TransformerConfig):
        wanted = config.norm_first if config.final_norm is None else config.final_norm
        return make_norm(config.norm, config.d_model, config.norm_eps) if wanted else nn.Identity()
    return nn.LayerNorm(config.d_model) if config.norm_first else nn.Identity()


def _layer_options(config: TransformerConfig) -> dict[str, Any]:
    """The keyword arguments of EncoderLayer/DecoderLayer that a config decides."""
    return {
        "dropout": config.dropout,
        "attn_dropout": config.attn_dropout,
        "norm_first": config.norm_first,
        "activation": config.activation,
        "num_kv_heads": config.num_kv_heads,
        "bias": config.bias,
        "norm": config.norm,
        "norm_eps": config.norm_eps,
        "ffn": config.ffn,
        "rotary": config.positional == "rope",
        "rope_base": config.rope_base,
        "alibi": config.positional == "alibi",
    }


def _check_cache(cache: Any, num_layers: int, *, cross: bool) -> None:
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


class _Embedder(nn.Module):
    """Token embedding, positions, token types, optional norm and dropout: the stem shared by
    :class:`Encoder` and :class:`Decoder`. Attribute names are ``state_dict`` keys."""

    positional: AdditivePositionalEncoding | None
    token_type: nn.Embedding | None
    embedding_norm: nn.Module | None

    def _init_stem(self, config: TransformerConfig, embedding: nn.Embedding) -> None:
        self.embedding = embedding
        # Sec. 3.4: "we multiply those weights by sqrt(d_model)" (unless the config says not).
        self.embed_scale = math.sqrt(config.d_model) if config.embed_scale else 1.0
        self.positional = (
            build_positional(config.positional, config.d_model, config.max_len)
            if config.positional in ADDITIVE_KINDS
            else None
        )
        self.token_type = (
            _new_embedding(config.type_vocab_size, config.d_model)
            if config.type_vocab_size > 0
            else None
        )
        self.embedding_norm = (
            make_norm(config.norm, config.d_model, config.norm_eps)
            if config.embedding_norm
            else None
        )
        self.dropout = nn.Dropout(config.dropout)

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
                _check_ids(token_type_ids, "token_type_ids", self.token_type.num_embeddings)
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
        config: TransformerConfig = self.config  # type: ignore[assignment]
        b, n = ids.shape
        offset = 0
        if cache is not None:
            _check_cache(cache, len(self.layers), cross=cross)  # type: ignore[arg-type]
            cache.check_room(n)
            offset = cache.length
        _check_padding_mask(padding_mask, mask_name, (b, offset + n))
        if positions is not None:
            if config.positional == "alibi":
                raise ValueError(
                    "positions is not supported with positional='alibi' (ALiBi reads distances "
                    "from the key order)"
                )
            positions = check_positions(positions, b, n)
        return offset, positions if config.positional == "rope" else None


def _masked_mean(hidden: Tensor, padding_mask: Tensor | None) -> Tensor:
    """Mean of ``hidden (B, N, E)`` over real positions -> ``(B, E)``; zeros for no real one."""
    if padding_mask is None:
        return hidden.mean(dim=1)
    real = padding_mask.unsqueeze(-1)  # (B, N, 1)
    # masked_fill rather than a product, so that whatever sits at padded positions cannot leak.
    total = hidden.masked_fill(~real, 0.0).sum(dim=1)  # (B, E)
    count = real.sum(dim=1).clamp(min=1).to(hidden.dtype)  # (B, 1)
    return total / count


# ------------------------------------------------------------------------------ stacks


class Encoder(_Embedder):
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
        super().__init__()
        _check_config(config, TransformerConfig)
        self.config = config
        self.causal = causal
        if embedding is None:
            embedding = _new_embedding(config.vocab_size, config.d_model)
        elif not isinstance(embedding, nn.Embedding) or embedding.embedding_dim != config.d_model:
            raise ValueError(f"embedding must be an nn.Embedding of size d_model={config.d_model}")
        self._init_stem(config, embedding)
        depth = config.num_encoder_layers if num_layers is None else num_layers
        _check_int("Encoder", "num_layers", depth, 0)
        options = _layer_options(config)
        self.layers = nn.ModuleList(
            EncoderLayer(config.d_model, config.num_heads, config.d_ff, **options)
            for _ in range(depth)
        )
        self.norm = _final_norm(config)

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
        so far, ``(B, cache.length + N)``.
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
        token_type_ids: Tensor | None = None,
    ) -> EncoderOutput:
        _check_ids(ids, "ids", self.embedding.num_embeddings)
        return self.run(ids, padding_mask, need_weights, token_type_ids=token_type_ids)


class Decoder(_Embedder):
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
        super().__init__()
        _check_config(config, TransformerConfig)
        self.config = config
        if embedding is None:
            embedding = _new_embedding(config.target_vocab_size, config.d_model)
        elif not isinstance(embedding, nn.Embedding) or embedding.embedding_dim != config.d_model:
            raise ValueError(f"embedding must be an nn.Embedding of size d_model={config.d_model}")
        self._init_stem(config, embedding)
        options = _layer_options(config)
        self.layers = nn.ModuleList(
            DecoderLayer(config.d_model, config.num_heads, config.d_ff, **options)
            for _ in range(config.num_decoder_layers)
        )
        self.norm = _final_norm(config)

    def run(
        self,
        tgt: Tensor,
        memory: Tensor,
        tgt_padding_mask: Tensor | None,
        memory_padding_mask: Tensor | None,
        need_weights: bool,
        *,
        cache: DecoderCache | None = None,
        positions: Tensor | None = None,
    ) -> DecoderOutput:
        """:meth:`forward` without the id and memory checks, for callers that have checked.

        With ``cache`` ``tgt`` holds the new tokens only and ``tgt_padding_mask`` covers every
        target token so far; the memory is projected for cross-attention on the first call and
        reused afterwards.
        """
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

    def forward(
        self,
        tgt: Tensor,
        memory: Tensor,
        *,
        tgt_padding_mask: Tensor | None = None,
        memory_padding_mask: Tensor | None = None,
        need_weights: bool = False,
    ) -> DecoderOutput:
        _check_ids(tgt, "tgt", self.embedding.num_embeddings)
        _check_memory(memory, memory_padding_mask, tgt.shape[0], self.config.d_model)
        return self.run(tgt, memory, tgt_padding_mask, memory_padding_mask, need_weights)


def _check_memory(memory: Any, memory_padding_mask: Any, batch: int, d_model: int) -> None:
    if not isinstance(memory, Tensor):
        raise TypeError(f"memory must be a torch.Tensor, got {type(memory).__name__}")
    if memory.dim() != 3 or memory.shape[0] != batch or memory.shape[2] != d_model:
        raise ValueError(
            f"memory must be (B={batch}, Ns, E={d_model}) (the output of encode), "
            f"got shape {tuple(memory.shape)}"
        )
    _check_padding_mask(memory_padding_mask, "memory_padding_mask", tuple(memory.shape[:2]))


# ------------------------------------------------------------------------------ models


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
        _check_config(config, TransformerConfig)
        self.config = config
        tgt_embedding = _new_embedding(config.target_vocab_size, config.d_model)
        if config.tie_embeddings and config.shared_vocab:
            src_embedding = tgt_embedding
        else:
            src_embedding = _new_embedding(config.vocab_size, config.d_model)
        self.encoder = Encoder(config, embedding=src_embedding)
        self.decoder = Decoder(config, embedding=tgt_embedding)
        self.lm_head = _new_head(config.d_model, config.target_vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = tgt_embedding.weight

    def _encode(
        self, src: Tensor, src_padding_mask: Tensor | None, need_weights: bool
    ) -> EncoderOutput:
        _check_ids(src, "src", self.config.vocab_size)
        _check_padding_mask(src_padding_mask, "src_padding_mask", tuple(src.shape))
        return self.encoder.run(src, src_padding_mask, need_weights)

    def _decode(
        self,
        tgt: Tensor,
        memory: Tensor,
        memory_padding_mask: Tensor | None,
        tgt_padding_mask: Tensor | None,
        need_weights: bool,
        cache: DecoderCache | None = None,
        positions: Tensor | None = None,
    ) -> DecoderOutput:
        _check_ids(tgt, "tgt", self.config.target_vocab_size)
        _check_memory(memory, memory_padding_mask, tgt.shape[0], self.config.d_model)
        return self.decoder.run(
            tgt,
            memory,
            tgt_padding_mask,
            memory_padding_mask,
            need_weights,
            cache=cache,
            positions=positions,
        )

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
        hidden = self._decode(
            tgt, memory, memory_padding_mask, tgt_padding_mask, False, cache, positions
        ).hidden
        return self.lm_head(hidden)

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
        decoded = self._decode(tgt, encoded.hidden, src_padding_mask, tgt_padding_mask, True)
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
        _check_config(config, TransformerConfig)
        if config.tgt_vocab_size not in (None, config.vocab_size):
            raise ValueError(
                "DecoderLM has one vocabulary (vocab_size); got a different "
                f"tgt_vocab_size={config.tgt_vocab_size} (leave it None)"
            )
        self.config = config
        self.decoder = Encoder(config, num_layers=config.num_decoder_layers, causal=True)
        self.lm_head = _new_head(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.decoder.embedding.weight

    def _run(
        self,
        ids: Tensor,
        padding_mask: Tensor | None,
        need_weights: bool,
        cache: DecoderCache | None = None,
        positions: Tensor | None = None,
    ) -> EncoderOutput:
        _check_ids(ids, "ids", self.config.vocab_size)
        return self.decoder.run(ids, padding_mask, need_weights, cache=cache, positions=positions)

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
        return self.lm_head(self._run(ids, padding_mask, False, cache, positions).hidden)

    def generate(
        self,
        input_ids: Tensor,
        max_new_tokens: int,
        *,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        eos_id: int | None = None,
        generator: torch.Generator | None = None,
        use_cache: bool = True,
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
        from ..decoding import generate_lm  # decoding builds on this module

        return generate_lm(
            self,
            input_ids,
            max_new_tokens=max_new_tokens,
            do_sample=do_sample,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            eos_id=eos_id,
            generator=generator,
            use_cache=use_cache,
        )

    def attention_maps(self, ids: Tensor, padding_mask: Tensor | None = None) -> AttentionMaps:
        """Per-layer causal self-attention weights, in ``AttentionMaps.decoder_self``."""
        return AttentionMaps(decoder_self=self._run(ids, padding_mask, True).weights)


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
        _check_config(config, TransformerConfig)
        if config.num_classes is None:
            raise ValueError("EncoderClassifier needs config.num_classes, got None")
        self.config = config
        self.encoder = Encoder(config)
        self.dropout = nn.Dropout(config.dropout)
        self.head = _new_head(config.d_model, config.num_classes, bias=True)

    def _run(
        self,
        ids: Tensor,
        padding_mask: Tensor | None,
        need_weights: bool,
        token_type_ids: Tensor | None = None,
    ) -> EncoderOutput:
        _check_ids(ids, "ids", self.config.vocab_size)
        return self.encoder.run(ids, padding_mask, need_weights, token_type_ids=token_type_ids)

    def embed(
        self,
        ids: Tensor,
        offset: int = 0,
        *,
        positions: Tensor | None = None,
        token_type_ids: Tensor | None = None,
    ) -> Tensor:
        """``ids (B, N)`` -> the input of the first layer ``(B, N, E)`` (see
        :meth:`Encoder.embed`)."""
        return self.encoder.embed(ids, offset, positions=positions, token_type_ids=token_type_ids)

    def forward(
        self,
        ids: Tensor,
        padding_mask: Tensor | None = None,
        *,
        token_type_ids: Tensor | None = None,
    ) -> Tensor:
        """Class logits ``(B, C)``. ``token_type_ids (B, N)``: segment ids (BERT), when
        ``config.type_vocab_size > 0``."""
        hidden = self._run(ids, padding_mask, False, token_type_ids).hidden
        return self.head(self.dropout(_masked_mean(hidden, padding_mask)))

    def attention_maps(self, ids: Tensor, padding_mask: Tensor | None = None) -> AttentionMaps:
        """Per-layer self-attention weights, in ``AttentionMaps.encoder_self``."""
        return AttentionMaps(encoder_self=self._run(ids, padding_mask, True).weights)


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
        _check_config(config, ViTConfig)
        self.config = config
        d = config.d_model
        self.patch_embed = nn.Conv2d(
            config.in_channels, d, kernel_size=config.patch_size, stride=config.patch_size
        )
        self.cls_token = nn.Parameter(torch.empty(1, 1, d))
        self.positional = LearnedPositionalEncoding(d, config.num_patches + 1)
        self.dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(
            EncoderLayer(
                d,
                config.num_heads,
                config.d_ff,
                dropout=config.dropout,
                attn_dropout=config.attn_dropout,
                norm_first=config.norm_first,
                activation=config.activation,
                num_kv_heads=config.num_kv_heads,
            )
            for _ in range(config.num_layers)
        )
        self.norm = _final_norm(config)
        self.head = _new_head(d, config.num_classes, bias=True)
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
