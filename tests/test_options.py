"""The keyword options of an attention call, declared once (AttentionOptions) and taken by every
entry point: each one either runs an option (checked against the float64 oracle) or refuses it
by name."""

from __future__ import annotations

import inspect

import pytest
import torch

from multihead.functional import (
    AttentionOptions,
    KernelOptions,
    attention,
    attention_with_lse,
    make_spec,
)
from multihead.functional._prepare import build_spec
from multihead.functional.chunked import chunked_attention
from multihead.functional.linear import linear_attention
from multihead.functional.local import local_attention
from multihead.functional.lowrank import lowrank_attention
from multihead.modules.attention import ForwardOptions, MultiHeadAttention
from multihead.positional import alibi_slopes
from oracle import attention64

KERNELS = {
    "chunked": chunked_attention,
    "linear": linear_attention,
    "local": local_attention,
    "lowrank": lowrank_attention,
}


def _qkv(seed: int = 0, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(2, 4, 6, 8, generator=g, dtype=dtype)
    k = torch.randn(2, 2, 9, 8, generator=g, dtype=dtype)
    v = torch.randn(2, 2, 9, 5, generator=g, dtype=dtype)
    return q, k, v


def test_options_are_attentions_keyword_parameters_with_its_defaults():
    """The two explicit signatures (the public attention, the builder) and the TypedDict agree."""
    public = inspect.signature(attention).parameters
    builder = inspect.signature(build_spec).parameters
    names = set(AttentionOptions.__annotations__)
    assert names == set(public) - {"query", "key", "value", "mask", "backend"}
    assert names == set(builder) - {"query", "key", "value", "mask"}
    for name in [*names, "mask"]:
        assert builder[name].default == public[name].default, name
    assert set(KernelOptions.__annotations__) == names | {"mask"}


def test_forward_options_are_the_modules_forward_parameters_in_order():
    """why_backend fills a call from ForwardOptions in forward's order: the two must agree."""
    params = list(inspect.signature(MultiHeadAttention.forward).parameters)
    assert params[:4] == ["self", "query", "key", "value"]
    assert params[4:] == list(ForwardOptions.__annotations__)


@pytest.mark.parametrize(
    "call",
    [
        lambda q, k, v, **kw: make_spec(q, k, v, **kw),
        lambda q, k, v, **kw: attention_with_lse(q, k, v, **kw),
        *(lambda q, k, v, f=f, **kw: f(q, k, v, window=2, **kw) for f in KERNELS.values()),
    ],
)
def test_an_unknown_option_is_a_type_error_naming_it(call):
    q, k, v = _qkv()
    # Named in the user's words, with what is accepted, not as an internal function's TypeError.
    with pytest.raises(
        TypeError, match=r"unexpected keyword argument\(s\) \['causl'\]; the attention options"
    ) as info:
        call(q, k, v, causl=True)
    assert "build_spec" not in str(info.value)


@pytest.mark.parametrize(
    ("kernel", "options", "named"),
    [
        ("chunked", {"need_weights": True}, "need_weights"),
        ("chunked", {"dropout_p": 0.1}, "dropout_p"),
        ("linear", {"window": 2}, "window"),
        ("linear", {"need_weights": True}, "need_weights"),
        ("linear", {"dropout_p": 0.1}, "dropout_p"),
        ("linear", {"alibi_slopes": alibi_slopes(4)}, "alibi_slopes"),
        ("linear", {"mask": torch.zeros(6, 9)}, "mask"),
        ("linear", {"scale": 0.5}, "scale"),
        ("lowrank", {"causal": True}, "causal"),
        ("lowrank", {"window": 2}, "window"),
        ("lowrank", {"need_weights": True}, "need_weights"),
        ("local", {"window": 2, "need_weights": True}, "need_weights"),
        ("local", {"window": 2, "alibi_slopes": alibi_slopes(4)}, "alibi_slopes"),
    ],
)
def test_a_kernel_refuses_an_option_it_cannot_run_by_name(kernel, options, named):
    q, k, v = _qkv()
    with pytest.raises(ValueError, match=named):
        KERNELS[kernel](q, k, v, **options)


@pytest.mark.parametrize(
    ("kernel", "options"),
    [
        ("chunked", {"causal": True, "score": "cosine"}),
        ("chunked", {"window": (3, 1), "scale": 0.3}),
        ("local", {"window": 2, "causal": True, "scale": 0.7}),
        ("local", {"window": 3, "score": "cosine"}),
    ],
)
def test_exact_kernels_run_attentions_options_like_the_oracle(kernel, options):
    q, k, v = _qkv(1)
    mask = torch.rand(2, 1, 6, 9, generator=torch.Generator().manual_seed(2)) > 0.3
    got = KERNELS[kernel](q, k, v, mask=mask, **options)
    cosine = options.pop("score", "dot") == "cosine"
    want, _ = attention64(q, k, v, mask, cosine=cosine, **options)
    torch.testing.assert_close(got, want, atol=1e-10, rtol=0)


def test_attention_with_lse_has_no_weights_and_takes_options_by_keyword():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="need_weights"):
        attention_with_lse(q, k, v, need_weights=True)
    with pytest.raises(TypeError, match="positional"):
        attention_with_lse(q, k, v, None, True)  # type: ignore[misc]
    out, _ = attention_with_lse(q, k, v, None, backend="chunked", causal=True, scale=0.5)
    want, _ = attention64(q, k, v, causal=True, scale=0.5)
    torch.testing.assert_close(out, want, atol=1e-10, rtol=0)


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"causal": 1}, TypeError, "causal must be a bool"),
        ({"need_weights": "yes"}, TypeError, "need_weights must be a bool"),
        ({"scale": "big"}, TypeError, "scale must be a real number"),
        ({"dropout_p": 1.5}, ValueError, "dropout_p must be in"),
        ({"score": "l2"}, ValueError, "score must be one of"),
        ({"alibi_slopes": torch.ones(3)}, ValueError, r"alibi_slopes must have shape \(H,\)"),
    ],
)
def test_make_spec_checks_each_option_it_is_given(options, error, message):
    q, k, v = _qkv()
    with pytest.raises(error, match=message):
        make_spec(q, k, v, **options)


def test_forwarding_entry_points_name_themselves_in_keyword_errors():
    from multihead import MultiHeadAttention
    from multihead.decoding import greedy_decode, sample
    from multihead.modules.models import DecoderLM, Seq2SeqTransformer, TransformerConfig

    config = TransformerConfig(vocab_size=9, d_model=8, num_heads=2, d_ff=16)
    src = torch.tensor([[3, 4, 5]])
    seq2seq, lm = Seq2SeqTransformer(config), DecoderLM(config)
    with pytest.raises(TypeError, match=r"greedy_decode\(\) got .*\['length_penalty'\]"):
        greedy_decode(seq2seq, src, bos_id=1, eos_id=2, max_len=3, length_penalty=7.0)
    with pytest.raises(TypeError, match=r"greedy_decode\(\) missing .*\['max_len'\]"):
        greedy_decode(seq2seq, src, bos_id=1, eos_id=2)
    with pytest.raises(TypeError, match=r"sample\(\) got .*\['temprature'\]"):
        sample(lm, src, max_new_tokens=2, temprature=0.5)
    with pytest.raises(TypeError, match=r"generate\(\) got .*\['pad_id'\]"):
        lm.generate(src, 2, pad_id=3)
    with pytest.raises(TypeError, match=r"why_backend\(\) got .*\['causl'\]"):
        MultiHeadAttention(8, 2).why_backend(torch.randn(1, 3, 8), causl=True)
