"""Communication for context parallelism: ring exchanges, collectives, timeouts, failures.

Every wait has a deadline (the call's ``timeout``). When a rank raises inside a
context-parallel call it records ``rank: error`` in the process group's key-value store
before re-raising, so that ranks left waiting for it (whose receive then times out, or fails
at once when the failed process exits and its connections close) raise an error that names
the failed rank instead of hanging or blaming their neighbour.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["Comm", "ContextParallelError"]

# How long a rank whose communication failed waits for the failed rank's report to appear.
_REPORT_GRACE = timedelta(seconds=2)

# Newer PyTorch renames the flat-tensor collectives (*_single) and deprecates the old names.
_ALL_GATHER = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
_REDUCE_SCATTER = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor

# Calls made so far per group. Every rank of a group makes the same calls in the same order,
# so the count names one call on all ranks, and a failure reported in an earlier call (a
# caught ValueError) is never mistaken for the current one's.
_CALLS: dict[str, int] = {}


class ContextParallelError(RuntimeError):
    """A context-parallel call failed on some rank; ``failed_rank`` names it (``None`` when no
    rank reported an error, e.g. a process died or stalled past the timeout)."""

    def __init__(self, message: str, failed_rank: int | None) -> None:
        super().__init__(message)
        self.failed_rank = failed_rank


class Comm:
    """The process group of one context-parallel call, seen from this rank."""

    def __init__(self, group: Any, timeout: float | None) -> None:
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError(
                "context parallelism needs an initialised process group "
                "(torch.distributed.init_process_group)"
            )
        self.group = group
        self.world = dist.get_world_size(group)
        self.rank = dist.get_rank(group)
        if self.rank < 0:
            raise ValueError("this process is not a member of the given group")
        self.timeout = None if timeout is None else timedelta(seconds=timeout)
        name = str(getattr(group, "group_name", None) if group is not None else "default")
        _CALLS[name] = call = _CALLS.get(name, 0) + 1
        self._key = f"multihead/context_parallel/{name}/{call}/failed"
        self._store: Any = None
        try:
            self._store = dist.distributed_c10d._get_default_store()
        except Exception:  # a private API: without it errors only name the peer
            self._store = None

    def global_rank(self, rank: int) -> int:
        """Global rank of ``rank`` in this group (P2P ops address global ranks)."""
        if self.group is None or self.group is dist.group.WORLD:
            return rank
        return int(dist.get_global_rank(self.group, rank))

    @property
    def next(self) -> int:
        return (self.rank + 1) % self.world

    @property
    def prev(self) -> int:
        return (self.rank - 1) % self.world

    # ---------------------------------------------------------------------------------------
    # Operations; each returns handles to pass to wait()
    # ---------------------------------------------------------------------------------------

    def shift(self, send: Tensor, recv: Tensor, tag: int) -> list[Any]:
        """Start sending ``send`` to the next rank and receiving ``recv`` from the previous."""
        ops = [
            dist.P2POp(dist.isend, send, self.global_rank(self.next), self.group, tag),
            dist.P2POp(dist.irecv, recv, self.global_rank(self.prev), self.group, tag),
        ]
        return list(dist.batch_isend_irecv(ops))

    def all_gather(self, x: Tensor) -> Tensor:
        """``(P, *x.shape)``: every rank's ``x``, in rank order."""
        out = x.new_empty(self.world * x.numel())
        work = _ALL_GATHER(out, x.contiguous().view(-1), group=self.group, async_op=True)
        self.wait([work], "all-gather")
        return out.view(self.world, *x.shape)

    def reduce_scatter(self, x: Tensor) -> Tensor:
        """``x`` is ``(P, ...)``; returns the sum over ranks of their ``x[rank]``."""
        out = x.new_empty(x[0].numel())
        flat = x.contiguous().view(-1)  # gloo wants (P * n,) in and (n,) out
        work = _REDUCE_SCATTER(out, flat, group=self.group, async_op=True)
        self.wait([work], "reduce-scatter")
        return out.view(x.shape[1:])

    def all_to_all(self, x: Tensor) -> Tensor:
        """``x`` is ``(P, ...)``; returns ``y`` with ``y[i]`` = rank ``i``'s ``x[rank]``.

        Gloo in the PyTorch versions we test has ``all_to_all_single`` on CPU; where a backend
        lacks it, the same exchange is done with ``P - 1`` rounds of paired send/receive.
        """
        x = x.contiguous()
        out = torch.empty_like(x)
        try:
            work = dist.all_to_all_single(out, x, group=self.group, async_op=True)
        except (RuntimeError, NotImplementedError):
            return self._all_to_all_p2p(x)
        self.wait([work], "all-to-all")
        return out

    def _all_to_all_p2p(self, x: Tensor) -> Tensor:
        out = torch.empty_like(x)
        out[self.rank] = x[self.rank]
        for step in range(1, self.world):
            to, frm = (self.rank + step) % self.world, (self.rank - step) % self.world
            ops = [
                dist.P2POp(dist.isend, x[to], self.global_rank(to), self.group, 7),
                dist.P2POp(dist.irecv, out[frm], self.global_rank(frm), self.group, 7),
            ]
            self.wait(list(dist.batch_isend_irecv(ops)), f"all-to-all with rank {frm}")
        return out

    # ---------------------------------------------------------------------------------------
    # Waiting and failures
    # ---------------------------------------------------------------------------------------

    def wait(self, works: list[Any], what: str) -> None:
        """Wait for ``works``; on failure or timeout raise :class:`ContextParallelError`."""
        try:
            for work in works:
                if self.timeout is None:
                    work.wait()
                else:
                    work.wait(self.timeout)
        except Exception as exc:
            raise self._explain(what, exc) from exc

    def _explain(self, what: str, exc: BaseException) -> ContextParallelError:
        report = self._read_report()
        if report is not None:
            rank, message = report
            return ContextParallelError(
                f"rank {rank} failed during context-parallel attention ({message}); "
                f"rank {self.rank} stopped while waiting for {what}",
                rank,
            )
        limit = f"within {self.timeout.total_seconds():g} s " if self.timeout else ""
        return ContextParallelError(
            f"rank {self.rank}: {what} did not complete {limit}and no rank reported an error "
            f"(a process may have died or stalled): {exc}",
            None,
        )

    def _read_report(self) -> tuple[int, str] | None:
        if self._store is None:
            return None
        try:
            self._store.wait([self._key], _REPORT_GRACE)
            raw = self._store.get(self._key).decode("utf-8", "replace")
        except Exception:
            return None
        rank, _, message = raw.partition("\t")
        return int(rank), message

    @contextmanager
    def guard(self, stage: str) -> Iterator[None]:
        """Report an error raised on this rank during ``stage`` so that waiting ranks name it.

        Errors of user input (``ValueError``/``TypeError``) are re-raised unchanged; any other
        error becomes a :class:`ContextParallelError` naming this rank.
        """
        try:
            yield
        except ContextParallelError:
            raise  # this rank only waited for a failed one
        except Exception as exc:
            self._report(f"{type(exc).__name__} in {stage}: {exc}")
            if isinstance(exc, (ValueError, TypeError)):
                raise
            raise ContextParallelError(
                f"rank {self.rank} failed during context-parallel {stage}: "
                f"{type(exc).__name__}: {exc}",
                self.rank,
            ) from exc

    def _report(self, message: str) -> None:
        if self._store is None:
            return
        # The first report wins: later errors on other ranks are consequences of it.
        with suppress(Exception):
            self._store.compare_set(self._key, "", f"{self.rank}\t{message[:500]}")
