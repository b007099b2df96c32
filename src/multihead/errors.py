"""Exceptions shared across the package (kept in a leaf module so no layer imports the CLI)."""

from __future__ import annotations

__all__ = ["CommandError"]


class CommandError(Exception):
    """An expected failure of a ``multihead`` command: printed as one line, exit status 2."""
