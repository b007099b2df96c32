"""multihead: multi-head attention and the Transformer built on it.

Example:
    >>> import torch
    >>> from multihead import MultiHeadAttention
    >>> mha = MultiHeadAttention(embed_dim=32, num_heads=4)
    >>> out, _ = mha(torch.randn(2, 5, 32))
    >>> out.shape
    torch.Size([2, 5, 32])
"""

from . import masks
from .functional import AttentionResult, attention
from .modules import (
    DecoderLM,
    EncoderClassifier,
    MultiHeadAttention,
    Seq2SeqTransformer,
    TransformerConfig,
    ViTClassifier,
    ViTConfig,
)

__version__ = "0.1.0"

__all__ = [
    "AttentionResult",
    "DecoderLM",
    "EncoderClassifier",
    "MultiHeadAttention",
    "Seq2SeqTransformer",
    "TransformerConfig",
    "ViTClassifier",
    "ViTConfig",
    "__version__",
    "attention",
    "masks",
]
