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


def auto_threads() -> int:
    """Threads for torch that fit the cores other work leaves free (at least 1).

    torch's default of one thread per core makes its threads wait on each other when the
    machine is busy (the demo took 43 s quiet and 505 s under load that way); the one-minute
    load average tells how many cores other processes already keep busy.
    """
    import os

    cores = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except (OSError, AttributeError):  # not available on every platform
        return cores
    return max(1, min(cores, int(cores - load + 0.5)))
