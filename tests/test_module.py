"""MultiHeadAttention against torch.nn.MultiheadAttention and against plain float64 math."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from multihead import MultiHeadAttention
from oracle import attention64


def torch_pair(e=16, h=4, kdim=None, vdim=None, bias=True, dropout=0.0):
    ref = nn.MultiheadAttention(
        e, h, bias=bias, kdim=kdim, vdim=vdim, batch_first=True, dropout=dropout
    ).double()
    if bias:  # torch initializes biases to zero; make them matter
        with torch.no_grad():
            ref.in_proj_bias.normal_()
            ref.out_proj.bias.normal_()
    return ref, MultiHeadAttention.from_torch(ref)


MASKS = ["none", "attn_bool", "attn_float", "padding", "padding+attn", "causal_as_mask"]


def masks_for(kind, b, nq, nk):
    """(ours: dict of kwargs, torch: dict of kwargs) with the same meaning."""
    g = torch.Generator().manual_seed(3)
    if kind == "none":
        return {}, {}
    if kind == "attn_bool":
        m = torch.rand(nq, nk, generator=g) > 0.3
        m[:, 0] = True
        return {"mask": m}, {"attn_mask": ~m}
    if kind == "attn_float":
        m = torch.randn(nq, nk, generator=g, dtype=torch.float64)
        return {"mask": m}, {"attn_mask": m}
    if kind == "padding":
        kpm = torch.ones(b, nk, dtype=torch.bool)
        kpm[0, nk // 2 :] = False
        return {"key_padding_mask": kpm}, {"key_padding_mask": ~kpm}
    if kind == "padding+attn":
        kpm = torch.ones(b, nk, dtype=torch.bool)
        kpm[-1, -1] = False
        m = torch.rand(nq, nk, generator=g) > 0.3
        m[:, 0] = True
        return {"mask": m, "key_padding_mask": kpm}, {"attn_mask": ~m, "key_padding_mask": ~kpm}
    if kind == "causal_as_mask":
        m = torch.ones(nq, nk, dtype=torch.bool).tril()
        return {"causal": True}, {"attn_mask": ~m}
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", MASKS)
@pytest.mark.parametrize("kv_dims", [(None, None), (12, 20)])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("train", [False, True])
def test_matches_torch_multihead_attention(kind, kv_dims, bias, train):
    kdim, vdim = kv_dims
    ref, ours = torch_pair(kdim=kdim, vdim=vdim, bias=bias)
    ref.train(train)
    ours.train(train)
    b, n = 3, 6
    x = torch.randn(b, n, 16, dtype=torch.float64)
    if kdim is None:
        q = k = v = x
    else:
        q = x
        k = torch.randn(b, n, kdim, dtype=torch.float64)
        v = torch.randn(b, n, vdim, dtype=torch.float64)
    ours_kw, ref_kw = masks_for(kind, b, n, n)
    want, want_w = ref(q, k, v, average_attn_weights=False, **ref_kw)
    got, got_w = ours(q, k, v, need_weights=True, **ours_kw)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(got_w, want_w)

    got_fast, none = ours(q, k, v, **ours_kw)  # need_weights=False: the fused path
    assert none is None
    torch.testing.assert_close(got_fast, want)

    grad = torch.randn_like(want)
    ref_grads = torch.autograd.grad((want * grad).sum(), list(ref.parameters()))
    ours_grads = torch.autograd.grad((got_fast * grad).sum(), list(ours.parameters()))
    ref_named = dict(zip([n for n, _ in ref.named_parameters()], ref_grads, strict=True))
    ours_named = dict(zip([n for n, _ in ours.named_parameters()], ours_grads, strict=True))
    if "in_proj_weight" in ref_named:
        ref_q, ref_k, ref_v = ref_named["in_proj_weight"].chunk(3)
    else:
        ref_q, ref_k, ref_v = (ref_named[f"{p}_proj_weight"] for p in "qkv")
    torch.testing.assert_close(ours_named["q_proj.weight"], ref_q)
    torch.testing.assert_close(ours_named["k_proj.weight"], ref_k)
    torch.testing.assert_close(ours_named["v_proj.weight"], ref_v)
    torch.testing.assert_close(ours_named["out_proj.weight"], ref_named["out_proj.weight"])
    if bias:
        torch.testing.assert_close(
            torch.cat([ours_named[f"{p}_proj.bias"] for p in "qkv"]), ref_named["in_proj_bias"]
        )


def test_fully_padded_row_is_zero_where_torch_gives_nan():
    ref, ours = torch_pair()
    x = torch.randn(2, 4, 16, dtype=torch.float64)
    mask = torch.ones(4, 4, dtype=torch.bool)
    mask[1] = False
    want, _ = ref(x, x, x, attn_mask=~mask)
    assert torch.isnan(want[:, 1]).all()  # the peer's behaviour we improve on
    got, w = ours(x, mask=mask, need_weights=True)
    assert torch.isfinite(got).all()
    assert torch.equal(w[:, :, 1], torch.zeros_like(w[:, :, 1]))
    # the row's attention output is zero, so the module returns the output projection's bias
    torch.testing.assert_close(got[:, 1], ours.out_proj.bias.expand(2, 16))
    torch.testing.assert_close(got[:, [0, 2, 3]], want[:, [0, 2, 3]])


def test_to_torch_round_trip():
    ours = MultiHeadAttention(16, 4, kdim=8, vdim=12).double()
    ref = ours.to_torch()
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    k = torch.randn(2, 3, 8, dtype=torch.float64)
    v = torch.randn(2, 3, 12, dtype=torch.float64)
    torch.testing.assert_close(ours(x, k, v)[0], ref(x, k, v)[0])


@pytest.mark.parametrize(
    "kwargs, problem",
    [
        ({"num_kv_heads": 2}, "num_kv_heads"),
        ({"head_dim": 3}, "head_dim"),
        ({"v_head_dim": 2}, "v_head_dim"),
    ],
)
def test_to_torch_refuses_what_torch_cannot_represent(kwargs, problem):
    with pytest.raises(ValueError, match=problem):
        MultiHeadAttention(16, 4, **kwargs).to_torch()


@pytest.mark.parametrize("option", ["add_bias_kv", "add_zero_attn"])
def test_from_torch_refuses_options_we_do_not_carry(option):
    with pytest.raises(ValueError, match=option):
        MultiHeadAttention.from_torch(nn.MultiheadAttention(16, 4, **{option: True}))


def manual_forward(mha, query, key, value, mask=None, causal=False):
    """Project with the module's own weights, attend with the float64 oracle, project out."""
    b, nq, _ = query.shape
    nk = key.shape[1]
    h, hkv, dk, dv = mha.num_heads, mha.num_kv_heads, mha.head_dim, mha.v_head_dim
    q = mha.q_proj(query).view(b, nq, h, dk).transpose(1, 2)
    k = mha.k_proj(key).view(b, nk, hkv, dk).transpose(1, 2)
    v = mha.v_proj(value).view(b, nk, hkv, dv).transpose(1, 2)
    out, w = attention64(q, k, v, mask, causal=causal, cosine=mha.score == "cosine")
    return mha.out_proj(out.transpose(1, 2).reshape(b, nq, h * dv)), w


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_kv_heads": 2},
        {"num_kv_heads": 1},
        {"head_dim": 5, "v_head_dim": 3},
        {"kdim": 7, "vdim": 9, "head_dim": 6},
        {"score": "cosine"},
    ],
    ids=["gqa", "mqa", "dk_ne_dv", "kdim_vdim", "cosine"],
)
@pytest.mark.parametrize("causal", [False, True])
def test_options_against_manual_math(kwargs, causal):
    mha = MultiHeadAttention(16, 4, **kwargs).double()
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    k = torch.randn(2, 7, mha.kdim, dtype=torch.float64)
    v = torch.randn(2, 7, mha.vdim, dtype=torch.float64)
    kpm = torch.ones(2, 7, dtype=torch.bool)
    kpm[1, 5:] = False
    want, want_w = manual_forward(mha, x, k, v, kpm[:, None, None, :], causal=causal)
    got, got_w = mha(x, k, v, key_padding_mask=kpm, causal=causal, need_weights=True)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(got_w, want_w)


