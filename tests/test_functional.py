"""Every exact backend against the plain float64 oracle in tests/oracle.py."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from multihead.functional import attention as _attention
from multihead.functional import backend_names, get_backend, make_spec
from oracle import attention64

EXACT = [name for name in backend_names() if get_backend(name).exact]


def refusal(name, q, k, v, mask=None, **kwargs):
    """The backend's reason for not running this call, or None."""
    kwargs.pop("backend", None)
    return get_backend(name).supports(make_spec(q, k, v, mask, **kwargs))


def attention(q, k, v, mask=None, **kwargs):
    """The kernel under test; a backend that declines the call (e.g. 'local' without a window)
    skips the test rather than failing it: declining is tested in test_kernels.py."""
    backend = kwargs.get("backend", "auto")
    if backend != "auto":
        reason = refusal(backend, q, k, v, mask, **kwargs)
        if reason is not None:
            pytest.skip(f"{backend}: {reason}")
    return _attention(q, k, v, mask, **kwargs)


# (B, H, Hkv, Nq, Nk, Dk, Dv)
SHAPES = [
    (1, 1, 1, 4, 4, 8, 8),
    (2, 4, 2, 5, 7, 8, 6),
    (2, 4, 1, 7, 5, 4, 8),
    (3, 6, 3, 1, 9, 8, 8),
]

MASK_KINDS = [
    "none",
    "bool2d",
    "bool4d",
    "float4d",
    "padding",
    "causal",
    "causal+bool",
    "window",
    "window+causal",
    "dead_rows",
    "float_dead_rows",
]


def make_inputs(shape, dtype=torch.float64, requires_grad=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    b, h, hkv, nq, nk, dk, dv = shape
    q = torch.randn(b, h, nq, dk, generator=g, dtype=dtype)
    k = torch.randn(b, hkv, nk, dk, generator=g, dtype=dtype)
    v = torch.randn(b, hkv, nk, dv, generator=g, dtype=dtype)
    for t in (q, k, v):
        t.requires_grad_(requires_grad)
    return q, k, v


def make_mask(kind, shape, seed=0):
    """Returns (mask, causal, window)."""
    g = torch.Generator().manual_seed(seed + 1)
    b, h, _, nq, nk, _, _ = shape
    if kind == "none":
        return None, False, None
    if kind == "bool2d":
        m = torch.rand(nq, nk, generator=g) > 0.3
        m[:, 0] = True
        return m, False, None
    if kind == "bool4d":
        m = torch.rand(b, h, nq, nk, generator=g) > 0.3
        m[..., -1] = True
        return m, False, None
    if kind == "float4d":
        return torch.randn(b, 1, nq, nk, generator=g, dtype=torch.float64), False, None
    if kind == "padding":
        lengths = torch.randint(1, nk + 1, (b,), generator=g)
        return (torch.arange(nk)[None] < lengths[:, None])[:, None, None, :], False, None
    if kind == "causal":
        return None, True, None
    if kind == "causal+bool":
        m = torch.rand(b, 1, nq, nk, generator=g) > 0.2
        return m, True, None
    if kind == "window":
        return None, False, 1
    if kind == "window+causal":
        return None, True, 2
    if kind == "dead_rows":
        m = torch.rand(b, h, nq, nk, generator=g) > 0.5
        m[:, :, 0, :] = False  # first query of every head sees nothing
        return m, False, None
    if kind == "float_dead_rows":
        m = torch.randn(b, 1, nq, nk, generator=g, dtype=torch.float64)
        m[:, :, -1, :] = float("-inf")
        return m, False, None
    raise AssertionError(kind)


@pytest.mark.parametrize("backend", EXACT)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("kind", MASK_KINDS)
def test_exact_backends_match_float64_oracle(backend, shape, kind):
    q, k, v = make_inputs(shape, requires_grad=True)
    mask, causal, window = make_mask(kind, shape)
    want, want_w = attention64(q, k, v, mask, causal=causal, window=window)
    got, _ = attention(q, k, v, mask, causal=causal, window=window, backend=backend)
    torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)

    grad_out = torch.randn_like(want)
    want_g = torch.autograd.grad((want * grad_out).sum(), (q, k, v), allow_unused=True)
    got_g = torch.autograd.grad((got * grad_out).sum(), (q, k, v), allow_unused=True)
    for a, e, t in zip(got_g, want_g, (q, k, v), strict=True):
        a = torch.zeros_like(t) if a is None else a
        e = torch.zeros_like(t) if e is None else e
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, e, atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("kind", MASK_KINDS)
def test_weights_match_oracle_and_rows_sum_to_one_or_zero(shape, kind):
    q, k, v = make_inputs(shape)
    mask, causal, window = make_mask(kind, shape)
    _, want_w = attention64(q, k, v, mask, causal=causal, window=window)
    _, w = attention(q, k, v, mask, causal=causal, window=window, need_weights=True)
    assert w is not None and w.shape == want_w.shape
    torch.testing.assert_close(w, want_w, atol=1e-12, rtol=1e-10)
    sums = w.sum(-1)
    assert torch.all((sums - 1).abs() < 1e-12) or torch.all(
        ((sums - 1).abs() < 1e-12) | (sums == 0)
    )


