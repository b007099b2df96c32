"""What a :mod:`multihead.bench.suite` sweep measures: :class:`BenchConfig` and its choices."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch

from .._validation import check_int
from ..functional import backend_names
from . import harness

__all__ = ["DEFAULT_LENGTHS", "DTYPES", "MODES", "PEERS", "BenchConfig", "with_overrides"]

PEERS = ("torch-sdpa", "naive")
MODES = ("fwd", "fwdbwd")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEFAULT_LENGTHS = tuple(2**p for p in range(8, 17))  # 256 ... 65,536


@dataclass(frozen=True, kw_only=True)
class BenchConfig:
    """What ``multihead bench`` sweeps; shared by the Python API and the command line.

    Example:
        >>> BenchConfig(lengths=(256, 512), backends=("sdpa",), modes=("fwd",)).lengths
        (256, 512)
    """

    lengths: tuple[int, ...] = DEFAULT_LENGTHS  # sequence lengths N (Nq = Nk), ascending
    backends: tuple[str, ...] | None = None  # None: every registered backend
    peers: tuple[str, ...] = PEERS  # measured beside ours, in the same process
    modes: tuple[str, ...] = MODES  # "fwd" (no autograd) and/or "fwdbwd"
    causal: tuple[bool, ...] = (False, True)
    window: int = 256  # the "local" backend's window; every other backend attends to all keys
    batch: int = 1  # long-sequence shapes: one sequence, 8 heads of 64, as in the issue
    heads: int = 8
    head_dim: int = 64
    dtype: str = "float32"  # "float32" | "bfloat16" | "float16"
    memory: bool = False  # peak RSS per case in a fresh process: accurate but ~2 s per case
    max_memory_gb: float | None = None  # None: 60% of the memory available at start
    case_budget_s: float = 5.0  # per case; longer predicted calls are skipped with a note
    repeat: int = 5  # at most this many timed runs per case, fewer if the budget runs out
    threads: int | None = None  # torch intra-op threads while timing; None: torch's default
    seed: int = 0

    def __post_init__(self) -> None:
        owner = type(self).__name__
        lengths = tuple(self.lengths)
        if not lengths:
            raise ValueError(f"{owner}.lengths must name at least one length, got ()")
        for n in lengths:
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise ValueError(f"{owner}.lengths must be positive ints, got {n!r}")
        object.__setattr__(self, "lengths", tuple(sorted(set(lengths))))
        if self.backends is not None:
            object.__setattr__(self, "backends", tuple(self.backends))
        for name, allowed in (("peers", PEERS), ("modes", MODES)):
            values = tuple(getattr(self, name))
            unknown = [v for v in values if v not in allowed]
            if unknown:
                raise ValueError(f"{owner}.{name} must be among {allowed}, got {unknown}")
            object.__setattr__(self, name, values)
        if not self.modes:
            raise ValueError(f"{owner}.modes must name at least one of {MODES}, got ()")
        causal = tuple(self.causal)
        if not causal or not all(isinstance(c, bool) for c in causal):
            raise ValueError(f"{owner}.causal must be a non-empty tuple of bools, got {causal!r}")
        object.__setattr__(self, "causal", causal)
        for name in ("window", "batch", "heads", "head_dim", "repeat"):
            check_int(getattr(self, name), f"{owner}.{name}")
        if self.threads is not None:
            check_int(self.threads, f"{owner}.threads")
        if self.dtype not in DTYPES:
            raise ValueError(f"{owner}.dtype must be one of {tuple(DTYPES)}, got {self.dtype!r}")
        if not isinstance(self.memory, bool):
            raise TypeError(f"{owner}.memory must be a bool, got {type(self.memory).__name__}")
        if self.max_memory_gb is not None and not self.max_memory_gb > 0:
            raise ValueError(f"{owner}.max_memory_gb must be > 0, got {self.max_memory_gb!r}")
        if not self.case_budget_s > 0:
            raise ValueError(f"{owner}.case_budget_s must be > 0, got {self.case_budget_s!r}")

    @classmethod
    def quick(cls, **overrides: Any) -> BenchConfig:
        """A tiny sweep (seconds): two short lengths, small heads, every implementation, one
        thread (tiny matrices gain nothing from more and suffer most on a busy machine)."""
        settings: dict[str, Any] = dict(
            lengths=(64, 128),
            heads=2,
            head_dim=16,
            window=16,
            repeat=2,
            case_budget_s=0.5,
            threads=1,
        )
        settings.update(overrides)
        return cls(**settings)

    def resolved_backends(self) -> tuple[str, ...]:
        """The backends this sweep times; unknown names are a ``ValueError`` listing the
        registered ones."""
        registered = backend_names()
        if self.backends is None:
            return tuple(registered)
        unknown = [b for b in self.backends if b not in registered]
        if unknown:
            raise ValueError(
                f"backends must be among the registered {registered}, got unknown {unknown}"
            )
        return self.backends

    def memory_budget_bytes(self) -> float:
        if self.max_memory_gb is not None:
            return self.max_memory_gb * 2**30
        return 0.6 * harness.available_memory_bytes()


def with_overrides(config: BenchConfig, **overrides: Any) -> BenchConfig:
    """``config`` with every override that is not ``None`` applied.

    Example:
        >>> with_overrides(BenchConfig.quick(), batch=2, heads=None).batch
        2
    """
    return replace(config, **{k: v for k, v in overrides.items() if v is not None})
