"""Frozen configurations of the Transformer models, validated once, on construction.

:class:`TransformerConfig` shapes every token model (:class:`~multihead.Seq2SeqTransformer`,
:class:`~multihead.DecoderLM`, :class:`~multihead.EncoderClassifier`); :class:`ViTConfig` the
image classifier. Layers and stacks read their options from here, so a new option is one field.
``to_dict``/``from_dict`` give and read plain JSON values, which checkpoints store.

Example:
    >>> config = TransformerConfig(vocab_size=100, d_model=64, num_heads=4)
    >>> config.head_dim, config.layer_options()["rotary"]
    (16, False)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from ._validation import check_bool, check_choice, check_float, check_int, check_probability
from .positional import POSITIONAL_KINDS

__all__ = ["ACTIVATIONS", "FFN_KINDS", "NORMS", "TransformerConfig", "ViTConfig"]

# The choices the layers implement (modules/feedforward.py and modules/layers.py).
ACTIVATIONS = ("gelu", "relu", "gelu_tanh", "silu")
FFN_KINDS = ("mlp", "gated")
NORMS = ("layernorm", "rmsnorm")

_Config = TypeVar("_Config")


def _set(config: Any, name: str, value: Any) -> None:
    # Frozen dataclasses normalise in __post_init__ through object.__setattr__ (JSON gives 0
    # where a float is meant).
    object.__setattr__(config, name, value)


def _check_layer_fields(config: TransformerConfig | ViTConfig) -> None:
    """Check (and normalise) the fields both configs have: what every layer is made of."""
    owner = type(config).__name__
    check_int(config.d_model, f"{owner}.d_model", minimum=1)
    check_int(config.num_heads, f"{owner}.num_heads", minimum=1)
    check_int(config.num_kv_heads, f"{owner}.num_kv_heads", minimum=1, optional=True)
    if config.d_model % config.num_heads != 0:
        raise ValueError(
            f"{owner}.d_model={config.d_model} must be divisible by num_heads={config.num_heads}"
        )
    if config.num_kv_heads is not None and config.num_heads % config.num_kv_heads != 0:
        raise ValueError(
            f"{owner}.num_heads={config.num_heads} must be a multiple of "
            f"num_kv_heads={config.num_kv_heads}"
        )
    check_int(config.d_ff, f"{owner}.d_ff", minimum=1)
    _set(config, "dropout", check_probability(config.dropout, f"{owner}.dropout"))
    _set(config, "attn_dropout", check_probability(config.attn_dropout, f"{owner}.attn_dropout"))
    check_bool(config.norm_first, f"{owner}.norm_first")
    check_choice(config.activation, f"{owner}.activation", ACTIVATIONS)


def _layer_options(config: TransformerConfig | ViTConfig) -> dict[str, Any]:
    """The layer keywords both configs decide (see ``TransformerConfig.layer_options``)."""
    return {
        "dropout": config.dropout,
        "attn_dropout": config.attn_dropout,
        "norm_first": config.norm_first,
        "activation": config.activation,
        "num_kv_heads": config.num_kv_heads,
    }


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
        check_int(self.vocab_size, f"{owner}.vocab_size", minimum=1)
        check_int(self.tgt_vocab_size, f"{owner}.tgt_vocab_size", minimum=1, optional=True)
        _check_layer_fields(self)
        check_int(self.num_encoder_layers, f"{owner}.num_encoder_layers", minimum=0)
        check_int(self.num_decoder_layers, f"{owner}.num_decoder_layers", minimum=0)
        check_int(self.max_len, f"{owner}.max_len", minimum=1)
        check_choice(self.positional, f"{owner}.positional", POSITIONAL_KINDS)
        _set(self, "rope_base", check_float(self.rope_base, f"{owner}.rope_base", above=1.0))
        if self.positional == "rope" and (self.d_model // self.num_heads) % 2:
            raise ValueError(
                f"{owner}.positional='rope' needs an even head size d_model / num_heads, got "
                f"{self.d_model} / {self.num_heads} = {self.d_model // self.num_heads}"
            )
        check_choice(self.ffn, f"{owner}.ffn", FFN_KINDS)
        check_choice(self.norm, f"{owner}.norm", NORMS)
        _set(self, "norm_eps", check_float(self.norm_eps, f"{owner}.norm_eps", above=0.0))
        check_bool(self.bias, f"{owner}.bias")
        if self.final_norm is not None:
            check_bool(self.final_norm, f"{owner}.final_norm")
        check_bool(self.embed_scale, f"{owner}.embed_scale")
        check_bool(self.embedding_norm, f"{owner}.embedding_norm")
        check_int(self.type_vocab_size, f"{owner}.type_vocab_size", minimum=0)
        check_bool(self.tie_embeddings, f"{owner}.tie_embeddings")
        check_int(self.pad_id, f"{owner}.pad_id", minimum=0)
        smallest = min(self.vocab_size, self.target_vocab_size)
        if self.pad_id >= smallest:
            raise ValueError(
                f"{owner}.pad_id={self.pad_id} must be a valid id in every vocabulary "
                f"(vocab_size={self.vocab_size}, tgt_vocab_size={self.tgt_vocab_size})"
            )
        check_int(self.num_classes, f"{owner}.num_classes", minimum=1, optional=True)

    @property
    def target_vocab_size(self) -> int:
        """The target vocabulary size: ``tgt_vocab_size``, or ``vocab_size`` when shared."""
        return self.vocab_size if self.tgt_vocab_size is None else self.tgt_vocab_size

    @property
    def head_dim(self) -> int:
        """Per-head size ``d_model / num_heads`` (the paper's d_k = d_v)."""
        return self.d_model // self.num_heads

    def layer_options(self) -> dict[str, Any]:
        """The keyword arguments of :class:`~multihead.modules.EncoderLayer` and
        :class:`~multihead.modules.DecoderLayer` that this config decides: the one place where
        config fields become layer (and attention) options."""
        return {
            **_layer_options(self),
            "bias": self.bias,
            "norm": self.norm,
            "norm_eps": self.norm_eps,
            "ffn": self.ffn,
            "rotary": self.positional == "rope",
            "rope_base": self.rope_base,
            "alibi": self.positional == "alibi",
        }

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
        check_int(self.image_size, f"{owner}.image_size", minimum=1)
        check_int(self.patch_size, f"{owner}.patch_size", minimum=1)
        if self.image_size % self.patch_size != 0:
            raise ValueError(
                f"{owner}.patch_size={self.patch_size} must divide image_size={self.image_size}"
            )
        check_int(self.in_channels, f"{owner}.in_channels", minimum=1)
        check_int(self.num_classes, f"{owner}.num_classes", minimum=1)
        _check_layer_fields(self)
        check_int(self.num_layers, f"{owner}.num_layers", minimum=0)

    def layer_options(self) -> dict[str, Any]:
        """The keyword arguments of :class:`~multihead.modules.EncoderLayer` this config
        decides (ViT: LayerNorm, biases, absolute positions added to the patches)."""
        return _layer_options(self)

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
