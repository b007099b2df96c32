"""What several commands share: thread settings, output folders, option checks."""

from __future__ import annotations

import torch

from multihead.errors import CommandError

__all__ = ["set_threads"]


def set_threads(threads: int | None) -> None:
    """Apply ``--threads``: ``None`` leaves torch's default, else ``torch.set_num_threads``."""
    if threads is None:
        return
    if threads < 1:
        raise CommandError(f"--threads must be >= 1, got {threads}")
    torch.set_num_threads(threads)
