"""Context-parallel attention on gloo process groups of 2, 3 and 4 CPU processes.

Each world size is spawned once (a module-scoped fixture) and runs every case inside the same
group; each rank compares its shards of the output and of the gradients with single-process
float64 ``attention(backend="math")`` on the full tensors (plus an explicit ALiBi bias), and
the tests below read what the ranks recorded.
"""

from __future__ import annotations

import datetime
import itertools
import math
import os
import pickle
import socket
import tempfile
import time
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from multihead.functional import attention
from multihead.positional import alibi_slopes

METHODS = ("ring", "allgather", "ulysses")
LAYOUTS = ("contiguous", "zigzag")
WORLDS = (2, 3, 4)
HEADS = {2: (4, 1), 3: (6, 3), 4: (8, 2)}  # world -> (H, Hkv for the GQA cases)
TIMEOUT_S = 3.0  # the failure case's timeout; every other wait finishes well within 60 s


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cases(world: int) -> list[dict[str, Any]]:
    h, hkv_gqa = HEADS[world]
    cases = []
    for method, layout, causal, pad, gqa in itertools.product(
        METHODS, LAYOUTS, (False, True), (False, True), (False, True)
    ):
        cases.append(
            dict(
                method=method, layout=layout, causal=causal, pad=pad, h=h, hkv=hkv_gqa if gqa else h
            )
        )
    for method, layout in itertools.product(METHODS, LAYOUTS):  # windows, ALiBi, float32
        common = dict(method=method, layout=layout, pad=True, h=h, hkv=hkv_gqa)
        cases.append(dict(common, causal=True, window=5))
        cases.append(dict(common, causal=False, window=(4, 2)))
        cases.append(dict(common, causal=True, alibi=True))
        cases.append(dict(common, causal=True, score="cosine"))
        cases.append(dict(common, causal=True, dtype="float32"))
    return cases


def case_id(case: dict[str, Any]) -> str:
    return "-".join(f"{k}={v}" for k, v in sorted(case.items()))


def _inputs(case: dict[str, Any], world: int) -> tuple[torch.Tensor, ...]:
    """Full tensors, identical on every rank (same seed)."""
    g = torch.Generator().manual_seed(7)
    dtype = getattr(torch, case.get("dtype", "float64"))
    b, n = 2, 2 * world * 3
    q = torch.randn(b, case["h"], n, 5, generator=g, dtype=dtype)
    k = torch.randn(b, case["hkv"], n, 5, generator=g, dtype=dtype)
    v = torch.randn(b, case["hkv"], n, 3, generator=g, dtype=dtype)
    pad = torch.ones(b, n, dtype=torch.bool)
    if case["pad"]:
        pad[0, :4] = False  # the first queries have no real key before them: zero rows
        pad[1, n // world : 2 * n // world] = False  # one rank's whole shard is padding
        pad[1, -1] = False
    grad = torch.randn(b, case["h"], n, 3, generator=g, dtype=dtype)
    return q, k, v, pad, grad


def _reference(case, q, k, v, pad, grad):
    """float64 attention on the whole sequence, and its gradients."""
    q, k, v = (t.detach().double().clone().requires_grad_() for t in (q, k, v))
    mask: torch.Tensor = pad[:, None, None, :]
    if case.get("alibi"):
        n = q.shape[2]
        pos = torch.arange(n, dtype=torch.float64)
        bias = (
            -alibi_slopes(case["h"]).double()[:, None, None] * (pos[None, :] - pos[:, None]).abs()
        )
        mask = bias[None].masked_fill(~mask, -math.inf)
    out = attention(
        q,
        k,
        v,
        mask,
        causal=case["causal"],
        window=case.get("window"),
        score=case.get("score", "dot"),
        backend="math",
    ).output
    (out * grad.double()).sum().backward()
    return out.detach(), q.grad, k.grad, v.grad


def _run_case(case: dict[str, Any], world: int, group: Any = None) -> float:
    """Largest relative error of this rank's output and gradient shards."""
    from multihead.distributed import context_parallel_attention, shard_sequence

    q, k, v, pad, grad = _inputs(case, world)
    ref = _reference(case, q, k, v, pad, grad)
    layout = case["layout"]
    shard = lambda t, dim=2: shard_sequence(t, dim, layout=layout, group=group)  # noqa: E731
    ql, kl, vl = (shard(t).detach().requires_grad_() for t in (q, k, v))
    out = context_parallel_attention(
        ql,
        kl,
        vl,
        causal=case["causal"],
        key_padding_mask=shard(pad, 1) if case["pad"] else None,
        window=case.get("window"),
        score=case.get("score", "dot"),
        method=case["method"],
        layout=layout,
        alibi_slopes=alibi_slopes(case["h"]) if case.get("alibi") else None,
        block_size=(2, 4),
        timeout=60.0,
        group=group,
    )
    (out * shard(grad)).sum().backward()
    err = 0.0
    for mine, full in zip((out, ql.grad, kl.grad, vl.grad), ref, strict=True):
        expected = shard(full)
        diff = (mine.double() - expected).abs().max().item()
        err = max(err, diff / max(1.0, expected.abs().max().item()))
    return err


def _error_cases(world: int) -> dict[str, str]:
    """Bad input: the message each rank got."""
    from multihead.distributed import context_parallel_attention, shard_sequence

    found = {}
    x = torch.zeros(1, 2, 2 * world + 1, 4)
    for layout in LAYOUTS:
        try:
            shard_sequence(x, 2, layout=layout)
        except ValueError as exc:
            found[f"indivisible-{layout}"] = str(exc)
    q = torch.zeros(1, world + 1, 3, 4)
    for name, kwargs in (
        ("ulysses-heads", dict(method="ulysses")),
        ("zigzag-odd", dict(layout="zigzag")),
        ("method", dict(method="nope")),
    ):
        try:
            context_parallel_attention(q, q, q, **kwargs)
        except ValueError as exc:
            found[name] = str(exc)
    return found


def _failure_case(world: int) -> str:
    """Rank 1 raises in the middle of the ring; what does each rank see?"""
    from multihead.distributed import ContextParallelError, context_parallel_attention, ring

    rank = dist.get_rank()
    if rank == 1:
        original = ring._attend
        calls = []

        def failing(*args, **kwargs):
            calls.append(1)
            if len(calls) == 2:  # the second block: mid-ring
                raise RuntimeError("injected failure")
            return original(*args, **kwargs)

        ring._attend = failing
    q = torch.randn(1, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    start = time.monotonic()
    try:
        out = context_parallel_attention(q, q, q, causal=True, timeout=TIMEOUT_S)
        out.sum().backward()
        return "no error"
    except ContextParallelError as exc:
        return f"{exc.failed_rank}|{time.monotonic() - start:.1f}|{exc}"


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=60),
    )
    results: dict[str, Any] = {}
    for case in _cases(world):
        try:
            results[case_id(case)] = _run_case(case, world)
        except Exception as exc:  # recorded, so the test shows which case broke and how
            results[case_id(case)] = f"{type(exc).__name__}: {exc}"
    results["errors"] = _error_cases(world)
    if world == 4:  # two sequences, each across a context group of 2 ranks: {0, 1} and {2, 3}
        from multihead.distributed import context_parallel_groups

        context, _ = context_parallel_groups(2, timeout=60)
        for method in METHODS:
            case = dict(method=method, layout="zigzag", causal=True, pad=True, h=4, hkv=2)
            try:
                results[f"subgroup-{method}"] = _run_case(case, 2, context)
            except Exception as exc:
                results[f"subgroup-{method}"] = f"{type(exc).__name__}: {exc}"
    dist.barrier()
    results["failure"] = _failure_case(world)
    tmp = os.path.join(out_dir, f".rank{rank}.tmp")
    with open(tmp, "wb") as f:
        pickle.dump(results, f)
    os.replace(tmp, os.path.join(out_dir, f"rank{rank}.pkl"))
    # Rank 0 hosts the group's key-value store, where failures are reported: every rank stays
    # up until all have written their results.
    deadline = time.monotonic() + 60
    while (
        time.monotonic() < deadline
        and len([f for f in os.listdir(out_dir) if f.endswith(".pkl")]) < world
    ):
        time.sleep(0.05)
    os._exit(0)  # the group is broken by the failure case; skip its teardown


