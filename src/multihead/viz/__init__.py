"""Seeing attention: capture weights, draw them, summarise heads, and prune them.

* :func:`capture_attention` -- record per-layer, per-head weights while a model runs (opt-in,
  selectable by layer, head and query rows; outputs stay bitwise identical).
* :func:`attention_grid` / :func:`save_figure` -- a layers x heads grid of heatmaps (PNG, SVG).
* :func:`write_attention_html` -- one offline HTML page to explore layers, heads and tokens.
* :func:`record_stats` / :func:`stats_markdown` -- entropy, distance, previous-token and other
  per-head scores; :func:`head_importance` -- the metric drop when a head is masked.
* :func:`prune_heads` / :func:`prune_model` -- remove heads for real.

Example:
    >>> import torch
    >>> from multihead import MultiHeadAttention
    >>> mha = MultiHeadAttention(16, 4)
    >>> with capture_attention(mha, heads=[0, 2]) as record:
    ...     _ = mha(torch.randn(1, 5, 16), causal=True)
    >>> record[""][0].shape  # (B, heads kept, Nq, Nk)
    torch.Size([1, 2, 5, 5])
"""

from .capture import (
    AttentionCall,
    AttentionMap,
    AttentionRecord,
    attention_modules,
    capture_attention,
    maps_from_record,
)
from .heatmaps import attention_grid, save_figure
from .html import attention_html, write_attention_html
from .pruning import prune_heads, prune_model
from .stats import (
    HeadStats,
    head_importance,
    head_stats,
    mask_heads,
    record_stats,
    stats_markdown,
)

__all__ = [
    "AttentionCall",
    "AttentionMap",
    "AttentionRecord",
    "HeadStats",
    "attention_grid",
    "attention_html",
    "attention_modules",
    "capture_attention",
    "head_importance",
    "head_stats",
    "maps_from_record",
    "mask_heads",
    "prune_heads",
    "prune_model",
    "record_stats",
    "save_figure",
    "stats_markdown",
    "write_attention_html",
]
