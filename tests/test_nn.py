"""multihead.nn.MultiheadAttention against torch.nn.MultiheadAttention, the reference it copies.

Every comparison builds PyTorch's module and ours with one ``state_dict`` and checks outputs,
weights and the gradients of inputs and parameters. The only expected difference is a query row
with no key left: PyTorch gives NaN, ours zeros.
"""

from __future__ import annotations

import copy
import io
import pickle
import warnings

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from multihead.nn import MultiheadAttention

E, H, B, L, S = 16, 4, 3, 5, 7


def pair(**kwargs: object) -> tuple[nn.MultiheadAttention, MultiheadAttention]:
    ref = nn.MultiheadAttention(E, H, **kwargs)  # type: ignore[arg-type]
    ours = MultiheadAttention(E, H, **kwargs)  # type: ignore[arg-type]
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def run_both(
    ref: nn.Module, ours: nn.Module, inputs: tuple[torch.Tensor, ...], **kwargs: object
) -> None:
    """Call both modules on copies of ``inputs`` (same seed) and compare everything that comes
    out: outputs, weights, and gradients of inputs and parameters."""
    copies = []
    for module in (ref, ours):
        leaves = {id(t): t.detach().clone().requires_grad_() for t in inputs}
        args = [leaves[id(t)] for t in inputs]  # keeps `query is key` where the caller had it
        torch.manual_seed(7)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PyTorch's deprecation of mixed mask dtypes
            out, weights = module(*args, **kwargs)
        loss = out.square().sum() + (0.0 if weights is None else (weights * 3).sin().sum())
        loss.backward()
        copies.append((out, weights, [t.grad for t in leaves.values()]))
    (o1, w1, g1), (o2, w2, g2) = copies
    torch.testing.assert_close(o2, o1)
    # Same memory layout: a dropout applied to the output then draws the same mask.
    assert o2.stride() == o1.stride()
    if w1 is None:
        assert w2 is None
    else:
        torch.testing.assert_close(w2, w1)
    for a, b in zip(g2, g1, strict=True):
        torch.testing.assert_close(a, b)
    for (n1, p1), (n2, p2) in zip(ref.named_parameters(), ours.named_parameters(), strict=True):
        assert n1 == n2
        torch.testing.assert_close(p2.grad, p1.grad, msg=lambda m, n=n1: f"grad of {n}: {m}")


def masks(kind: str, nq: int, nk: int) -> dict[str, object]:
    """PyTorch-convention masks (bool True = masked out) of each supported kind; none of them
    leaves a row without keys."""
    g = torch.Generator().manual_seed(3)
    rand_bool = torch.rand(nq, nk, generator=g) > 0.6
    rand_bool[:, 0] = False
    kpm = torch.zeros(B, nk, dtype=torch.bool)
    kpm[1, nk - 2 :] = True
    causal = torch.ones(nq, nk, dtype=torch.bool).triu(1)
    three_d = torch.rand(B * H, nq, nk, generator=g) > 0.5
    three_d[..., 1] = False
    return {
        "none": {},
        "bool2d": {"attn_mask": rand_bool},
        "float2d": {"attn_mask": torch.randn(nq, nk, generator=g)},
        "bool3d": {"attn_mask": three_d},
        "float3d": {"attn_mask": torch.randn(B * H, nq, nk, generator=g)},
        "kpm": {"key_padding_mask": kpm},
        "float_kpm": {"key_padding_mask": torch.randn(B, nk, generator=g)},
        "both": {"attn_mask": rand_bool, "key_padding_mask": kpm},
        "mixed": {"attn_mask": torch.randn(nq, nk, generator=g), "key_padding_mask": kpm},
        "causal_hint": {"attn_mask": causal, "is_causal": True},
        # The hint is trusted: without padding or weights PyTorch ignores the mask's values.
        "wrong_hint": {"attn_mask": rand_bool, "is_causal": True},
        "hint_and_kpm": {"attn_mask": causal, "key_padding_mask": kpm, "is_causal": True},
    }[kind]


