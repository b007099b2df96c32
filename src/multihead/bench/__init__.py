"""Timing and memory harness shared by ``multihead bench`` and ``benchmarks/``."""

from .harness import Timing, markdown_table, peak_rss_mib, time_it

__all__ = ["Timing", "markdown_table", "peak_rss_mib", "time_it"]