@pytest.fixture(scope="module", params=WORLDS, ids=lambda w: f"world{w}")
def group_results(request) -> tuple[int, list[dict[str, Any]]]:
    world = request.param
    with tempfile.TemporaryDirectory() as out_dir:
        mp.spawn(_worker, args=(world, _free_port(), out_dir), nprocs=world, join=True)
        ranks = []
        for rank in range(world):
            with open(os.path.join(out_dir, f"rank{rank}.pkl"), "rb") as f:
                ranks.append(pickle.load(f))
    return world, ranks


def test_matches_single_process_float64(group_results):
    """Every method x layout x causal x padding x GQA (+ windows, ALiBi, float32) on every rank."""
    world, ranks = group_results
    bad = []
    for case in _cases(world):
        tol = 1e-5 if case.get("dtype") == "float32" else 1e-10
        for rank, results in enumerate(ranks):
            err = results[case_id(case)]
            if not isinstance(err, float) or not err <= tol:
                bad.append(f"rank {rank} {case_id(case)}: {err}")
    assert not bad, "\n".join(bad[:20])


def test_context_groups_inside_a_larger_world(group_results):
    world, ranks = group_results
    if world != 4:
        pytest.skip("sub-groups are run in the world of 4")
    for rank, results in enumerate(ranks):
        for method in METHODS:
            err = results[f"subgroup-{method}"]
            assert isinstance(err, float) and err <= 1e-10, (rank, method, err)


def test_bad_input_gives_clear_errors(group_results):
    world, ranks = group_results
    for results in ranks:
        errors = results["errors"]
        assert f"must be divisible by {world}" in errors["indivisible-contiguous"]
        assert f"must be divisible by {2 * world}" in errors["indivisible-zigzag"]
        assert "H = " in errors["ulysses-heads"] and "divisible" in errors["ulysses-heads"]
        assert "even" in errors["zigzag-odd"]
        assert "method must be one of" in errors["method"]


def test_failure_mid_ring_names_the_failed_rank(group_results):
    """Rank 1 raises inside the ring: every rank stops with an error naming rank 1."""
    _, ranks = group_results
    for rank, results in enumerate(ranks):
        failed, seconds, message = results["failure"].split("|", 2)
        assert failed == "1", (rank, message)
        assert "rank 1" in message and "injected failure" in message
        assert float(seconds) < TIMEOUT_S + 10  # bounded: nobody hangs
