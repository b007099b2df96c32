"""How many CPU threads torch should use for decoding.

A decoding step is a chain of small products; with more OpenMP threads than idle cores, the
threads wait on each other at every one of them, and a step was measured 3-4x slower (issue 13).
So the default is the number of physical cores that the load average says are free, and one
thread when the machine is busy.

Example:
    >>> n = default_threads()
    >>> 1 <= n <= max(1, os.cpu_count() or 1)
    True
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

__all__ = ["apply_thread_policy", "default_threads", "physical_cores"]


def physical_cores() -> int:
    """Physical cores this process may run on (hyper-threads counted once).

    Reads ``/proc/cpuinfo`` (distinct ``physical id``/``core id`` pairs) where it exists, else
    the logical CPU count.
    """
    logical = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    logical = logical or os.cpu_count() or 1
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return logical
    cores: set[tuple[str, str]] = set()
    physical = core = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "physical id":
            physical = value.strip()
        elif key == "core id":
            core = value.strip()
            cores.add((physical, core))
    return max(1, min(len(cores) or logical, logical))


def default_threads() -> int:
    """Physical cores minus the 1-minute load average (rounded up), at least 1."""
    cores = physical_cores()
    try:
        load = os.getloadavg()[0]
    except (OSError, AttributeError):
        return cores
    free = cores - int(-(-load // 1))  # ceil: a half-busy core is not free
    return max(1, min(cores, free))


def apply_thread_policy(threads: int | None = None) -> int:
    """Set torch's intra-op threads to ``threads`` (``None``: :func:`default_threads`) and
    return the number set.

    Example:
        >>> before = torch.get_num_threads()
        >>> apply_thread_policy(1)
        1
        >>> _ = apply_thread_policy(before)
    """
    if threads is None:
        threads = default_threads()
    if isinstance(threads, bool) or not isinstance(threads, int):
        raise TypeError(f"threads must be an int or None, got {type(threads).__name__}")
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    torch.set_num_threads(threads)
    return threads
