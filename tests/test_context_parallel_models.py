"""Context parallelism inside models: a ``DecoderLM`` whose sequences are sharded across 2 gloo
ranks computes the single-process model's logits and parameter gradients (float64).

The two ranks are spawned once for the module; each builds the same seeded model, computes the
single-process reference on the full batch itself, then the sharded forward and backward, sums
the parameter gradients over the ranks and records the largest differences.
"""

from __future__ import annotations

import datetime
import os
import pickle
import socket
import tempfile
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from multihead.config import TransformerConfig
from multihead.distributed import ContextParallel, enable_context_parallel
from multihead.modules import DecoderLM, MultiHeadAttention

WORLD = 2
CASES = [  # (positional, layout, method, padding)
    ("rope", "zigzag", "ring", False),
    ("rope", "contiguous", "allgather", True),
    ("sinusoidal", "zigzag", "ring", True),
    ("learned", "zigzag", "ulysses", False),
    ("alibi", "zigzag", "ring", True),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _case(positional: str, layout: str, method: str, padding: bool) -> dict[str, float]:
    from multihead.distributed import gather_sequence, shard_sequence

    torch.manual_seed(0)
    config = TransformerConfig(
        vocab_size=11, d_model=16, num_heads=4, num_kv_heads=2, d_ff=32, dropout=0.0,
        num_decoder_layers=2, max_len=64, positional=positional,
    )  # fmt: skip
    model = DecoderLM(config).double()
    b, n = 2, 16
    ids = torch.randint(0, 11, (b, n))
    pad = torch.ones(b, n, dtype=torch.bool)
    if padding:
        pad[1, 11:] = False  # right padding on the last rank's tokens
    weight = torch.randn(b, n, 11, dtype=torch.float64)  # a loss that touches every logit

    full = model(ids, padding_mask=pad if padding else None)
    (full * weight).sum().backward()
    expected = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()

    cp = ContextParallel(layout=layout, method=method, timeout=60)
    enable_context_parallel(model, cp)
    ids_local, pad_local, weight_local = (
        shard_sequence(t, dim=1, layout=layout) for t in (ids, pad, weight)
    )
    positions = None if positional == "alibi" else cp.positions(ids_local.shape[1])
    local = model(ids_local, padding_mask=pad_local if padding else None, positions=positions)
    (local * weight_local).sum().backward()
    logits = gather_sequence(local, dim=1, layout=layout)
    grad_err = 0.0
    for name, p in model.named_parameters():
        grad = p.grad.clone()
        dist.all_reduce(grad)  # each rank holds the gradient of its own tokens' loss
        grad_err = max(grad_err, (grad - expected[name]).abs().max().item())
    return {"logits": (logits - full.detach()).abs().max().item(), "grad": grad_err}


def _worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=WORLD,
        timeout=datetime.timedelta(seconds=60),
    )
    results: dict[Any, Any] = {}
    for case in CASES:
        try:
            results[case] = _case(*case)
        except Exception as exc:  # recorded, so the test shows which case broke and how
            results[case] = f"{type(exc).__name__}: {exc}"
    tmp = os.path.join(out_dir, f".rank{rank}.tmp")
    with open(tmp, "wb") as f:
        pickle.dump(results, f)
    os.replace(tmp, os.path.join(out_dir, f"rank{rank}.pkl"))
    dist.barrier()
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def rank_results() -> list[dict[Any, Any]]:
    with tempfile.TemporaryDirectory() as out_dir:
        mp.spawn(_worker, args=(_free_port(), out_dir), nprocs=WORLD, join=True)
        ranks = []
        for rank in range(WORLD):
            with open(os.path.join(out_dir, f"rank{rank}.pkl"), "rb") as f:
                ranks.append(pickle.load(f))
    return ranks


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
def test_sharded_decoder_lm_equals_single_process(rank_results, case):
    for rank, results in enumerate(rank_results):
        errors = results[case]
        assert isinstance(errors, dict), (rank, errors)
        assert errors["logits"] <= 1e-10 and errors["grad"] <= 1e-10, (rank, errors)


@pytest.mark.parametrize(
    "call, message",
    [
        (dict(key=torch.zeros(1, 4, 8)), "self-attention"),
        (dict(need_weights=True), "need_weights"),
        (dict(mask=torch.ones(4, 4, dtype=torch.bool)), "mask"),
        (dict(key_padding_mask=torch.ones(1, 3, dtype=torch.bool)), "key_padding_mask"),
    ],
)
def test_unsupported_calls_raise_before_any_communication(call, message):
    mha = enable_context_parallel(MultiHeadAttention(8, 2), ContextParallel())
    with pytest.raises(ValueError, match=message):
        mha(torch.zeros(1, 4, 8), **call)


def test_config_and_enable_check_their_arguments():
    with pytest.raises(ValueError, match="method"):
        ContextParallel(method="tree")
    with pytest.raises(ValueError, match="layout"):
        ContextParallel(layout="striped")
    with pytest.raises(TypeError, match="ContextParallel"):
        enable_context_parallel(MultiHeadAttention(8, 2), "ring")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no MultiHeadAttention"):
        enable_context_parallel(torch.nn.Linear(2, 2), ContextParallel())
    mha = MultiHeadAttention(8, 2, dropout=0.1)
    enable_context_parallel(mha, ContextParallel())
    with pytest.raises(ValueError, match="dropout"):
        mha(torch.zeros(1, 4, 8))
    assert enable_context_parallel(mha, None).context_parallel is None