def test_fused_self_attention_equals_separate_projections():
    mha = MultiHeadAttention(16, 4, num_kv_heads=2).double()
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    fused, _ = mha(x)
    separate, _ = mha(x, x.clone(), x.clone())
    torch.testing.assert_close(fused, separate)


def test_cross_attention_lengths_differ():
    mha = MultiHeadAttention(16, 2)
    out, w = mha(torch.randn(2, 3, 16), torch.randn(2, 9, 16), need_weights=True)
    assert out.shape == (2, 3, 16) and w.shape == (2, 2, 3, 9)


def test_three_d_mask_is_per_batch():
    mha = MultiHeadAttention(8, 2).double()
    x = torch.randn(2, 4, 8, dtype=torch.float64)
    m = torch.rand(2, 4, 4) > 0.3
    m[..., 0] = True
    a, _ = mha(x, mask=m)
    b, _ = mha(x, mask=m[:, None])
    torch.testing.assert_close(a, b)


def test_causality_through_the_module_by_gradients():
    mha = MultiHeadAttention(8, 2).double()
    x = torch.randn(1, 6, 8, dtype=torch.float64, requires_grad=True)
    out, _ = mha(x, causal=True)
    for t in range(6):
        (g,) = torch.autograd.grad(out[0, t].sum(), x, retain_graph=True)
        assert torch.all(g[0, t + 1 :] == 0)
        assert torch.any(g[0, : t + 1] != 0)


