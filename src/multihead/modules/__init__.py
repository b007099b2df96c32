"""Parameterized layers built on :mod:`multihead.functional`."""

from .attention import MultiHeadAttention
from .feedforward import FeedForward
from .layers import DecoderLayer, EncoderLayer
from .models import (
    AttentionMaps,
    DecoderLM,
    EncoderClassifier,
    Seq2SeqTransformer,
    TransformerConfig,
    ViTClassifier,
    ViTConfig,
    num_parameters,
)
from .observers import add_attention_observer

__all__ = [
    "AttentionMaps",
    "DecoderLM",
    "DecoderLayer",
    "EncoderClassifier",
    "EncoderLayer",
    "FeedForward",
    "MultiHeadAttention",
    "Seq2SeqTransformer",
    "TransformerConfig",
    "ViTClassifier",
    "ViTConfig",
    "add_attention_observer",
    "num_parameters",
]
