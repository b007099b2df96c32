"""attention_with_lse and merge_attention against plain float64 math (tests/oracle.py)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from multihead.functional import attention, attention_with_lse, merge_attention
from oracle import allowed_matrix, attention64

F64 = torch.float64


def lse64(q, k, mask=None, *, causal=False, window=None):
    """Row log-sum-exp over allowed keys, float64, written out: (B, H, Nq), -inf when empty."""
    q, k = q.double(), k.double()
    h, hkv = q.shape[1], k.shape[1]
    k = k.repeat_interleave(h // hkv, dim=1)
    logits = torch.einsum("bhid,bhjd->bhij", q, k) / math.sqrt(q.shape[-1])
    allowed = allowed_matrix(q.shape[2], k.shape[2], causal=causal, window=window)
    if mask is not None and mask.dtype == torch.bool:
        allowed = allowed & mask
    elif mask is not None:
        logits = logits + mask.double()
    return torch.logsumexp(logits.masked_fill(~allowed, -math.inf), dim=-1)


def _inputs(b=2, h=4, hkv=2, nq=5, nk=7, dk=3, dv=4, dtype=F64):
    g = torch.Generator().manual_seed(1)
    q = torch.randn(b, h, nq, dk, generator=g, dtype=dtype)
    k = torch.randn(b, hkv, nk, dk, generator=g, dtype=dtype)
    v = torch.randn(b, hkv, nk, dv, generator=g, dtype=dtype)
    return q, k, v


def _padding(b, nq, nk):
    """Key padding (B, 1, 1, Nk) with batch 1 fully padded: every row of it is empty."""
    m = torch.ones(b, 1, 1, nk, dtype=torch.bool)
    m[0, ..., nk - 2 :] = False
    m[1] = False
    return m.expand(b, 1, nq, nk)


@pytest.mark.parametrize("backend", ["math", "chunked", "sdpa", "auto"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("hkv", [1, 2, 4])
def test_attention_with_lse_matches_float64(backend, causal, masked, hkv):
    q, k, v = _inputs(hkv=hkv)
    mask = _padding(2, 5, 7) if masked else None
    out, lse = attention_with_lse(q, k, v, mask, causal=causal, backend=backend)
    ref_out, _ = attention64(q, k, v, mask, causal=causal)
    ref_lse = lse64(q, k, mask, causal=causal)
    assert lse.shape == (2, 4, 5) and lse.dtype == F64
    torch.testing.assert_close(out, ref_out, atol=1e-12, rtol=1e-12)
    assert torch.equal(torch.isneginf(lse), torch.isneginf(ref_lse))
    alive = ~torch.isneginf(ref_lse)
    torch.testing.assert_close(lse[alive], ref_lse[alive], atol=1e-12, rtol=1e-12)
    if masked:
        assert torch.isneginf(lse[1]).all() and (out[1] == 0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_lse_is_float32_for_lower_precision(dtype):
    q, k, v = _inputs(dtype=dtype)
    out, lse = attention_with_lse(q, k, v, backend="chunked")
    assert out.dtype == dtype and lse.dtype == torch.float32
    torch.testing.assert_close(lse.double(), lse64(q, k), atol=2e-3, rtol=2e-3)


@pytest.mark.parametrize("backend", ["math", "chunked"])
def test_gradients_through_output_and_lse(backend):
    q, k, v = _inputs(b=1, h=2, hkv=1, nq=4, nk=5, dk=3, dv=2)
    mask = torch.ones(1, 1, 4, 5, dtype=torch.bool)
    mask[..., 2, :] = False  # one empty row: zero output, lse -inf, finite gradients
    bias = torch.randn(1, 2, 4, 5, dtype=F64).masked_fill(~mask, -math.inf)
    inputs = tuple(t.clone().requires_grad_() for t in (q, k, v))

    def fn(q, k, v):
        out, lse = attention_with_lse(q, k, v, bias, causal=True, backend=backend)
        return out, lse.masked_fill(torch.isneginf(lse), 0.0)

    assert torch.autograd.gradcheck(fn, inputs)
    out, lse = attention_with_lse(*inputs, bias, causal=True, backend=backend)
    (out.sum() + lse.masked_fill(torch.isneginf(lse), 0.0).sum()).backward()
    assert all(torch.isfinite(t.grad).all() for t in inputs)


def test_approximate_backend_is_refused():
    q, k, v = _inputs()
    with pytest.raises(ValueError, match="exact"):
        attention_with_lse(q, k, v, backend="linear")


def test_dropout_uses_math():
    q, k, v = _inputs()
    torch.manual_seed(3)
    out, lse = attention_with_lse(q, k, v, dropout_p=0.5, backend="auto")
    torch.testing.assert_close(lse, lse64(q, k))  # lse is taken before dropout
    assert out.shape == (2, 4, 5, 4)


@pytest.mark.parametrize("cuts", [(3,), (1, 4), (2, 3, 5)])
@pytest.mark.parametrize("causal", [False, True])
def test_merge_equals_attention_over_union(cuts, causal):
    """Split keys into disjoint parts; merging their results is attention over all keys."""
    q, k, v = _inputs(nq=7, nk=7)
    mask = _padding(2, 7, 7)
    structure = allowed_matrix(7, 7, causal=causal, window=None)
    inputs = tuple(t.clone().requires_grad_() for t in (q, k, v))
    qq, kk, vv = inputs
    bounds = [0, *cuts, 7]
    outs, lses = [], []
    for j0, j1 in itertools.pairwise(bounds):
        part = mask[..., j0:j1] & structure[:, j0:j1]  # some rows of a part are empty
        o, s = attention_with_lse(qq, kk[:, :, j0:j1], vv[:, :, j0:j1], part, backend="chunked")
        outs.append(o)
        lses.append(s)
    out, lse = merge_attention(outs, lses)
    ref = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    ref_out = attention(*ref, mask, causal=causal, backend="math").output
    torch.testing.assert_close(out, ref_out, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(lse, lse64(q, k, mask, causal=causal), atol=1e-12, rtol=1e-12)
    grad = torch.randn_like(out)
    (out * grad).sum().backward()
    (ref_out * grad).sum().backward()
    for mine, theirs in zip(inputs, ref, strict=True):
        torch.testing.assert_close(mine.grad, theirs.grad, atol=1e-12, rtol=1e-12)


def test_merge_gradcheck_with_empty_parts():
    g = torch.Generator().manual_seed(2)
    outs = [torch.randn(1, 2, 3, 4, generator=g, dtype=F64, requires_grad=True) for _ in range(3)]
    raw = torch.randn(3, 1, 2, 3, generator=g, dtype=F64)
    raw[0, 0, 0, 1] = -math.inf  # part 0 is empty for one row
    raw[:, 0, 1, 2] = -math.inf  # every part is empty for another
    lses = [raw[i].clone().requires_grad_() for i in range(3)]

    def fn(*ts):
        out, lse = merge_attention(list(ts[:3]), list(ts[3:]))
        return out, lse.masked_fill(torch.isneginf(lse), 0.0)

    assert torch.autograd.gradcheck(fn, (*outs, *lses))
    out, lse = merge_attention(outs, lses)
    assert (out[0, 1, 2] == 0).all() and torch.isneginf(lse[0, 1, 2])


def test_merge_accumulates_in_float32():
    q, k, v = _inputs(dtype=torch.float16)
    parts = [attention_with_lse(q, k[:, :, s], v[:, :, s]) for s in (slice(0, 3), slice(3, 7))]
    out, lse = merge_attention([p.output for p in parts], [p.lse for p in parts])
    assert out.dtype == torch.float16 and lse.dtype == torch.float32
    torch.testing.assert_close(out.double(), attention64(q, k, v)[0], atol=2e-3, rtol=2e-3)


@pytest.mark.parametrize(
    ("outputs", "lses", "error", "match"),
    [
        ([], [], ValueError, "non-empty"),
        ([torch.zeros(1, 2, 3, 4)], [], ValueError, "equal length"),
        ([torch.zeros(1, 2, 3, 4)], [torch.zeros(1, 2, 4)], ValueError, r"lses\[0\]"),
        (
            [torch.zeros(1, 2, 3, 4), torch.zeros(1, 2, 3, 5)],
            [torch.zeros(1, 2, 3)] * 2,
            ValueError,
            r"outputs\[1\]",
        ),
        (torch.zeros(1, 2, 3, 4), [torch.zeros(1, 2, 3)], TypeError, "list or tuple"),
        (
            [torch.zeros(1, 2, 3, 4, dtype=torch.long)],
            [torch.zeros(1, 2, 3)],
            TypeError,
            "floating",
        ),
    ],
)
def test_merge_rejects_bad_input(outputs, lses, error, match):
    with pytest.raises(error, match=match):
        merge_attention(outputs, lses)


# Issue 12, item 1: an additive mask at a huge negative value on every key of a row.
@pytest.mark.parametrize("value", [torch.finfo(torch.float32).min, -1e30])
def test_chunked_gradient_exact_when_row_maximum_is_huge(value):
    """Repro: m[1] = finfo.min gave chunked a gradient 4x the float64 reference on row 1,
    because m + log(l) rounds to m. finfo(float32).min is at or below float32's threshold
    (finfo.min / 2), so it forbids like -inf and the float64 reference gets -inf there; -1e30
    stays a finite bias at any threshold, where the saved maximum keeps the gradient exact."""
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 1, 4, 8, generator=g)
    k = torch.randn(1, 1, 4, 8, generator=g)
    v = torch.randn(1, 1, 4, 8, generator=g)
    m = torch.zeros(4, 4)
    m[1] = value
    ref_mask = m.to(F64).masked_fill(m <= torch.finfo(torch.float32).min / 2, float("-inf"))
    grads = {}
    for name, dtype, backend, mask in (
        ("chunked", torch.float32, "chunked", m),
        ("ref", F64, "math", ref_mask),
    ):
        qq = q.detach().to(dtype).clone().requires_grad_()
        out = attention(qq, k.to(dtype), v.to(dtype), mask.to(dtype), backend=backend).output
        out[0, 0, 1].sum().backward()
        grads[name] = qq.grad
    assert torch.isfinite(grads["chunked"]).all()
    torch.testing.assert_close(grads["chunked"].double(), grads["ref"], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", ["auto", "math", "chunked"])
def test_alibi_lse_matches_plain_float64(backend):
    # ALiBi travels as slopes, like in attention(); reference written out here:
    # logits + (-m_h * |i + Nk - Nq - j|), queries bottom-right.
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 2, n, 8, generator=g, dtype=F64) for n in (3, 5, 5))
    slopes = torch.tensor([0.5, 0.25], dtype=F64)
    out, lse = attention_with_lse(q, k, v, causal=True, alibi_slopes=slopes, backend=backend)
    i = torch.arange(3)[:, None] + 2
    j = torch.arange(5)[None, :]
    logits = q @ k.transpose(-1, -2) / math.sqrt(8) - slopes[:, None, None] * (i - j).abs()
    logits = logits.masked_fill(j > i, float("-inf"))
    torch.testing.assert_close(lse, torch.logsumexp(logits, dim=-1), atol=1e-10, rtol=0)
    torch.testing.assert_close(out, torch.softmax(logits, -1) @ v, atol=1e-10, rtol=0)