KINDS = [
    "none",
    "bool2d",
    "float2d",
    "bool3d",
    "float3d",
    "kpm",
    "float_kpm",
    "both",
    "mixed",
    "causal_hint",
    "wrong_hint",
    "hint_and_kpm",
]
WEIGHTS = [(True, True), (True, False), (False, True)]  # (need_weights, average_attn_weights)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("need_weights", "average"), WEIGHTS)
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("call", ["self", "cross"])
def test_matches_torch_on_every_mask_kind(
    kind: str, need_weights: bool, average: bool, batch_first: bool, call: str
) -> None:
    ref, ours = pair(batch_first=batch_first)
    nk = L if call == "self" else S
    q = torch.randn(B, L, E) if batch_first else torch.randn(L, B, E)
    kv = q if call == "self" else (torch.randn(B, S, E) if batch_first else torch.randn(S, B, E))
    run_both(
        ref,
        ours,
        (q, kv, kv),
        need_weights=need_weights,
        average_attn_weights=average,
        **masks(kind, L, nk),
    )


CONFIGS = {
    "no_bias": {"bias": False},
    "bias_kv": {"add_bias_kv": True},
    "zero_attn": {"add_zero_attn": True},
    "bias_kv_zero_attn": {"add_bias_kv": True, "add_zero_attn": True},
    "kdim_vdim": {"kdim": 6, "vdim": 10},
}


@pytest.mark.parametrize("config", sorted(CONFIGS))
@pytest.mark.parametrize("kind", ["none", "both", "mixed", "float3d", "wrong_hint"])
@pytest.mark.parametrize(("need_weights", "average"), WEIGHTS[::2])
@pytest.mark.parametrize("batch_first", [False, True])
def test_matches_torch_with_constructor_options(
    config: str, kind: str, need_weights: bool, average: bool, batch_first: bool
) -> None:
    options = CONFIGS[config]
    ref, ours = pair(batch_first=batch_first, **options)
    kdim, vdim = int(options.get("kdim", E)), int(options.get("vdim", E))  # type: ignore[call-overload]

    def make(n: int, e: int) -> torch.Tensor:
        return torch.randn(B, n, e) if batch_first else torch.randn(n, B, e)

    run_both(
        ref,
        ours,
        (make(L, E), make(S, kdim), make(S, vdim)),
        need_weights=need_weights,
        average_attn_weights=average,
        **masks(kind, L, S),
    )


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("kind", ["none", "kpm", "bool3d", "causal_hint"])
@pytest.mark.parametrize("need_weights", [True, False])
def test_unbatched_input_matches_torch(batch_first: bool, kind: str, need_weights: bool) -> None:
    ref, ours = pair(batch_first=batch_first, add_zero_attn=True)
    given = masks(kind, L, L)
    if "key_padding_mask" in given:
        given["key_padding_mask"] = given["key_padding_mask"][1]  # type: ignore[index]
    if kind == "bool3d":
        given["attn_mask"] = given["attn_mask"][:H]  # type: ignore[index]
    x = torch.randn(L, E)
    run_both(ref, ours, (x, x, x), need_weights=need_weights, **given)


@pytest.mark.parametrize("need_weights", [True, False])
@pytest.mark.parametrize("kind", ["kpm", "bool3d", "float_kpm"])
def test_dropout_in_training_matches_torch_under_one_seed(need_weights: bool, kind: str) -> None:
    ref, ours = pair(dropout=0.4, batch_first=True)
    x = torch.randn(B, L, E)
    run_both(ref, ours, (x, x, x), need_weights=need_weights, **masks(kind, L, L))