@pytest.mark.parametrize("backend", EXACT)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_lower_precision_close_to_float64(backend, dtype):
    shape = (2, 4, 2, 6, 9, 16, 8)
    q, k, v = make_inputs(shape)
    mask, causal, _ = make_mask("causal+bool", shape)
    want, _ = attention64(q, k, v, mask, causal=causal)
    got, _ = attention(q.to(dtype), k.to(dtype), v.to(dtype), mask, causal=causal, backend=backend)
    assert got.dtype == dtype
    tol = {torch.float32: 1e-5, torch.float16: 5e-3, torch.bfloat16: 3e-2}[dtype]
    torch.testing.assert_close(got.double(), want, atol=tol, rtol=tol)


@pytest.mark.parametrize("backend", EXACT)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_large_logits_do_not_overflow(backend, dtype):
    q, k, v = make_inputs((1, 2, 2, 4, 4, 8, 8), dtype=torch.float32)
    q = q * 300.0  # logits ~ 1e4..1e5: past float16's range once multiplied out
    want, _ = attention64(q, k, v)
    got, _ = attention(q.to(dtype), k.to(dtype), v.to(dtype), backend=backend)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got.double(), want, atol=5e-2, rtol=5e-2)


@pytest.mark.parametrize("backend", EXACT)
@pytest.mark.parametrize("dropout_p", [0.0, 0.3])
def test_fully_masked_rows_are_zero_with_finite_gradients(backend, dropout_p):
    q, k, v = make_inputs((2, 2, 2, 3, 4, 4, 4), dtype=torch.float32, requires_grad=True)
    mask = torch.ones(2, 1, 3, 4, dtype=torch.bool)
    mask[0, :, 1] = False
    out, _ = attention(q, k, v, mask, dropout_p=dropout_p, backend=backend)
    assert torch.equal(out[0, :, 1], torch.zeros_like(out[0, :, 1]))
    out.sum().backward()
    for t in (q, k, v):
        assert torch.isfinite(t.grad).all()
    assert torch.equal(q.grad[0, :, 1], torch.zeros_like(q.grad[0, :, 1]))


def test_causal_with_more_queries_than_keys_leaves_leading_rows_empty():
    q, k, v = make_inputs((1, 1, 1, 5, 3, 4, 4))
    out, w = attention(q, k, v, causal=True, need_weights=True)
    # bottom-right: query i sits at key position i - 2, so queries 0 and 1 see nothing
    assert torch.equal(out[0, 0, :2], torch.zeros(2, 4, dtype=out.dtype))
    assert torch.equal(w[0, 0, :2], torch.zeros(2, 3, dtype=w.dtype))
    assert torch.allclose(w[0, 0, 2:].sum(-1), torch.ones(3, dtype=w.dtype))


@pytest.mark.parametrize("backend", EXACT)
@pytest.mark.parametrize("poison", [float("nan"), float("inf")])
def test_non_finite_values_at_padded_keys_do_not_leak(backend, poison):
    q, k, v = make_inputs((2, 4, 2, 5, 6, 8, 8), dtype=torch.float32)
    pad = torch.tensor([[True] * 4 + [False] * 2, [True] * 6])[:, None, None, :]
    clean, _ = attention(q, k, v, pad, backend=backend)
    k2, v2 = k.clone(), v.clone()
    k2[0, :, 4:] = poison
    v2[0, :, 4:] = poison
    k2.requires_grad_()
    v2.requires_grad_()
    q2 = q.clone().requires_grad_()
    dirty, _ = attention(q2, k2, v2, pad, backend=backend)
    assert torch.equal(dirty, clean)
    dirty.sum().backward()
    for t in (q2, k2, v2):
        assert torch.isfinite(t.grad).all()


