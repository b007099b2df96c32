"""The efficient kernels (chunked, local, linear, lowrank) against plain float64 formulas.

Every oracle here is written out in this file from the papers' formulas, in float64, with
K/V repeated per head the obvious way; the library's own reference kernel is not used as one.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

from multihead.functional import attention, make_spec, select_backend
from multihead.functional.chunked import chunked_attention
from multihead.functional.linear import linear_attention
from multihead.functional.local import local_attention
from multihead.functional.lowrank import lowrank_attention
from multihead.positional import alibi_slopes

NEG_INF = float("-inf")


# ---------------------------------------------------------------------------------------------
# Plain float64 oracles
# ---------------------------------------------------------------------------------------------


def repeat_kv(q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    g = q.shape[1] // k.shape[1]
    return q.double(), k.double().repeat_interleave(g, 1), v.double().repeat_interleave(g, 1)


def positions(nq: int, nk: int) -> tuple[Tensor, Tensor]:
    """Query key-positions ``(Nq, 1)`` (bottom-right aligned) and key positions ``(1, Nk)``."""
    return torch.arange(nq)[:, None] + (nk - nq), torch.arange(nk)[None, :]


def plain_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None = None,
    causal: bool = False,
    window: int | tuple[int, int] | None = None,
    scale: float | None = None,
    slopes: Tensor | None = None,
) -> Tensor:
    """softmax(scale QK^T + bias) V over the allowed keys; empty rows give zeros."""
    q, k, v = repeat_kv(q, k, v)
    nq, nk = q.shape[2], k.shape[2]
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    logits = scale * q @ k.transpose(-1, -2)
    i, j = positions(nq, nk)
    allowed = torch.ones(nq, nk, dtype=torch.bool)
    if causal:
        allowed &= j <= i
    if window is not None:
        left, right = (window, window) if isinstance(window, int) else window
        right = 0 if causal else right
        allowed &= (j >= i - left) & (j <= i + right)
    if mask is not None:
        if mask.dtype == torch.bool:
            allowed = allowed & mask
        else:
            logits = logits + mask.double()
    if slopes is not None:
        logits = logits - slopes.double()[:, None, None] * (i - j).abs()
    logits = logits.masked_fill(~allowed, NEG_INF)
    empty = torch.isneginf(logits).all(-1, keepdim=True)
    probs = torch.softmax(logits.masked_fill(empty, 0.0), -1).masked_fill(empty, 0.0)
    return probs @ v


def plain_linear(
    q: Tensor, k: Tensor, v: Tensor, causal: bool = False, keep: Tensor | None = None
) -> Tensor:
    """Katharopoulos et al. (2020) Eq. 4 in its quadratic form with phi = elu + 1."""
    q, k, v = repeat_kv(q, k, v)
    sim = (F.elu(q) + 1) @ (F.elu(k) + 1).transpose(-1, -2)  # (B, H, Nq, Nk)
    if causal:
        i, j = positions(q.shape[2], k.shape[2])
        sim = sim * (j <= i)
    if keep is not None:
        sim = sim * keep
    den = sim.sum(-1, keepdim=True)
    return torch.where(den > 0, (sim @ v) / torch.where(den > 0, den, 1.0), 0.0)


def plain_lowrank(q: Tensor, k: Tensor, v: Tensor, rank: int, keep: Tensor | None = None) -> Tensor:
    """Keys/values averaged over r contiguous segments (real keys only), then softmax attention."""
    q, k, v = repeat_kv(q, k, v)
    nk = k.shape[2]
    r = min(rank, nk)
    keep = torch.ones(1, 1, 1, nk, dtype=torch.float64) if keep is None else keep.double()
    pooled_k, pooled_v, alive = [], [], []
    for s in range(r):
        idx = [j for j in range(nk) if j * r // nk == s]
        w = keep[..., idx].transpose(-1, -2)  # (B|1, 1, len, 1)
        count = w.sum(-2)  # (B|1, 1, 1)
        pooled_k.append((k[:, :, idx] * w).sum(-2) / count.clamp(min=1))
        pooled_v.append((v[:, :, idx] * w).sum(-2) / count.clamp(min=1))
        alive.append(count > 0)
    kp, vp = torch.stack(pooled_k, 2), torch.stack(pooled_v, 2)  # (B, H, r, D)
    ok = torch.stack(alive, -1)  # (B|1, 1, 1, r)
    logits = (q @ kp.transpose(-1, -2) / math.sqrt(q.shape[-1])).masked_fill(~ok, NEG_INF)
    empty = torch.isneginf(logits).all(-1, keepdim=True)
    probs = torch.softmax(logits.masked_fill(empty, 0.0), -1).masked_fill(empty, 0.0)
    return probs @ vp


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------

# (B, H, Hkv, Nq, Nk, Dk, Dv)
SHAPES = [
    (2, 4, 2, 13, 17, 8, 5),  # GQA, Nq < Nk, Dk != Dv
    (2, 3, 1, 11, 7, 4, 6),  # multi-query, Nq > Nk (early rows empty under causal)
    (1, 2, 2, 9, 9, 3, 3),  # square, one head per key/value head
]
MASKS = ["none", "bool", "float", "padding", "2d", "dead_rows"]
STRUCTURES = {
    "plain": {},
    "causal": {"causal": True},
    "window3": {"window": 3},
    "window1_4": {"window": (1, 4)},
    "causal_window2": {"causal": True, "window": 2},
}
WINDOWED = ["window3", "window1_4", "causal_window2"]


def make_qkv(
    shape: tuple[int, ...], seed: int = 0, dtype: torch.dtype = torch.float64
) -> list[Tensor]:
    b, h, hkv, nq, nk, dk, dv = shape
    gen = torch.Generator().manual_seed(seed)
    sizes = [(b, h, nq, dk), (b, hkv, nk, dk), (b, hkv, nk, dv)]
    return [
        torch.randn(s, generator=gen, dtype=torch.float64).to(dtype).requires_grad_() for s in sizes
    ]


def make_mask(kind: str, shape: tuple[int, ...], seed: int = 1) -> Tensor | None:
    b, h, _, nq, nk, _, _ = shape
    gen = torch.Generator().manual_seed(seed)
    if kind == "none":
        return None
    if kind == "bool":
        return torch.rand(b, 1, nq, nk, generator=gen) > 0.3
    if kind == "float":
        bias = torch.randn(1, h, nq, nk, generator=gen, dtype=torch.float64)
        return bias.masked_fill(torch.rand(1, h, nq, nk, generator=gen) < 0.15, NEG_INF)
    if kind == "padding":  # lengths: one row fully padded when B > 1
        lengths = torch.tensor([nk - 3, 0][:b])
        return (torch.arange(nk)[None] < lengths[:, None])[:, None, None, :]
    if kind == "2d":
        return torch.rand(nq, nk, generator=gen) > 0.4
    if kind == "dead_rows":
        mask = torch.ones(1, h, nq, nk, dtype=torch.bool)
        mask[0, 0, 0] = False
        mask[0, -1, nq - 2] = False
        return mask
    raise AssertionError(kind)


def outputs_and_grads(fn: Callable[..., Tensor], qkv: list[Tensor], seed: int = 2) -> list[Tensor]:
    """The output and the gradients of a random linear function of it w.r.t. q, k, v."""
    out = fn(*qkv)
    # Drawn in float32 and then cast: the same weights for every dtype, whatever the RNG does
    # for half types (torch 2.11 on another CPU drew different float16 numbers).
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(out.shape, generator=gen, dtype=torch.float32).to(out.dtype)
    grads = torch.autograd.grad((out * weight).sum(), qkv)
    return [out.detach(), *grads]


def assert_all_close(got: list[Tensor], want: list[Tensor], atol: float, rtol: float = 0.0) -> None:
    for name, a, b in zip(["output", "dq", "dk", "dv"], got, want, strict=True):
        assert torch.isfinite(a).all(), f"{name} is not finite"
        torch.testing.assert_close(a.double(), b.double(), atol=atol, rtol=rtol, msg=name)


# ---------------------------------------------------------------------------------------------
# Exact kernels: chunked and local
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("structure", list(STRUCTURES))
@pytest.mark.parametrize("mask_kind", MASKS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_chunked_matches_float64_formula(shape, mask_kind, structure):
    qkv = make_qkv(shape)
    mask = make_mask(mask_kind, shape)
    kw = STRUCTURES[structure]
    want = outputs_and_grads(lambda q, k, v: plain_attention(q, k, v, mask, **kw), qkv)
    # Block sizes that divide neither length, so ragged edge blocks are exercised.
    got = outputs_and_grads(
        lambda q, k, v: chunked_attention(q, k, v, mask=mask, block_size=(4, 5), **kw), qkv
    )
    assert_all_close(got, want, atol=1e-10)


@pytest.mark.parametrize("block_size", [None, 3])
@pytest.mark.parametrize("structure", WINDOWED)
@pytest.mark.parametrize("mask_kind", MASKS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_local_matches_float64_formula(shape, mask_kind, structure, block_size):
    qkv = make_qkv(shape)
    mask = make_mask(mask_kind, shape)
    kw = STRUCTURES[structure]
    want = outputs_and_grads(lambda q, k, v: plain_attention(q, k, v, mask, **kw), qkv)
    got = outputs_and_grads(
        lambda q, k, v: local_attention(q, k, v, mask=mask, block_size=block_size, **kw), qkv
    )
    assert_all_close(got, want, atol=1e-10)


@pytest.mark.parametrize("backend", ["chunked", "local"])
@pytest.mark.parametrize("structure", WINDOWED)
def test_registry_entries_match_formula(backend, structure):
    shape = SHAPES[0]
    qkv = make_qkv(shape)
    mask = make_mask("padding", shape)
    kw = STRUCTURES[structure]
    want = outputs_and_grads(lambda q, k, v: plain_attention(q, k, v, mask, **kw), qkv)
    got = outputs_and_grads(
        lambda q, k, v: attention(q, k, v, mask, backend=backend, **kw).output, qkv
    )
    assert_all_close(got, want, atol=1e-10)


@settings(max_examples=25, deadline=None)
@given(
    b=st.integers(1, 2),
    hkv=st.integers(1, 2),
    groups=st.integers(1, 3),
    nq=st.integers(1, 20),
    nk=st.integers(1, 20),
    block_q=st.integers(1, 8),
    block_k=st.integers(1, 8),
    causal=st.booleans(),
    window=st.one_of(st.none(), st.integers(0, 6), st.tuples(st.integers(0, 5), st.integers(0, 5))),
    seed=st.integers(0, 1000),
)
def test_chunked_property(b, hkv, groups, nq, nk, block_q, block_k, causal, window, seed):
    shape = (b, hkv * groups, hkv, nq, nk, 4, 3)
    qkv = make_qkv(shape, seed=seed)
    mask = torch.rand(b, 1, 1, nk, generator=torch.Generator().manual_seed(seed)) > 0.2
    kw = {"causal": causal, "window": window}
    want = outputs_and_grads(lambda q, k, v: plain_attention(q, k, v, mask, **kw), qkv)
    got = outputs_and_grads(
        lambda q, k, v: chunked_attention(q, k, v, mask=mask, block_size=(block_q, block_k), **kw),
        qkv,
    )
    assert_all_close(got, want, atol=1e-10)


@pytest.mark.parametrize("block_size", [1, (3, 7), 1000])
def test_chunked_block_sizes(block_size):
    shape = (1, 2, 1, 10, 12, 4, 4)
    qkv = make_qkv(shape)
    want = outputs_and_grads(lambda q, k, v: plain_attention(q, k, v, causal=True), qkv)
    got = outputs_and_grads(
        lambda q, k, v: chunked_attention(q, k, v, causal=True, block_size=block_size), qkv
    )
    assert_all_close(got, want, atol=1e-10)


def test_chunked_gradcheck_with_float_mask():
    q, k, v = make_qkv((1, 2, 1, 5, 6, 3, 2))
    bias = torch.randn(1, 2, 5, 6, dtype=torch.float64)
    bias[0, 0, 1] = NEG_INF  # one empty row: its gradients must be zero, not NaN
    bias.requires_grad_()

    def fn(q, k, v, bias):
        return chunked_attention(q, k, v, mask=bias, causal=True, block_size=(2, 3))

    assert torch.autograd.gradcheck(fn, (q, k, v, bias))
    out = fn(q, k, v, bias)
    grads = torch.autograd.grad(out.sum(), (q, k, v, bias))
    assert out[0, 0, 1].eq(0).all() and grads[0][0, 0, 1].eq(0).all()


def test_chunked_float_mask_gradient_matches_formula():
    shape = (2, 4, 2, 7, 9, 4, 3)
    q, k, v = make_qkv(shape)
    bias = torch.randn(2, 1, 1, 9, dtype=torch.float64, requires_grad=True)  # broadcast shape
    want = torch.autograd.grad(plain_attention(q, k, v, bias, causal=True).sum(), bias)[0]
    got = torch.autograd.grad(
        chunked_attention(q, k, v, mask=bias, causal=True, block_size=(3, 4)).sum(), bias
    )[0]
    torch.testing.assert_close(got, want, atol=1e-10, rtol=0)


def test_local_gradcheck():
    q, k, v = make_qkv((1, 2, 1, 7, 6, 3, 2))
    bias = torch.randn(1, 1, 7, 6, dtype=torch.float64, requires_grad=True)

    def fn(q, k, v, bias):
        return local_attention(q, k, v, mask=bias, window=(2, 1), block_size=2)

    assert torch.autograd.gradcheck(fn, (q, k, v, bias))


@pytest.mark.parametrize("backend", ["chunked", "local"])
def test_fully_masked_rows_are_zero_with_zero_gradients(backend):
    q, k, v = make_qkv((2, 2, 2, 6, 6, 4, 4))
    mask = torch.ones(2, 2, 6, 6, dtype=torch.bool)
    mask[1, 0, 3] = False  # row with nothing to attend to
    mask[0] = False  # a whole batch element without keys
    out = attention(q, k, v, mask, window=2, backend=backend).output
    dq, dk, dv = torch.autograd.grad(out.sum(), (q, k, v))
    assert out[0].eq(0).all() and out[1, 0, 3].eq(0).all()
    assert dq[0].eq(0).all() and dq[1, 0, 3].eq(0).all()
    assert all(torch.isfinite(g).all() for g in (dq, dk, dv))


@pytest.mark.parametrize("kernel", ["chunked", "local", "linear", "lowrank"])
def test_nan_in_padded_keys_does_not_leak(kernel):
    q, k, v = (t.detach().float() for t in make_qkv((2, 2, 1, 5, 8, 4, 4)))
    keep = torch.tensor([[True] * 6 + [False] * 2, [True] * 8])[:, None, None, :]
    k[0, :, 6:] = float("nan")
    v[0, :, 6:] = float("nan")
    fns = {
        "chunked": lambda: chunked_attention(q, k, v, mask=keep, block_size=2),
        "local": lambda: local_attention(q, k, v, mask=keep, window=4, block_size=2),
        "linear": lambda: linear_attention(q, k, v, mask=keep, causal=True, chunk_size=3),
        "lowrank": lambda: lowrank_attention(q, k, v, mask=keep, rank=3),
    }
    assert torch.isfinite(fns[kernel]()).all()


def test_chunked_skips_forbidden_blocks():
    # A NaN value at the last key poisons (0 * nan) every query block that computes the key
    # block holding it; under causality only the last query block may touch that key block.
    q, k, v = (t.detach() for t in make_qkv((1, 2, 2, 16, 16, 4, 4)))
    v[:, :, 15] = float("nan")
    out = chunked_attention(q, k, v, causal=True, block_size=4)
    assert torch.isfinite(out[:, :, :12]).all()
    assert torch.isnan(out[:, :, 15]).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("backend", ["chunked", "local"])
def test_half_precision_close_to_float32(dtype, backend):
    shape = (2, 4, 2, 37, 41, 16, 8)
    q, k, v = make_qkv(shape, dtype=dtype)
    with torch.no_grad():
        q.mul_(8.0)  # large logits: a float16 softmax would overflow
    mask = make_mask("padding", shape)
    kw = {"window": (7, 3), "mask": mask}
    run = {
        "chunked": lambda *t: chunked_attention(*t, block_size=(8, 16), **kw),
        "local": lambda *t: local_attention(*t, block_size=8, **kw),
    }[backend]
    half = outputs_and_grads(run, [q, k, v])
    full = outputs_and_grads(run, [t.detach().float().requires_grad_() for t in (q, k, v)])
    assert half[0].dtype == dtype and half[1].dtype == dtype
    tol = 2e-2 if dtype == torch.bfloat16 else 3e-3
    assert_all_close(half, full, atol=tol * 10, rtol=tol)
    torch.testing.assert_close(half[0].float(), full[0], atol=tol, rtol=tol)


def test_backward_saves_no_quadratic_tensor():
    n, d = 2048, 8
    q, k, v = (torch.randn(1, 1, n, d, requires_grad=True) for _ in range(3))
    saved = []

    def pack(t: Tensor) -> Tensor:
        saved.append(t.numel())
        return t

    runs = {
        "chunked": lambda: chunked_attention(q, k, v, causal=True, block_size=256),
        "local": lambda: local_attention(q, k, v, window=16, causal=True, block_size=16),
        "linear": lambda: linear_attention(q, k, v, causal=True, chunk_size=16),
    }
    for name, run in runs.items():
        saved.clear()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            run().sum().backward()
        assert sum(saved) < n * n // 8, f"{name} saved {sum(saved)} elements"


# ---------------------------------------------------------------------------------------------
# ALiBi
# ---------------------------------------------------------------------------------------------


def test_alibi_slopes_follow_the_paper():
    torch.testing.assert_close(alibi_slopes(8), torch.tensor([2.0**-i for i in range(1, 9)]))
    torch.testing.assert_close(alibi_slopes(1), torch.tensor([2.0**-8]))
    # 12 heads: the 8-head sequence, then every other slope of the 16-head one.
    expected = [2.0**-i for i in range(1, 9)] + [2.0 ** -(i + 0.5) for i in range(4)]
    torch.testing.assert_close(alibi_slopes(12), torch.tensor(expected))
    with pytest.raises(ValueError, match="num_heads"):
        alibi_slopes(0)


@pytest.mark.parametrize("causal", [False, True])
def test_chunked_alibi_matches_formula(causal):
    shape = (2, 6, 3, 9, 14, 4, 5)
    qkv = make_qkv(shape)
    slopes = alibi_slopes(6)
    want = outputs_and_grads(
        lambda q, k, v: plain_attention(q, k, v, causal=causal, slopes=slopes), qkv
    )
    got = outputs_and_grads(
        lambda q, k, v: chunked_attention(
            q, k, v, causal=causal, alibi_slopes=slopes, block_size=(4, 3)
        ),
        qkv,
    )
    assert_all_close(got, want, atol=1e-10)


def test_alibi_slopes_checked():
    q, k, v = make_qkv((1, 4, 2, 3, 3, 2, 2))
    with pytest.raises(ValueError, match=r"alibi_slopes must have shape \(H,\) = \(4,\)"):
        chunked_attention(q, k, v, alibi_slopes=torch.ones(2))
    with pytest.raises(TypeError, match="alibi_slopes"):
        chunked_attention(q, k, v, alibi_slopes=torch.ones(4, dtype=torch.long))


# ---------------------------------------------------------------------------------------------
# Approximate kernels: linear and lowrank
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("padding", [False, True])
@pytest.mark.parametrize("chunk_size", [1, 3, 64])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_linear_matches_float64_formula(shape, causal, chunk_size, padding):
    qkv = make_qkv(shape)
    keep = make_mask("padding", shape) if padding else None
    want = outputs_and_grads(lambda q, k, v: plain_linear(q, k, v, causal, keep), qkv)
    got = outputs_and_grads(
        lambda q, k, v: linear_attention(q, k, v, mask=keep, causal=causal, chunk_size=chunk_size),
        qkv,
    )
    assert_all_close(got, want, atol=1e-10)


def test_linear_per_head_padding_and_registry():
    shape = (2, 4, 2, 6, 8, 4, 4)
    qkv = make_qkv(shape)
    keep = torch.rand(2, 4, 1, 8, generator=torch.Generator().manual_seed(3)) > 0.3
    want = outputs_and_grads(lambda q, k, v: plain_linear(q, k, v, True, keep), qkv)
    got = outputs_and_grads(
        lambda q, k, v: attention(q, k, v, keep, causal=True, backend="linear").output, qkv
    )
    assert_all_close(got, want, atol=1e-10)


@pytest.mark.parametrize("padding", [False, True])
@pytest.mark.parametrize("rank", [1, 4, 64])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_lowrank_matches_float64_formula(shape, rank, padding):
    qkv = make_qkv(shape)
    keep = make_mask("padding", shape) if padding else None
    want = outputs_and_grads(lambda q, k, v: plain_lowrank(q, k, v, rank, keep), qkv)
    got = outputs_and_grads(lambda q, k, v: lowrank_attention(q, k, v, mask=keep, rank=rank), qkv)
    assert_all_close(got, want, atol=1e-10)


def test_lowrank_is_exact_at_full_rank_and_with_identity_projection():
    shape = SHAPES[0]
    q, k, v = make_qkv(shape)
    want = plain_attention(q, k, v)
    nk = shape[4]
    torch.testing.assert_close(lowrank_attention(q, k, v, rank=nk), want, atol=1e-10, rtol=0)
    eye = torch.eye(nk, dtype=torch.float64)
    torch.testing.assert_close(lowrank_attention(q, k, v, proj_k=eye), want, atol=1e-10, rtol=0)
    torch.testing.assert_close(
        attention(q, k, v, backend="lowrank").output, want, atol=1e-10, rtol=0
    )


def test_lowrank_learned_projections_get_gradients():
    q, k, v = make_qkv((1, 2, 1, 5, 7, 3, 3))
    e = torch.randn(3, 7, dtype=torch.float64, requires_grad=True)
    f = torch.randn(3, 7, dtype=torch.float64, requires_grad=True)
    qd, kd, vd = repeat_kv(q, k, v)
    want = torch.softmax(qd @ (e @ kd).transpose(-1, -2) / math.sqrt(3), -1) @ (f @ vd)
    got = lowrank_attention(q, k, v, proj_k=e, proj_v=f)
    torch.testing.assert_close(got, want, atol=1e-10, rtol=0)
    assert torch.autograd.gradcheck(
        lambda e, f: lowrank_attention(q.detach(), k.detach(), v.detach(), proj_k=e, proj_v=f),
        (e, f),
    )


# ---------------------------------------------------------------------------------------------
# Selection and errors
# ---------------------------------------------------------------------------------------------


def test_auto_prefers_sdpa_and_never_picks_approximations():
    q, k, v = (t.detach() for t in make_qkv(SHAPES[0], dtype=torch.float32))
    chosen, skipped = select_backend(make_spec(q, k, v, window=3))
    assert chosen.name == "sdpa"
    chosen, skipped = select_backend(make_spec(q, k, v, window=3, need_weights=True))
    assert chosen.name == "math"
    assert "need_weights" in skipped["chunked"] and "need_weights" in skipped["local"]
    assert "approximate" in skipped["linear"] and "approximate" in skipped["lowrank"]


@pytest.mark.parametrize(
    ("backend", "kwargs", "reason"),
    [
        ("local", {}, "sliding window"),
        ("linear", {"need_weights": True}, "need_weights"),
        ("linear", {"window": 2}, "window"),
        ("linear", {"mask": torch.ones(13, 17, dtype=torch.bool)}, "key padding"),
        ("linear", {"mask": torch.zeros(1, 1, 1, 17)}, "float"),
        ("lowrank", {"causal": True}, "causal"),
        ("lowrank", {"need_weights": True}, "need_weights"),
        ("chunked", {"dropout_p": 0.1}, "dropout"),
        ("chunked", {"need_weights": True}, "need_weights"),
    ],
)
def test_named_backend_that_cannot_run_says_why(backend, kwargs, reason):
    q, k, v = (t.detach() for t in make_qkv(SHAPES[0], dtype=torch.float32))
    with pytest.raises(ValueError, match=f"backend '{backend}' cannot run this call: .*{reason}"):
        attention(q, k, v, backend=backend, **kwargs)


def test_argument_errors():
    q, k, v = (t.detach() for t in make_qkv(SHAPES[0], dtype=torch.float32))
    with pytest.raises(ValueError, match="window sizes must be >= 0"):
        local_attention(q, k, v, window=-1)
    with pytest.raises(ValueError, match="window sizes must be >= 0"):
        chunked_attention(q, k, v, window=(2, -3))
    with pytest.raises(ValueError, match="window is required"):
        local_attention(q, k, v, window=None)
    with pytest.raises(ValueError, match="block_size"):
        chunked_attention(q, k, v, block_size=0)
    with pytest.raises(ValueError, match="chunk_size"):
        linear_attention(q, k, v, chunk_size=0)
    with pytest.raises(ValueError, match="mask: linear attention supports only key padding"):
        linear_attention(q, k, v, mask=torch.ones(13, 17, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"proj_k must have shape \(rank, Nk\) = \(rank, 17\)"):
        lowrank_attention(q, k, v, proj_k=torch.ones(4, 16))
    with pytest.raises(ValueError, match=r"proj_v must have shape \(rank, Nk\) = \(4, 17\)"):
        lowrank_attention(q, k, v, proj_k=torch.ones(4, 17), proj_v=torch.ones(3, 17))
    with pytest.raises(ValueError, match="query heads H=4 must be a multiple"):
        chunked_attention(q, k[:, :1].expand(2, 3, 17, 8), v[:, :1].expand(2, 3, 17, 5))
