"""Exceptions shared across the package (kept in a leaf module so no layer imports the CLI)."""

from __future__ import annotations

__all__ = ["CommandError"]


class CommandError(Exception):
    """An expected failure of a ``multihead`` command: printed as one line.

    ``status`` is the exit status: 2 (the default) when the arguments or the input were refused,
    1 when a valid command could not be carried out.
    """

    def __init__(self, message: str, *, status: int = 2) -> None:
        super().__init__(message)
        self.status = status
