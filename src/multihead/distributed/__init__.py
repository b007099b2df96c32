"""Context parallelism: exact attention over sequences sharded across a process group.

Runs on ``torch.distributed`` with any backend (gloo on CPU, NCCL on GPUs). See
``docs/distributed.md``.

Example (every rank)::

    import torch.distributed as dist
    from multihead.distributed import context_parallel_attention, gather_sequence, shard_sequence

    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    q, k, v = (shard_sequence(t, dim=2, layout="zigzag") for t in (q_full, k_full, v_full))
    out = context_parallel_attention(q, k, v, causal=True, method="ring", layout="zigzag")
    out_full = gather_sequence(out, dim=2, layout="zigzag")
"""

from ._comm import ContextParallelError
from .attention import METHODS, context_parallel_attention
from .groups import context_parallel_groups
from .layout import LAYOUTS, gather_sequence, global_positions, shard_sequence
from .model import ContextParallel, enable_context_parallel

__all__ = [
    "LAYOUTS",
    "METHODS",
    "ContextParallel",
    "ContextParallelError",
    "context_parallel_attention",
    "context_parallel_groups",
    "enable_context_parallel",
    "gather_sequence",
    "global_positions",
    "shard_sequence",
]