def test_dropout_only_in_training():
    mha = MultiHeadAttention(8, 2, dropout=0.5)
    x = torch.randn(2, 6, 8)
    mha.eval()
    a, _ = mha(x)
    b, _ = mha(x)
    assert torch.equal(a, b)
    mha.train()
    c, _ = mha(x)
    assert not torch.allclose(a, c)


def test_why_backend_is_readable():
    mha = MultiHeadAttention(8, 2)
    x = torch.randn(1, 3, 8)
    assert mha.why_backend(x) == "sdpa"
    assert "need_weights" in mha.why_backend(x, need_weights=True)


def test_projection_hooks_run_on_the_training_path():
    mha = MultiHeadAttention(8, 2).train()
    seen = []
    mha.q_proj.register_forward_hook(lambda module, args, out: seen.append(out.shape))
    mha(torch.randn(2, 3, 8))
    assert seen == [torch.Size([2, 3, 8])]


# --- checks at the module's boundary (found in review of the one-route forward) -----------


def test_flags_are_type_checked_at_the_module_boundary():
    mha = MultiHeadAttention(16, 4)
    x = torch.randn(2, 3, 16)
    with pytest.raises(TypeError, match="causal must be a bool"):
        mha(x, causal="no")
    with pytest.raises(TypeError, match="need_weights must be a bool"):
        mha(x, need_weights="no")


def test_key_padding_mask_on_another_device_is_refused_before_the_cache_changes():
    from multihead.cache import KVCache

    mha = MultiHeadAttention(16, 4, device="meta")
    cache = KVCache()
    x = torch.randn(1, 2, 16, device="meta")
    mha(x, causal=True, cache=cache)
    with pytest.raises(ValueError, match="key_padding_mask must be on the query's device"):
        mha(
            x[:, :1],
            causal=True,
            cache=cache,
            key_padding_mask=torch.ones(1, 3, dtype=torch.bool),
        )
    assert cache.length == 2


def test_a_quantized_module_takes_masks():
    from multihead.quantize import quantize

    mha = MultiHeadAttention(64, 4).eval()
    x = torch.randn(2, 10, 64)
    mask = torch.ones(10, 10, dtype=torch.bool).tril()
    for weights in (None, "int8"):
        q = quantize(mha) if weights is None else quantize(mha, weights=weights)
        out = q(x, mask=mask).output
        want = mha(x, mask=mask).output
        assert torch.isfinite(out).all()
        assert (out - want).norm() / want.norm() < 0.1


def test_a_named_backend_that_cannot_run_a_cached_step_leaves_the_cache_unchanged():
    from multihead.cache import KVCache

    mha = MultiHeadAttention(16, 4, backend="sdpa").eval()
    cache = KVCache()
    mha(torch.randn(1, 2, 16), causal=True, cache=cache)
    with pytest.raises(ValueError, match="sdpa"):
        mha(torch.randn(1, 1, 16), causal=True, cache=cache, need_weights=True)
    assert cache.length == 2 and cache.num_stored == 2
