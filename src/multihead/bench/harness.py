"""Small, dependable measurement helpers.

Time: wall clock around synchronous calls (CUDA is synchronized when present), a few warm-up
runs, then the median of ``repeat`` runs. Peak memory on CPU: PyTorch has no allocator
statistics there, so a case is run in a fresh child process and its peak resident set size
(``ru_maxrss``) is read after subtracting the resident size just before the measured call.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Timing:
    median_s: float
    min_s: float
    repeat: int

    @property
    def median_ms(self) -> float:
        return self.median_s * 1e3


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def time_it(fn: Callable[[], object], *, warmup: int = 2, repeat: int = 5) -> Timing:
    """Median wall time of ``fn()`` over ``repeat`` runs after ``warmup`` runs.

    Example:
        >>> t = time_it(lambda: sum(range(1000)), warmup=1, repeat=3)
        >>> t.repeat
        3
    """
    for _ in range(warmup):
        fn()
    _sync()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        _sync()
        times.append(time.perf_counter() - start)
    return Timing(statistics.median(times), min(times), repeat)


def current_rss_mib() -> float:
    """Resident set size of this process now (Linux), in MiB."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def peak_rss_mib(
    module: str, function: str, kwargs: dict[str, object], *, search_path: str | None = None
) -> float:
    """Run ``module.function(**kwargs)`` in a fresh Python process and return the extra peak
    memory (MiB) it needed beyond what the process held when the function was called.

    The function must do its own set-up and call ``multihead.bench.harness.mark_baseline()``
    right before the measured work.
    """
    code = (
        "import json, sys, importlib\n"
        "from multihead.bench import harness\n"
        f"fn = getattr(importlib.import_module({module!r}), {function!r})\n"
        f"fn(**json.loads({json.dumps(json.dumps(kwargs))}))\n"
        "print(json.dumps({'peak': harness.max_rss_mib(), 'base': harness._BASELINE}))\n"
    )
    env = dict(os.environ)
    paths = (search_path or os.getcwd(), env.get("PYTHONPATH", ""))
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"memory probe failed:\n{proc.stderr[-2000:]}")
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    return max(0.0, data["peak"] - data["base"])


_BASELINE = 0.0


def mark_baseline() -> None:
    """Record the resident size before the measured work (see :func:`peak_rss_mib`).

    ``ru_maxrss`` never goes down, so set-up must not have peaked above what it keeps."""
    global _BASELINE
    _BASELINE = current_rss_mib()


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub-flavoured Markdown table.

    Example:
        >>> print(markdown_table(["a", "b"], [[1, 2]]))
        | a | b |
        |---|---|
        | 1 | 2 |
    """
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