@pytest.mark.parametrize("backend", EXACT)
def test_cosine_score_matches_oracle(backend):
    shape = (2, 4, 2, 5, 7, 8, 6)
    q, k, v = make_inputs(shape)
    want, _ = attention64(q, k, v, causal=True, cosine=True)
    got, _ = attention(q, k, v, causal=True, score="cosine", backend=backend)
    torch.testing.assert_close(got, want)
    want, _ = attention64(q, k, v, cosine=True, scale=5.0)
    got, _ = attention(q, k, v, score="cosine", scale=5.0, backend=backend)
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("backend", EXACT)
def test_explicit_scale(backend):
    q, k, v = make_inputs((1, 2, 2, 3, 5, 4, 4))
    want, _ = attention64(q, k, v, scale=0.7)
    got, _ = attention(q, k, v, scale=0.7, backend=backend)
    torch.testing.assert_close(got, want)


def test_need_weights_does_not_change_output():
    q, k, v = make_inputs((2, 4, 2, 6, 6, 8, 8), dtype=torch.float32)
    mask, causal, _ = make_mask("causal+bool", (2, 4, 2, 6, 6, 8, 8))
    a, none = attention(q, k, v, mask, causal=causal)
    b, w = attention(q, k, v, mask, causal=causal, need_weights=True)
    assert none is None and w is not None
    torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


def test_weights_are_taken_before_dropout():
    q, k, v = make_inputs((1, 2, 2, 8, 8, 4, 4), dtype=torch.float32)
    torch.manual_seed(1)
    out, w = attention(q, k, v, dropout_p=0.5, need_weights=True)
    torch.testing.assert_close(w.sum(-1), torch.ones(1, 2, 8))
    ref, _ = attention(q, k, v)
    assert not torch.allclose(out, ref)


def test_dropout_is_inverted_dropout_on_the_weights():
    # E[dropout(P) V] = P V: average many draws of a tiny problem.
    q, k, v = make_inputs((1, 1, 1, 2, 3, 2, 2), dtype=torch.float64)
    want, _ = attention(q, k, v)
    n = 20000  # independent draws as a batch: one call, different dropout masks per row
    draws, _ = attention(
        q.expand(n, -1, -1, -1),
        k.expand(n, -1, -1, -1),
        v.expand(n, -1, -1, -1),
        dropout_p=0.2,
        backend="math",
    )
    torch.testing.assert_close(draws.mean(0, keepdim=True), want, atol=0.03, rtol=0.03)


@pytest.mark.parametrize("backend", EXACT)
def test_gradcheck_float64(backend):
    q, k, v = make_inputs((1, 2, 1, 3, 4, 3, 2), requires_grad=True)
    mask = torch.tensor([[True, False, True, True], [False] * 4, [True] * 4])
    if refusal(backend, q, k, v, mask) is None:
        fn = lambda q, k, v: _attention(q, k, v, mask, backend=backend)[0]  # noqa: E731
        assert torch.autograd.gradcheck(fn, (q, k, v))
    fn = lambda q, k, v: _attention(q, k, v, causal=True, window=1, backend=backend)[0]  # noqa: E731
    assert torch.autograd.gradcheck(fn, (q, k, v))


def test_float_mask_gradient():
    q, k, v = make_inputs((1, 2, 2, 3, 4, 3, 2), requires_grad=True)
    bias = torch.randn(1, 2, 3, 4, dtype=torch.float64, requires_grad=True)
    fn = lambda q, k, v, m: attention(q, k, v, m, backend="math")[0]  # noqa: E731
    assert torch.autograd.gradcheck(fn, (q, k, v, bias))


@pytest.mark.parametrize("backend", EXACT)
def test_causality_proved_by_gradients(backend):
    q, k, v = make_inputs((1, 2, 2, 6, 6, 4, 4), requires_grad=True)
    out, _ = attention(q, k, v, causal=True, backend=backend)
    for t in range(6):
        gq, gk, gv = torch.autograd.grad(out[:, :, t].sum(), (q, k, v), retain_graph=True)
        assert torch.all(gk[:, :, t + 1 :] == 0) and torch.all(gv[:, :, t + 1 :] == 0)
        assert torch.all(gq[:, :, t + 1 :] == 0) and torch.all(gq[:, :, :t] == 0)


@st.composite
def random_call(draw):
    b = draw(st.integers(1, 3))
    hkv = draw(st.integers(1, 3))
    h = hkv * draw(st.integers(1, 3))
    nq = draw(st.integers(1, 7))
    nk = draw(st.integers(1, 7))
    dk = draw(st.integers(1, 6))
    dv = draw(st.integers(1, 6))
    causal = draw(st.booleans())
    window = draw(st.one_of(st.none(), st.integers(0, 4)))
    mask_shape = draw(
        st.sampled_from(
            [None, (nq, nk), (b, 1, 1, nk), (1, h, nq, nk), (b, h, nq, nk), (b, 1, nq, 1)]
        )
    )
    seed = draw(st.integers(0, 2**16))
    return (b, h, hkv, nq, nk, dk, dv), causal, window, mask_shape, seed