@pytest.mark.parametrize("need_weights", [True, False])
@pytest.mark.parametrize("training", [True, False])
def test_rows_with_no_key_are_zero_where_torch_gives_nan(
    need_weights: bool, training: bool
) -> None:
    ref, ours = pair(batch_first=True)
    ref.train(training)
    ours.train(training)
    x = torch.randn(B, L, E)
    kpm = torch.zeros(B, L, dtype=torch.bool)
    kpm[0] = True  # batch 0: every key is padding
    attn = torch.zeros(L, L)
    attn[2] = -torch.inf  # query 2 of every batch: every key forbidden by a float mask
    kw = {"key_padding_mask": kpm, "attn_mask": attn, "need_weights": need_weights}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected, expected_w = ref(x, x, x, **kw)
        xo = x.clone().requires_grad_()
        out, weights = ours(xo, xo, xo, **kw)
    dead = torch.zeros(B, L, dtype=torch.bool)
    dead[0] = True
    dead[:, 2] = True
    # PyTorch returns NaN there when it materializes the weights; its SDPA path (need_weights
    # False, with grad) already returns zeros, as ours always does.
    torch_nan = torch.isnan(expected).any(-1)
    assert torch.equal(torch_nan, dead) if need_weights else not torch_nan.any()
    torch.testing.assert_close(out[~torch_nan], expected[~torch_nan])
    # A dead row attends to nothing: the output is the out-projection's bias alone.
    torch.testing.assert_close(out[dead], ours.out_proj.bias.expand_as(out[dead]))
    if need_weights:
        assert weights is not None and expected_w is not None
        assert (weights[dead] == 0).all()
        torch.testing.assert_close(weights[~dead], expected_w[~dead])
    out.sum().backward()
    assert xo.grad is not None and torch.isfinite(xo.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in ours.parameters() if p.grad is not None)


