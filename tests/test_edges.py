"""The kernel contract at its edges (issue 12, items 2 and 3): NaN queries, empty dimensions."""

from __future__ import annotations

import pytest
import torch

from multihead.functional import attention, backend_names, get_backend
from oracle import attention64

BACKENDS = backend_names()


def _window(backend: str) -> int | None:
    # local refuses calls without a window; a window wider than the sequence changes nothing.
    return 64 if backend == "local" else None


@pytest.mark.parametrize("backend", [*BACKENDS, "auto"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_nan_query_row_propagates(backend, causal, dtype):
    """A NaN in query row r gives NaN on row r only, as plain float math does (PyTorch's fused
    CPU kernel alone returns zeros there)."""
    if backend == "lowrank" and causal:
        pytest.skip("lowrank is not causal")
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 4, 6, 8, generator=g, dtype=dtype) for _ in range(3))
    clean = attention(q, k, v, causal=causal, window=_window(backend), backend=backend).output
    q[1, 2, 3, 5] = float("nan")
    out = attention(q, k, v, causal=causal, window=_window(backend), backend=backend).output
    assert out[1, 2, 3].isnan().all()
    others = torch.ones(2, 4, 6, dtype=torch.bool)
    others[1, 2, 3] = False
    assert torch.equal(out[others], clean[others])


@pytest.mark.parametrize("backend", ["math", "sdpa", "chunked", "auto"])
def test_nan_row_matches_oracle_elsewhere(backend):
    """The rows without NaN still equal the float64 oracle."""
    q, k, v = (torch.randn(1, 2, 5, 4) for _ in range(3))
    q[0, 1, 0, 0] = float("nan")
    out = attention(q, k, v, backend=backend).output.double()
    ref, _ = attention64(q, k, v)
    assert out[0, 1, 0].isnan().all()
    torch.testing.assert_close(out[0, 0], ref[0, 0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[0, 1, 1:], ref[0, 1, 1:], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", [*BACKENDS, "auto"])
@pytest.mark.parametrize("score", ["dot", "cosine"])
def test_head_dim_zero(backend, score):
    """Dk == 0: every logit is an empty sum, so each row is the plain mean of the values
    (approximate backends need only stay finite: linear's feature map has nothing to weigh)."""
    g = torch.Generator().manual_seed(2)
    q = torch.randn(2, 4, 3, 0, generator=g, dtype=torch.float64)
    k = torch.randn(2, 2, 5, 0, generator=g, dtype=torch.float64)
    v = torch.randn(2, 2, 5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    out = attention(q, k, v, score=score, window=_window(backend), backend=backend).output
    assert out.shape == (2, 4, 3, 3) and out.isfinite().all()
    if backend == "auto" or get_backend(backend).exact:
        mean = v.detach().mean(dim=2, keepdim=True)  # (B, Hkv, 1, Dv)
        torch.testing.assert_close(out, mean.repeat_interleave(2, dim=1).expand(2, 4, 3, 3))
    out.sum().backward()
    assert v.grad is not None and v.grad.isfinite().all()


@pytest.mark.parametrize("backend", [*BACKENDS, "auto"])
@pytest.mark.parametrize(
    "shape",  # (B, H, Hkv, Nq, Nk, Dk, Dv)
    [(0, 4, 2, 5, 7, 8, 8), (2, 2, 1, 0, 7, 8, 8), (2, 2, 1, 5, 7, 8, 0), (0, 2, 1, 3, 5, 0, 0)],
)
def test_empty_batch_and_lengths(backend, shape):
    """B == 0 (and other empty sizes) work on every backend, forward and backward."""
    b, h, hkv, nq, nk, dk, dv = shape
    q = torch.randn(b, h, nq, dk, requires_grad=True)
    k = torch.randn(b, hkv, nk, dk, requires_grad=True)
    v = torch.randn(b, hkv, nk, dv, requires_grad=True)
    out = attention(q, k, v, window=_window(backend), backend=backend).output
    assert out.shape == (b, h, nq, dv)
    out.sum().backward()
    assert q.grad is not None and q.grad.shape == q.shape


def test_zero_heads_is_a_value_error_naming_the_heads():
    q = torch.randn(1, 0, 4, 8)
    with pytest.raises(ValueError, match="heads"):
        attention(q, q, q)