@given(random_call())
def test_property_auto_and_math_match_oracle(call):
    shape, causal, window, mask_shape, seed = call
    q, k, v = make_inputs(shape, seed=seed)
    mask = None
    if mask_shape is not None:
        mask = torch.rand(mask_shape, generator=torch.Generator().manual_seed(seed)) > 0.4
    want, want_w = attention64(q, k, v, mask, causal=causal, window=window)
    for backend in EXACT:
        if refusal(backend, q, k, v, mask, causal=causal, window=window) is not None:
            continue
        got, _ = _attention(q, k, v, mask, causal=causal, window=window, backend=backend)
        torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)
    _, w = attention(q, k, v, mask, causal=causal, window=window, need_weights=True)
    torch.testing.assert_close(w, want_w, atol=1e-12, rtol=1e-10)
    assert torch.isfinite(want).all()


def test_auto_explains_its_choice():
    from multihead.functional import make_spec, select_backend

    q, k, v = make_inputs((1, 1, 1, 2, 2, 2, 2))
    chosen, skipped = select_backend(make_spec(q, k, v, need_weights=True))
    assert chosen.name == "math"
    assert "need_weights" in skipped["sdpa"]
    chosen, _ = select_backend(make_spec(q, k, v))
    assert chosen.name == "sdpa"


def test_named_backend_that_cannot_run_the_call_says_why():
    q, k, v = make_inputs((1, 1, 1, 2, 2, 2, 2))
    with pytest.raises(ValueError, match=r"sdpa.*need_weights"):
        _attention(q, k, v, need_weights=True, backend="sdpa")


def test_scale_default_is_inverse_sqrt_dk():
    q, k, v = make_inputs((1, 1, 1, 2, 3, 9, 2))
    a, _ = attention(q, k, v)
    b, _ = attention(q, k, v, scale=1 / math.sqrt(9))
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_finfo_min_bias_forbids_like_minus_inf(dtype):
    # Hugging Face pads with finfo(dtype).min rather than -inf. At or below finfo.min / 2 a
    # value forbids its key, so a row of only such values is fully masked: zeros everywhere.
    q, k, v = make_inputs((1, 2, 2, 3, 4, 8, 8), dtype=torch.float32)
    low = torch.finfo(torch.float32).min
    bias = torch.zeros(1, 1, 3, 4)
    bias[..., 1, :] = low  # a row with only "padding"
    bias[..., 0, 2:] = low
    forbidden = torch.zeros(1, 1, 3, 4).masked_fill(bias <= low / 2, float("-inf"))
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    for backend in EXACT:
        if refusal(backend, q, k, v, bias) is not None:
            continue
        got, _ = _attention(q, k, v, bias, backend=backend)
        want, _ = _attention(q, k, v, forbidden, backend=backend)
        assert torch.equal(got[:, :, 1], torch.zeros_like(got[:, :, 1])), backend
        torch.testing.assert_close(got, want, atol=0, rtol=0)


@pytest.mark.parametrize("backend", EXACT)
def test_finfo_min_rows_have_the_float64_reference_gradient(backend):
    # The repro: a row where every allowed logit sits at finfo.min. Taken literally it
    # is a uniform row, and kernels that recompute softmax from a rounded log-sum-exp got its
    # gradient wrong by a factor of Nk; as a forbidden row its gradient is exactly zero.
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 1, 4, 8, requires_grad=True) for _ in range(3))
    m = torch.zeros(4, 4)
    m[1] = torch.finfo(torch.float32).min
    if refusal(backend, q, k, v, m) is not None:
        pytest.skip(refusal(backend, q, k, v, m))
    out, _ = _attention(q, k, v, m, backend=backend)
    out.sum().backward()
    # Plain float64 math over the keys each row may see (row 1: none).
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    logits = (q64 @ k64.transpose(-1, -2)) / math.sqrt(8)
    allowed = torch.ones(4, 4, dtype=torch.bool)
    allowed[1] = False
    probs = torch.softmax(logits.masked_fill(~allowed, float("-inf")), dim=-1).nan_to_num(0.0)
    (probs @ v64).sum().backward()
    assert torch.equal(out[0, 0, 1], torch.zeros(8))
    for ours, ref in ((q, q64), (k, k64), (v, v64)):
        torch.testing.assert_close(ours.grad.double(), ref.grad, atol=1e-5, rtol=1e-5)


def test_mask_on_another_device_is_refused_by_name():
    q, k, v = make_inputs((1, 1, 1, 2, 2, 2, 2))
    mask = torch.ones(2, 2, dtype=torch.bool, device="meta")
    with pytest.raises(ValueError, match="mask must be on the query's device"):
        _attention(q, k, v, mask)
