"""Key/value caches and incremental decoding against full (uncached) forward passes.

Every cached result is compared with an independent reference: ``torch.cat`` of everything
appended, an uncached forward pass over the whole prefix, or plain float64 attention.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from multihead import MultiHeadAttention
from multihead.cache import DecoderCache, KVCache, StaticKVCache
from multihead.decoding import beam_search, greedy_decode, sample
from multihead.modules.feedforward import FeedForward
from multihead.modules.models import (
    DecoderLM,
    EncoderClassifier,
    Seq2SeqTransformer,
    TransformerConfig,
)
from oracle import attention64

BOS, EOS = 1, 2


def kv(b=2, hkv=2, n=1, d=4, dv=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, hkv, n, d, generator=g), torch.randn(b, hkv, n, dv or d, generator=g)


# ------------------------------------------------------------------------------ KVCache


@pytest.mark.parametrize("max_len", [None, 40])
def test_update_returns_everything_appended(max_len: int | None) -> None:
    cache = KVCache(max_len=max_len)
    keys, values = [], []
    for i, n in enumerate([5, 1, 1, 3, 1, 12, 1, 16]):
        k, v = kv(n=n, dv=3, seed=i)
        keys.append(k)
        values.append(v)
        got_k, got_v = cache.update(k, v)
        assert torch.equal(got_k, torch.cat(keys, 2)) and torch.equal(got_v, torch.cat(values, 2))
        assert cache.length == cache.num_stored == got_k.shape[2]
    assert torch.equal(cache.key, torch.cat(keys, 2))


def test_growing_cache_doubles_and_preallocated_cache_never_moves() -> None:
    growing, fixed = KVCache(), KVCache(max_len=300)
    capacities, pointers = set(), set()
    for i in range(300):
        k, v = kv(seed=i)
        growing.update(k, v)
        fixed.update(k, v)
        capacities.add(growing.capacity)
        pointers.add(fixed.key.data_ptr())
    assert sorted(capacities) == [16, 32, 64, 128, 256, 512]  # log2 reallocations
    assert len(pointers) == 1 and fixed.capacity == 300


def test_preallocated_cache_refuses_to_overflow() -> None:
    cache = KVCache(max_len=4)
    cache.update(*kv(n=3))
    with pytest.raises(ValueError, match=r"max_len=4.*holds 3.*2 more"):
        cache.update(*kv(n=2))
    cache.update(*kv(n=1))  # exactly full is fine
    assert cache.length == 4


def test_cache_rejects_mismatched_input() -> None:
    cache = KVCache()
    cache.update(*kv(b=2))
    with pytest.raises(ValueError, match=r"batch size 3.*holds 2 rows.*reorder"):
        cache.update(*kv(b=3))
    with pytest.raises(ValueError, match=r"do not match the cache's \(B, Hkv, Dk\)"):
        cache.update(*kv(hkv=1))
    with pytest.raises(ValueError, match="float64"):
        cache.update(*(t.double() for t in kv()))
    with pytest.raises(TypeError, match=r"key must be a torch\.Tensor"):
        cache.update(None, kv()[1])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="share"):
        cache.update(kv(n=2)[0], kv(n=1)[1])
    with pytest.raises(ValueError, match="cannot be combined"):
        KVCache(max_len=8, window=2)
    with pytest.raises(ValueError, match="indices must select rows in \\[0, 2\\)"):
        cache.reorder(torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="1-D integer"):
        cache.reorder(torch.tensor([0.0]))
    cache.reset()  # a fresh start may change the shape
    assert cache.update(*kv(b=3, hkv=1))[0].shape == (3, 1, 1, 4)


def test_reorder_selects_and_repeats_rows() -> None:
    for cache in (KVCache(), KVCache(max_len=10), KVCache(window=3)):
        k1, v1 = kv(b=3, n=4, seed=1)
        cache.update(k1, v1)
        rows = torch.tensor([2, 0, 0, 1])
        cache.reorder(rows)
        k2, v2 = kv(b=4, n=1, seed=2)
        got_k, got_v = cache.update(k2, v2)
        want_k = torch.cat([k1[rows], k2], 2)[:, :, -got_k.shape[2] :]
        want_v = torch.cat([v1[rows], v2], 2)[:, :, -got_v.shape[2] :]
        assert torch.equal(got_k, want_k) and torch.equal(got_v, want_v)
        assert cache.batch_size == 4


@pytest.mark.parametrize("window", [0, 1, 3, 8])
def test_window_cache_keeps_the_last_keys_in_bounded_memory(window: int) -> None:
    cache = KVCache(window=window)
    keys = []
    g = torch.Generator().manual_seed(0)
    for i in range(60):
        n = int(torch.randint(1, 4, (1,), generator=g))
        k, v = kv(n=n, seed=i)
        keys.append(k)
        got_k, _ = cache.update(k, v)
        everything = torch.cat(keys, 2)
        assert torch.equal(got_k, everything[:, :, -(window + n) :])
        assert cache.length == everything.shape[2]
        assert cache.capacity <= 2 * window + 3  # O(window), whatever the length


def test_cache_keeps_gradients_when_keys_need_them() -> None:
    cache = KVCache(max_len=8)
    k1, v1 = (t.requires_grad_() for t in kv(n=2))
    k2, v2 = (t.requires_grad_() for t in kv(n=1, seed=1))
    cache.update(k1, v1)
    all_k, all_v = cache.update(k2, v2)
    (all_k.sum() + 2 * all_v.sum()).backward()
    assert torch.equal(k1.grad, torch.ones_like(k1)) and torch.equal(
        v2.grad, 2 * torch.ones_like(v2)
    )


def test_static_and_decoder_caches() -> None:
    static = StaticKVCache()
    k, v = kv(b=2, n=5)
    static.set(k, v)
    static.reorder(torch.tensor([1, 1, 0]))
    assert torch.equal(static.key, k[[1, 1, 0]]) and static.batch_size == 3
    static.reset()
    assert not static.is_set

    cache = DecoderCache(3, max_len=4, cross=True)
    for layer in cache.self_attn:
        layer.update(*kv(b=2, n=2))
    for layer in cache.cross_attn:
        layer.set(*kv(b=2, n=5))
    cache.advance(2)
    cache.reorder(torch.tensor([1, 0, 1]))
    assert {c.batch_size for c in cache.self_attn + cache.cross_attn} == {3}
    with pytest.raises(ValueError, match="max_len=4 and holds 2 tokens; it cannot take 3"):
        cache.check_room(3)
    cache.reset()
    assert cache.length == 0 and all(c.num_stored == 0 for c in cache.self_attn)


@pytest.mark.parametrize("num_layers", [0, 2])
def test_decoder_cache_checks_its_sizes_once_for_every_layer(num_layers: int) -> None:
    cache = DecoderCache(num_layers, window=3)
    assert cache.window == 3 and all(c.window == 3 and c.max_len is None for c in cache.self_attn)
    # Checked even when there is no layer to hand the sizes to.
    with pytest.raises(ValueError, match="max_len=4 and window=2 cannot be combined"):
        DecoderCache(num_layers, max_len=4, window=2)
    with pytest.raises(ValueError, match="max_len must be >= 1, got 0"):
        DecoderCache(num_layers, max_len=0)
    with pytest.raises(TypeError, match="unexpected keyword argument 'max_length'"):
        DecoderCache(num_layers, max_length=4)  # type: ignore[call-arg]


# ------------------------------------------------------------------------------ attention


@pytest.mark.parametrize("position", ["none", "rotary", "alibi"])
@pytest.mark.parametrize("num_kv_heads", [4, 2, 1])
def test_cached_self_attention_equals_the_full_causal_pass(position: str, num_kv_heads: int):
    options = {"rotary": position == "rotary", "alibi": position == "alibi"}
    mha = MultiHeadAttention(32, 4, num_kv_heads=num_kv_heads, **options).eval()
    x = torch.randn(2, 11, 32)
    full = mha(x, causal=True).output
    cache = KVCache()
    with torch.inference_mode():
        chunks = [mha(x[:, a:b], causal=True, cache=cache).output for a, b in _chunks(11)]
    torch.testing.assert_close(torch.cat(chunks, 1), full, atol=1e-5, rtol=0)


def _chunks(n: int) -> list[tuple[int, int]]:
    """A prompt of 4, single steps, a chunk of 3, single steps up to n."""
    bounds = [0, 4, 5, 6, 9, *range(10, n + 1)]
    return list(itertools.pairwise(bounds))


@pytest.mark.parametrize("window", [1, 3])
@pytest.mark.parametrize("rotary", [False, True])
def test_sliding_window_cache_equals_windowed_attention(window: int, rotary: bool) -> None:
    mha = MultiHeadAttention(16, 4, num_kv_heads=2, rotary=rotary).eval()
    x = torch.randn(2, 12, 16)
    full = mha(x, causal=True, window=(window, 0)).output
    cache = KVCache(window=window)
    with torch.no_grad():
        steps = [mha(x[:, a:b], causal=True, cache=cache).output for a, b in _chunks(12)]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=0)
    assert cache.capacity <= 2 * window + 4
    if not rotary:  # and against plain float64 attention
        b, n, _ = x.shape
        x64 = x.double()

        def proj(linear, heads):
            y = x64 @ linear.weight.double().T + linear.bias.double()
            return y.view(b, n, heads, -1).transpose(1, 2)

        q, k, v = proj(mha.q_proj, 4), proj(mha.k_proj, 2), proj(mha.v_proj, 2)
        out, _ = attention64(q, k, v, causal=True, window=(window, 0))
        out = out.transpose(1, 2).flatten(2) @ mha.out_proj.weight.double().T
        out = out + mha.out_proj.bias.double()
        torch.testing.assert_close(torch.cat(steps, 1).double(), out, atol=1e-5, rtol=0)


def test_cached_attention_with_padding_in_the_prefix() -> None:
    mha = MultiHeadAttention(16, 2, rotary=True).eval()
    x = torch.randn(3, 7, 16)
    padding = torch.ones(3, 7, dtype=torch.bool)
    padding[1, :2] = False  # left padding, as batched prompts have
    padding[2, 3] = False
    full = mha(x, key_padding_mask=padding, causal=True).output
    cache = KVCache(max_len=7)
    steps = [
        mha(x[:, a:b], key_padding_mask=padding[:, :b], causal=True, cache=cache).output
        for a, b in _chunks(7)
    ]
    real = padding[:, :, None]  # rows of padded queries are not compared
    torch.testing.assert_close(
        torch.cat(steps, 1).masked_fill(~real, 0), full.masked_fill(~real, 0), atol=1e-5, rtol=0
    )
    cache = KVCache()
    mha(x[:, :2], key_padding_mask=padding[:, :2], cache=cache)
    with pytest.raises(ValueError, match=r"covers every token seen: \(B, cache.length \+ Nq\)"):
        mha(x[:, 2:3], key_padding_mask=padding[:, 2:3], cache=cache)
    assert cache.length == 2  # a failed call leaves the cache as it was


def test_static_cache_projects_the_memory_once() -> None:
    mha = MultiHeadAttention(16, 4, num_kv_heads=2).eval()
    x, memory = torch.randn(2, 5, 16), torch.randn(2, 9, 16)
    padding = torch.tensor([[True] * 9, [True] * 6 + [False] * 3])
    full = mha(x, memory, key_padding_mask=padding).output
    calls = []
    mha.k_proj.register_forward_hook(lambda *args: calls.append(1))
    cache = StaticKVCache()
    steps = [
        mha(x[:, t : t + 1], memory, key_padding_mask=padding, cache=cache)[0] for t in range(5)
    ]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=0)
    assert len(calls) == 1
    with pytest.raises(ValueError, match="batch size 1 but the StaticKVCache holds 2"):
        mha(x[:1, :1], memory[:1], cache=cache)


def test_attention_cache_errors() -> None:
    mha = MultiHeadAttention(16, 2)
    x = torch.randn(2, 3, 16)
    with pytest.raises(ValueError, match="a KVCache caches self-attention"):
        mha(x, torch.randn(2, 4, 16), cache=KVCache())
    with pytest.raises(ValueError, match="positions needs rotary=True"):
        mha(x, positions=torch.arange(3))
    with pytest.raises(ValueError, match=r"StaticKVCache.*rotary"):
        MultiHeadAttention(16, 2, rotary=True)(x, x, cache=StaticKVCache())
    cache = KVCache()
    mha(x, cache=cache)
    with pytest.raises(ValueError, match="batch size 1"):
        mha(x[:1], cache=cache)


# ------------------------------------------------------------------------------ models


def lm_config(**overrides) -> TransformerConfig:
    fields: dict = dict(
        vocab_size=23,
        d_model=32,
        num_heads=4,
        d_ff=48,
        num_encoder_layers=2,
        num_decoder_layers=2,
        dropout=0.0,
        max_len=40,
    )
    fields.update(overrides)
    return TransformerConfig(**fields)


MODEL_VARIANTS = [
    {"positional": "sinusoidal"},
    {"positional": "learned", "num_kv_heads": 2, "norm_first": False},
    {"positional": "rope", "num_kv_heads": 1},
    {"positional": "alibi", "num_kv_heads": 2},
    {"positional": "none"},
    # LLaMA-like and GPT-2-like option sets
    {
        "positional": "rope",
        "num_kv_heads": 2,
        "norm": "rmsnorm",
        "norm_eps": 1e-6,
        "ffn": "gated",
        "activation": "silu",
        "bias": False,
        "embed_scale": False,
        "tie_embeddings": False,
    },
    {"positional": "learned", "activation": "gelu_tanh", "embed_scale": False},
]


@pytest.mark.parametrize("variant", MODEL_VARIANTS, ids=lambda v: "-".join(map(str, v.values())))
def test_decoder_lm_cached_logits_equal_the_full_pass_at_every_step(variant: dict) -> None:
    torch.manual_seed(0)
    lm = DecoderLM(lm_config(**variant)).eval()
    ids = torch.randint(0, 23, (3, 12))
    cache = lm.new_cache(max_len=12)
    with torch.inference_mode():
        for a, b in _chunks(12):
            step = lm(ids[:, a:b], cache=cache)  # (B, b - a, V)
            full = lm(ids[:, :b])  # an uncached pass over the whole prefix
            torch.testing.assert_close(step, full[:, a:b], atol=2e-5, rtol=0)
    assert cache.length == 12


@pytest.mark.parametrize(
    "variant", MODEL_VARIANTS[:5], ids=lambda v: "-".join(map(str, v.values()))
)
def test_seq2seq_cached_decoding_equals_the_full_pass(variant: dict) -> None:
    torch.manual_seed(0)
    model = Seq2SeqTransformer(lm_config(**variant)).eval()
    src = torch.randint(3, 23, (3, 8))
    src_mask = torch.ones(3, 8, dtype=torch.bool)
    src_mask[1, 5:] = False  # padding in the source
    src_mask[2, 2:] = False
    tgt = torch.randint(3, 23, (3, 9))
    with torch.inference_mode():
        memory = model.encode(src, src_mask)
        cache = model.new_cache()
        for a, b in _chunks(9):
            step = model.decode(tgt[:, a:b], memory, src_mask, cache=cache)
            full = model.decode(tgt[:, :b], memory, src_mask)
            torch.testing.assert_close(step, full[:, a:b], atol=2e-5, rtol=0)


@pytest.mark.parametrize("variant", [MODEL_VARIANTS[0], MODEL_VARIANTS[2], MODEL_VARIANTS[5]])
def test_generate_with_and_without_cache_gives_the_same_tokens(variant: dict) -> None:
    torch.manual_seed(0)
    lm = DecoderLM(lm_config(**variant))
    with torch.no_grad():
        lm.lm_head.weight.mul_(4.0)  # peaked distributions: ties in argmax become impossible
    prompt = torch.randint(3, 23, (2, 4))
    greedy = lm.generate(prompt, 20)
    assert greedy.shape == (2, 24) and torch.equal(greedy[:, :4], prompt)
    assert torch.equal(greedy, lm.generate(prompt, 20, use_cache=False))
    kwargs = dict(do_sample=True, temperature=0.8, top_k=10, top_p=0.9)
    drawn = lm.generate(prompt, 20, generator=torch.Generator().manual_seed(3), **kwargs)
    again = lm.generate(
        prompt, 20, generator=torch.Generator().manual_seed(3), use_cache=False, **kwargs
    )
    assert torch.equal(drawn, again)
    eos = int(greedy[0, 4])  # row 0 stops at once; row 1 runs until it emits the same token
    stopped = lm.generate(prompt, 20, eos_id=eos)
    assert int(stopped[0, 4]) == eos and bool((stopped[0, 5:] == lm.config.pad_id).all())
    hits = (greedy[1, 4:] == eos).nonzero()
    end = 4 + int(hits[0]) + 1 if len(hits) else 24
    assert torch.equal(stopped[1, :end], greedy[1, :end])
    assert torch.equal(stopped, lm.generate(prompt, 20, eos_id=eos, use_cache=False))
    assert torch.equal(sample(lm, prompt, max_new_tokens=3, top_k=1), greedy[:, :7])


@pytest.mark.parametrize("variant", [MODEL_VARIANTS[0], MODEL_VARIANTS[3]])
def test_greedy_and_beam_search_with_and_without_cache_agree(variant: dict) -> None:
    torch.manual_seed(1)
    model = Seq2SeqTransformer(lm_config(**variant, tie_embeddings=False))
    with torch.no_grad():
        model.lm_head.weight.mul_(5.0)
    src = torch.randint(3, 23, (3, 6))
    mask = torch.ones(3, 6, dtype=torch.bool)
    mask[0, 4:] = False
    for search, extra in ((greedy_decode, {}), (beam_search, {"beam_size": 3})):
        cached = search(model, src, mask, bos_id=BOS, eos_id=EOS, max_len=10, **extra)
        plain = search(
            model, src, mask, bos_id=BOS, eos_id=EOS, max_len=10, use_cache=False, **extra
        )
        assert torch.equal(cached, plain)


def test_model_cache_errors() -> None:
    lm = DecoderLM(lm_config())
    ids = torch.randint(0, 23, (2, 3))
    cache = lm.new_cache(max_len=4)
    lm(ids, cache=cache)
    with pytest.raises(ValueError, match="max_len=4 and holds 3 tokens; it cannot take 3 more"):
        lm(ids, cache=cache)
    with pytest.raises(ValueError, match="batch size 1 but the cache holds 2 rows"):
        lm(ids[:1, :1], cache=cache)
    with pytest.raises(TypeError, match="DecoderCache"):
        lm(ids, cache=KVCache())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="cache has 3 layers but the model has 2"):
        lm(ids, cache=DecoderCache(3))
    with pytest.raises(ValueError, match=r"padding_mask must be \(B, N\) = \(2, 4\)"):
        lm(ids[:, :1], torch.ones(2, 1, dtype=torch.bool), cache=cache)
    model = Seq2SeqTransformer(lm_config())
    memory = model.encode(ids)
    with pytest.raises(ValueError, match="cross-attention caches"):
        model.decode(ids, memory, cache=DecoderCache(2))
    with pytest.raises(ValueError, match="positions is not supported with positional='alibi'"):
        DecoderLM(lm_config(positional="alibi"))(ids, positions=torch.arange(3))


def test_rope_and_alibi_models_have_no_length_limit_while_decoding() -> None:
    lm = DecoderLM(lm_config(positional="rope", max_len=4)).eval()
    ids = torch.randint(0, 23, (1, 9))
    cache = lm.new_cache()
    with torch.no_grad():
        steps = torch.cat([lm(ids[:, t : t + 1], cache=cache) for t in range(9)], 1)
        torch.testing.assert_close(steps, lm(ids), atol=2e-5, rtol=0)


# ------------------------------------------------------------------------------ HF options


def test_gated_feed_forward_and_gelu_tanh_match_their_formulas() -> None:
    x = torch.randn(3, 5, 8, dtype=torch.float64)
    ff = FeedForward(8, 12, activation="silu", kind="gated", bias=False).double()
    gate, up, down = ff.gate.weight, ff.linear1.weight, ff.linear2.weight
    want = ((x @ gate.T) * torch.sigmoid(x @ gate.T) * (x @ up.T)) @ down.T
    torch.testing.assert_close(ff(x), want)
    assert ff.linear1.bias is None and ff.gate.bias is None
    ff = FeedForward(8, 12, activation="gelu_tanh").double()
    h = x @ ff.linear1.weight.T + ff.linear1.bias
    tanh_gelu = 0.5 * h * (1 + torch.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * h**3)))
    torch.testing.assert_close(ff(x), tanh_gelu @ ff.linear2.weight.T + ff.linear2.bias)


def test_embedding_options() -> None:
    config = lm_config(
        positional="learned",
        embed_scale=False,
        embedding_norm=True,
        type_vocab_size=2,
        norm_eps=1e-12,
        norm_first=False,
        num_classes=3,
    )
    model = EncoderClassifier(config).double()
    enc = model.encoder
    ids = torch.randint(0, 23, (2, 5))
    types = torch.tensor([[0, 0, 1, 1, 1], [0, 1, 1, 1, 1]])
    x = enc.embedding.weight[ids] + enc.positional.weight[:5] + enc.token_type.weight[types]
    want = F.layer_norm(x, (32,), enc.embedding_norm.weight, enc.embedding_norm.bias, 1e-12)
    torch.testing.assert_close(model.embed(ids, token_type_ids=types), want)
    no_types = model.embed(ids)  # type 0 by default
    torch.testing.assert_close(no_types, model.embed(ids, token_type_ids=torch.zeros_like(ids)))
    assert isinstance(enc.norm, torch.nn.Identity)  # post-norm: no final norm by default
    assert model(ids, token_type_ids=types).shape == (2, 3)
    with pytest.raises(ValueError, match="type_vocab_size is 0"):
        DecoderLM(lm_config()).decoder.embed(ids, token_type_ids=types)
    lm = DecoderLM(lm_config(embed_scale=True, positional="none"))
    torch.testing.assert_close(lm.embed(ids), lm.decoder.embedding.weight[ids] * math.sqrt(32))


def test_rmsnorm_final_norm_and_bias_free_state_dict_keys() -> None:
    config = lm_config(
        positional="rope", norm="rmsnorm", norm_eps=1e-6, ffn="gated", activation="silu",
        bias=False, final_norm=True, norm_first=False, tie_embeddings=False, num_kv_heads=2,
    )  # fmt: skip
    lm = DecoderLM(config)
    keys = {k for k in lm.state_dict() if not k.startswith("decoder.layers.1.")}
    layer = "decoder.layers.0."
    assert keys == {
        "decoder.embedding.weight",
        *(f"{layer}self_attn.{p}_proj.weight" for p in "qkv"),
        f"{layer}self_attn.out_proj.weight",
        *(f"{layer}feed_forward.{n}.weight" for n in ("linear1", "gate", "linear2")),
        f"{layer}norm1.weight",
        f"{layer}norm2.weight",
        "decoder.norm.weight",
        "lm_head.weight",
    }
    assert lm.state_dict()[f"{layer}self_attn.k_proj.weight"].shape == (16, 32)  # Hkv * Dk
    norm = lm.decoder.norm
    x = torch.randn(4, 32)
    want = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * norm.weight
    torch.testing.assert_close(norm(x), want)


@pytest.mark.parametrize(
    ("overrides", "error", "match"),
    [
        ({"norm": "batchnorm"}, ValueError, "norm"),
        ({"ffn": "moe"}, ValueError, "ffn"),
        ({"activation": "swish"}, ValueError, "activation"),
        ({"norm_eps": 0.0}, ValueError, "norm_eps"),
        ({"bias": 1}, TypeError, "bias"),
        ({"embed_scale": "no"}, TypeError, "embed_scale"),
        ({"final_norm": 0}, TypeError, "final_norm"),
        ({"type_vocab_size": -1}, ValueError, "type_vocab_size"),
        ({"rope_base": 1.0}, ValueError, "rope_base"),
        ({"positional": "xpos"}, ValueError, "positional"),
    ],
)
def test_new_config_fields_are_checked(overrides: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        lm_config(**overrides)


def test_new_config_fields_round_trip() -> None:
    config = lm_config(positional="rope", rope_base=500000, norm="rmsnorm", final_norm=False)
    again = TransformerConfig.from_dict(config.to_dict())
    assert again == config and isinstance(again.rope_base, float)


def test_failed_call_leaves_the_cache_unchanged():
    from multihead import MultiHeadAttention
    from multihead.cache import KVCache

    mha = MultiHeadAttention(16, 4).eval()
    cache = KVCache()
    x = torch.randn(2, 3, 16)
    with pytest.raises(TypeError, match="key_padding_mask"):
        mha(x, key_padding_mask=torch.ones(2, 3, dtype=torch.long), cache=cache)
    assert cache.length == 0
    with pytest.raises(ValueError, match="mask"):
        mha(x, mask=torch.ones(4, 4, dtype=torch.bool), cache=cache)
    assert cache.length == 0
    mha(x, cache=cache)
    assert cache.length == 3
