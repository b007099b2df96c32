"""Data-parallel training across processes, as launched by ``torchrun``.

``torchrun --nproc_per_node N`` starts N copies of a script and tells each its place through
the environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``).
:func:`init_distributed` reads those variables and joins the process group: NCCL when each
process has a GPU, gloo on the CPU. The model is then wrapped in
:class:`~torch.nn.parallel.DistributedDataParallel`, which averages gradients across processes
in ``backward()``, so every process applies the same update and parameters stay identical.

Each process draws its own data shard: batch seeds mix in the rank (see
:func:`multihead.train.loop.step_seed`), so no two processes see the same batch.

Example (two CPU processes)::

    torchrun --nproc_per_node 2 -m multihead.cli train copy --steps 200
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

__all__ = [
    "DistInfo",
    "all_reduce_max",
    "cleanup_distributed",
    "init_distributed",
    "unwrap",
    "wrap_model",
]


@dataclass(frozen=True, kw_only=True)
class DistInfo:
    """Where this process stands in a (possibly one-process) data-parallel job.

    Example:
        >>> DistInfo().is_main, DistInfo(rank=1, world_size=2).is_main
        (True, False)
    """

    # Global index of this process, 0 .. world_size - 1; rank 0 writes files and prints.
    rank: int = 0
    # Number of processes training together.
    world_size: int = 1
    # Index among the processes on this machine; picks the GPU.
    local_rank: int = 0
    # Device this process computes on.
    device: str = "cpu"
    # Consecutive ranks that share each sequence (context parallelism); 1: plain data parallel.
    context_parallel: int = 1

    @property
    def data_rank(self) -> int:
        """Index of this process's data shard: the ranks of a context group share one."""
        return self.rank // self.context_parallel

    @property
    def is_main(self) -> bool:
        """Whether this process should write checkpoints, metrics and plots."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """Whether more than one process takes part (a process group is in use)."""
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an int, got {raw!r}") from None


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the process group described by torchrun's environment, or run alone without one.

    Args:
        device: ``"auto"`` (the GPU numbered ``LOCAL_RANK`` when CUDA is available, else the
            CPU), ``"cpu"`` or ``"cuda"``.

    Example:
        >>> init_distributed("cpu")  # without torchrun: a single process
        DistInfo(rank=0, world_size=1, local_rank=0, device='cpu', context_parallel=1)
    """
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    if not 0 <= rank < world_size:
        raise ValueError(f"RANK must be in [0, WORLD_SIZE={world_size}), got {rank}")
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if use_cuda and not torch.cuda.is_available():
        raise ValueError("device='cuda' was asked for, but CUDA is not available")
    dev = f"cuda:{local_rank}" if use_cuda else "cpu"
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if world_size > 1 and not dist.is_initialized():
        # NCCL only moves CUDA tensors; gloo is the CPU backend.
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


def wrap_model(model: nn.Module, info: DistInfo) -> nn.Module:
    """Wrap ``model`` in DistributedDataParallel when ``info`` has several processes.

    DDP broadcasts rank 0's parameters at construction, so every process starts identical even
    if their initialisations differed.

    Example:
        >>> m = nn.Linear(2, 2)
        >>> wrap_model(m, DistInfo()) is m
        True
    """
    if not info.enabled:
        return model
    if info.device.startswith("cuda"):
        return nn.parallel.DistributedDataParallel(model, device_ids=[info.local_rank])
    return nn.parallel.DistributedDataParallel(model)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside a DDP wrapper (or ``model`` itself).

    Example:
        >>> m = nn.Linear(2, 2)
        >>> unwrap(m) is m
        True
    """
    inner = getattr(model, "module", None)
    if isinstance(model, nn.parallel.DistributedDataParallel) and isinstance(inner, nn.Module):
        return inner
    return model


def all_reduce_max(value: float, info: DistInfo) -> float:
    """The largest ``value`` over all processes (``value`` itself when alone).

    Used for decisions every process must take together, such as stopping early; one process
    leaving the loop alone would leave the others waiting forever in the next all-reduce.

    Example:
        >>> all_reduce_max(3.0, DistInfo())
        3.0
    """
    if not info.enabled:
        return float(value)
    t = torch.tensor([float(value)], device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def cleanup_distributed() -> None:
    """Leave the process group, if one was joined.

    Example:
        >>> cleanup_distributed()  # a no-op without a process group
    """
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