@pytest.mark.parametrize("need_weights", [True, False])
def test_gradcheck_float64_with_masks(need_weights: bool) -> None:
    mha = MultiheadAttention(8, 2, add_bias_kv=True, dtype=torch.float64)
    q = torch.randn(4, 2, 8, dtype=torch.float64, requires_grad=True)
    kv = torch.randn(6, 2, 8, dtype=torch.float64, requires_grad=True)
    kpm = torch.tensor([[False] * 6, [False] * 3 + [True] * 3])
    attn = torch.randn(4, 6, dtype=torch.float64)

    def f(q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        out, w = mha(q, kv, kv, key_padding_mask=kpm, attn_mask=attn, need_weights=need_weights)
        return out if w is None else out.sum() + w.square().sum()

    assert torch.autograd.gradcheck(f, (q, kv))


@pytest.mark.parametrize(
    "options",
    [{}, {"kdim": 6, "vdim": 10}, {"bias": False, "add_bias_kv": True, "add_zero_attn": True}],
)
def test_parameters_initialisation_and_state_dict_are_torchs(options: dict) -> None:
    torch.manual_seed(11)
    ref = nn.MultiheadAttention(E, H, **options)
    torch.manual_seed(11)
    ours = MultiheadAttention(E, H, **options)
    ref_sd, ours_sd = ref.state_dict(), ours.state_dict()
    assert list(ours_sd) == list(ref_sd)
    for name in ref_sd:  # same seed, same initial values: initialisation is PyTorch's
        assert torch.equal(ours_sd[name], ref_sd[name]), name
    for name in ("_qkv_same_embed_dim", "batch_first", "head_dim", "kdim", "vdim", "dropout"):
        assert getattr(ours, name) == getattr(ref, name), name
    # Both directions, strict.
    other = MultiheadAttention(E, H, **options)
    other.load_state_dict(ref.state_dict())
    back = nn.MultiheadAttention(E, H, **options)
    back.load_state_dict(other.state_dict())
    assert all(
        torch.equal(a, b) for a, b in zip(back.state_dict().values(), ref_sd.values(), strict=True)
    )


def test_dropout_given_positionally_and_extras_keyword_only() -> None:
    mha = MultiheadAttention(32, 4, 0.1)
    assert mha.dropout == 0.1
    with pytest.raises(TypeError):
        MultiheadAttention(32, 4, 0.1, True, False, False, None, None, True, None, None, 2)  # type: ignore[misc]


def grouped_reference(ours: MultiheadAttention) -> nn.MultiheadAttention:
    """A torch module with every key/value head copied out to its query heads."""
    g = ours.num_heads // ours.num_kv_heads
    d = ours.head_dim

    def widen(t: torch.Tensor) -> torch.Tensor:
        return t.unflatten(0, (ours.num_kv_heads, d)).repeat_interleave(g, dim=0).flatten(0, 1)

    ref = nn.MultiheadAttention(ours.embed_dim, ours.num_heads, kdim=ours.kdim, vdim=ours.vdim)
    e, kv = ours.embed_dim, ours.num_kv_heads * d
    assert ours.in_proj_bias is not None
    b_q, b_k, b_v = ours.in_proj_bias.detach().split([e, kv, kv])
    with torch.no_grad():
        ref.q_proj_weight.copy_(ours.q_proj_weight)
        ref.k_proj_weight.copy_(widen(ours.k_proj_weight))
        ref.v_proj_weight.copy_(widen(ours.v_proj_weight))
        ref.in_proj_bias.copy_(torch.cat([b_q, widen(b_k), widen(b_v)]))
        ref.out_proj.load_state_dict(ours.out_proj.state_dict())
    return ref


@pytest.mark.parametrize("need_weights", [True, False])
def test_grouped_query_heads_equal_torch_with_repeated_heads(need_weights: bool) -> None:
    ours = MultiheadAttention(E, H, kdim=6, vdim=6, num_kv_heads=2)
    ref = grouped_reference(ours)
    q, kv = torch.randn(L, B, E), torch.randn(S, B, 6)
    kpm = masks("kpm", L, S)["key_padding_mask"]
    out, w = ours(q, kv, kv, key_padding_mask=kpm, need_weights=need_weights)
    expected, expected_w = ref(q, kv, kv, key_padding_mask=kpm, need_weights=need_weights)
    torch.testing.assert_close(out, expected)
    if need_weights:
        torch.testing.assert_close(w, expected_w)


@pytest.mark.parametrize("backend", ["math", "chunked"])
def test_named_backend_gives_the_same_output(backend: str) -> None:
    ref, _ = pair(batch_first=True)
    ours = MultiheadAttention(E, H, batch_first=True, backend=backend)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(B, L, E)
    run_both(ref, ours, (x, x, x), need_weights=False, **masks("both", L, L))


BAD_CALLS = {
    "attn_mask int": ({"attn_mask": torch.zeros(L, L, dtype=torch.int64)}, TypeError, "attn_mask"),
    "kpm int": ({"key_padding_mask": torch.zeros(B, L, dtype=torch.int32)}, TypeError, "key_pad"),
    "attn_mask shape": ({"attn_mask": torch.zeros(L, L + 1)}, ValueError, "attn_mask"),
    "attn_mask 3d": ({"attn_mask": torch.zeros(B, L, L)}, ValueError, "attn_mask"),
    "attn_mask 4d": ({"attn_mask": torch.zeros(B, H, L, L)}, ValueError, "attn_mask"),
    "kpm length": ({"key_padding_mask": torch.zeros(B, L - 1).bool()}, ValueError, "key_padding"),
    "kpm batch": ({"key_padding_mask": torch.zeros(1, L).bool()}, ValueError, "key_padding_mask"),
    "hint alone": ({"is_causal": True}, ValueError, "attn_mask"),
}


@pytest.mark.parametrize("case", sorted(BAD_CALLS))
def test_bad_masks_raise_naming_the_argument(case: str) -> None:
    kwargs, error, name = BAD_CALLS[case]
    mha = MultiheadAttention(E, H)
    x = torch.randn(L, B, E)
    with pytest.raises(error, match=name):
        mha(x, x, x, **kwargs)


def test_bad_construction_and_inputs_raise_naming_the_argument() -> None:
    with pytest.raises(ValueError, match="embed_dim must be divisible by num_heads"):
        MultiheadAttention(10, 4)
    with pytest.raises(ValueError, match="num_heads"):
        MultiheadAttention(8, 0)
    with pytest.raises(ValueError, match="num_kv_heads"):
        MultiheadAttention(16, 4, num_kv_heads=3)
    with pytest.raises(ValueError, match="backend"):
        MultiheadAttention(16, 4, backend="nope")
    mha = MultiheadAttention(E, H, kdim=6, vdim=10)
    q = torch.randn(L, B, E)
    with pytest.raises(ValueError, match="key must have kdim=6"):
        mha(q, torch.randn(S, B, E), torch.randn(S, B, 10))
    with pytest.raises(ValueError, match="value must have vdim=10"):
        mha(q, torch.randn(S, B, 6), torch.randn(S, B, 6))
    with pytest.raises(ValueError, match="query must have embed_dim=16"):
        mha(torch.randn(L, B, 8), torch.randn(S, B, 6), torch.randn(S, B, 10))
    with pytest.raises(ValueError, match="key and value must agree"):
        mha(q, torch.randn(S, B, 6), torch.randn(S + 1, B, 10))
    with pytest.raises(ValueError, match="key must be 3-D"):
        mha(q, torch.randn(S, 6), torch.randn(S, B, 10))


def test_copy_pickle_and_trace() -> None:
    ref, ours = pair(batch_first=True, add_bias_kv=True)
    x = torch.randn(B, L, E)
    kpm = masks("kpm", L, L)["key_padding_mask"]
    expected = ref(x, x, x, key_padding_mask=kpm)
    clones = [copy.deepcopy(ours), pickle.loads(pickle.dumps(ours))]
    buffer = io.BytesIO()
    torch.save(ours.state_dict(), buffer)
    buffer.seek(0)
    loaded = MultiheadAttention(E, H, batch_first=True, add_bias_kv=True)
    loaded.load_state_dict(torch.load(buffer, weights_only=True))
    clones.append(loaded)
    for clone in clones:
        out, w = clone(x, x, x, key_padding_mask=kpm)
        torch.testing.assert_close(out, expected[0])
        torch.testing.assert_close(w, expected[1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(ours, (x, x, x), check_trace=False)
    y = torch.randn(B, L, E)
    torch.testing.assert_close(traced(y, y, y)[0], ref(y, y, y)[0])


def test_compile_fullgraph_matches_torch() -> None:
    ref, ours = pair(batch_first=True)
    compiled = torch.compile(ours, fullgraph=True, backend="aot_eager")
    x = torch.randn(B, L, E)
    calls = [{"key_padding_mask": masks("kpm", L, L)["key_padding_mask"]}, {"need_weights": False}]
    for kwargs in calls:
        out, w = compiled(x, x, x, **kwargs)
        expected, expected_w = ref(x, x, x, **kwargs)
        torch.testing.assert_close(out, expected)
        if expected_w is not None:
            torch.testing.assert_close(w, expected_w)


def test_export_matches_torch() -> None:
    ref, ours = pair(batch_first=True)
    x = torch.randn(B, L, E)
    kpm = masks("kpm", L, L)["key_padding_mask"]
    exported = torch.export.export(ours.eval(), (x, x, x), {"key_padding_mask": kpm})
    y = torch.randn(B, L, E)
    out, w = exported.module()(y, y, y, key_padding_mask=kpm)
    expected, expected_w = ref.eval()(y, y, y, key_padding_mask=kpm)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(w, expected_w)


@given(
    b=st.integers(1, 3),
    nq=st.integers(1, 6),
    nk=st.integers(1, 6),
    heads=st.sampled_from([1, 2, 4]),
    head_dim=st.integers(1, 4),
    batch_first=st.booleans(),
    need_weights=st.booleans(),
    padding=st.booleans(),
    data=st.data(),
)
def test_random_shapes_match_torch(
    b: int,
    nq: int,
    nk: int,
    heads: int,
    head_dim: int,
    batch_first: bool,
    need_weights: bool,
    padding: bool,
    data: st.DataObject,
) -> None:
    e = heads * head_dim
    ref = nn.MultiheadAttention(e, heads, batch_first=batch_first)
    ours = MultiheadAttention(e, heads, batch_first=batch_first)
    ours.load_state_dict(ref.state_dict())
    shape_q, shape_k = ((b, nq, e), (b, nk, e)) if batch_first else ((nq, b, e), (nk, b, e))
    kwargs: dict[str, object] = {"need_weights": need_weights}
    if padding:  # at least the first key stays visible, so PyTorch has no NaN row
        lengths = data.draw(st.lists(st.integers(1, nk), min_size=b, max_size=b))
        kwargs["key_padding_mask"] = torch.arange(nk)[None, :] >= torch.tensor(lengths)[:, None]
    run_both(
        ref, ours, (torch.randn(shape_q), torch.randn(shape_k), torch.randn(shape_k)), **kwargs
    )
