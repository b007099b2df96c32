"""Parameterized layers built on :mod:`multihead.functional`."""

from .attention import MultiHeadAttention

__all__ = ["MultiHeadAttention"]
