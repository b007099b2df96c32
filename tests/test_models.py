"""Positions, feed-forward, layers and models: shapes, padding, causality, configs, tying."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from multihead.modules.feedforward import FeedForward
from multihead.modules.layers import DecoderLayer, EncoderLayer
from multihead.modules.models import (
    AttentionMaps,
    DecoderLM,
    Encoder,
    EncoderClassifier,
    Seq2SeqTransformer,
    TransformerConfig,
    ViTClassifier,
    ViTConfig,
    num_parameters,
)
from multihead.positional import (
    LearnedPositionalEncoding,
    SinusoidalPositionalEncoding,
    build_positional,
    sinusoidal_encoding,
)

V = 11  # vocabulary of the small models
E = 16


def small_config(**overrides: object) -> TransformerConfig:
    fields: dict = dict(
        vocab_size=V,
        d_model=E,
        num_heads=2,
        d_ff=32,
        num_encoder_layers=2,
        num_decoder_layers=2,
        dropout=0.0,
        max_len=32,
    )
    fields.update(overrides)
    return TransformerConfig(**fields)


def padded_batch(lengths: list[int], total: int, vocab: int, seed: int):
    """Random ids (B, total) with garbage (not only pad) after each length, and the mask."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (len(lengths), total), generator=g)
    mask = torch.arange(total)[None, :] < torch.tensor(lengths)[:, None]  # (B, total)
    return ids, mask


def extend(ids: torch.Tensor, mask: torch.Tensor, extra: int, vocab: int, seed: int):
    """Append ``extra`` padded positions (random ids, mask False)."""
    g = torch.Generator().manual_seed(seed)
    more = torch.randint(0, vocab, (ids.shape[0], extra), generator=g)
    return torch.cat([ids, more], 1), torch.cat([mask, torch.zeros_like(mask[:, :extra])], 1)


# ------------------------------------------------------------------------------ positions


@pytest.mark.parametrize(("n", "d", "base"), [(9, 6, 10000.0), (7, 7, 10000.0), (5, 1, 100.0)])
def test_sinusoidal_encoding_matches_closed_formula(n: int, d: int, base: float) -> None:
    expected = torch.empty(n, d, dtype=torch.float64)
    for pos in range(n):
        for j in range(d):
            angle = pos / base ** (2 * (j // 2) / d)
            expected[pos, j] = math.sin(angle) if j % 2 == 0 else math.cos(angle)
    got = sinusoidal_encoding(n, d, base=base, dtype=torch.float64)
    assert got.dtype == torch.float64 and got.shape == (n, d)
    torch.testing.assert_close(got, expected, atol=1e-12, rtol=0)


def test_sinusoidal_module_offset_extends_and_is_not_saved() -> None:
    pe = SinusoidalPositionalEncoding(7, max_len=4).double()
    x = torch.randn(2, 10, 7, dtype=torch.float64)
    table = sinusoidal_encoding(20, 7, dtype=torch.float64)
    torch.testing.assert_close(pe(x), x + table[:10])  # beyond max_len: extended
    torch.testing.assert_close(pe(x, offset=6), x + table[6:16])
    assert "pe" not in pe.state_dict()


def test_learned_positions_add_rows_and_refuse_beyond_max_len() -> None:
    pe = LearnedPositionalEncoding(8, max_len=5)
    x = torch.randn(2, 3, 8)
    torch.testing.assert_close(pe(x, offset=2), x + pe.weight[2:5])
    pe(torch.randn(1, 5, 8))  # exactly max_len is fine
    with pytest.raises(ValueError, match="max_len=5"):
        pe(torch.randn(1, 6, 8))
    with pytest.raises(ValueError, match="offset 3"):
        pe(x, offset=3)
    with pytest.raises(ValueError, match="offset"):
        pe(x, offset=-1)
    with pytest.raises(ValueError, match=r"\(B, N, E=8\)"):
        pe(torch.randn(2, 3, 4))


def test_build_positional_names() -> None:
    assert isinstance(build_positional("learned", 8, 4), LearnedPositionalEncoding)
    assert isinstance(build_positional("sinusoidal", 8, 4), SinusoidalPositionalEncoding)
    with pytest.raises(ValueError, match="positional"):
        build_positional("rope", 8, 4)


# ------------------------------------------------------------------------------ feed-forward


@pytest.mark.parametrize("activation", ["gelu", "relu"])
def test_feedforward_matches_formula(activation: str) -> None:
    torch.manual_seed(0)
    ff = FeedForward(8, 20, activation=activation)
    x = torch.randn(3, 4, 8)
    h = x @ ff.linear1.weight.T + ff.linear1.bias
    exact_gelu = 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))
    h = h.clamp(min=0) if activation == "relu" else exact_gelu
    torch.testing.assert_close(ff(x), h @ ff.linear2.weight.T + ff.linear2.bias)


def test_feedforward_rejects_unknown_activation() -> None:
    with pytest.raises(ValueError, match="activation"):
        FeedForward(8, 16, activation="swish")


# ------------------------------------------------------------------------------ layers


def _mask_and_input(seed: int = 0):
    torch.manual_seed(seed)
    x = torch.randn(3, 5, E)
    padding = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 0, 0, 0]]).bool()
    return x, padding


@pytest.mark.parametrize("causal", [False, True])
def test_post_norm_encoder_layer_is_add_and_norm(causal: bool) -> None:
    x, padding = _mask_and_input()
    layer = EncoderLayer(E, 2, 32, dropout=0.0, norm_first=False)
    attn = layer.self_attn(x, key_padding_mask=padding, causal=causal).output
    h = layer.norm1(x + attn)
    expected = layer.norm2(h + layer.feed_forward(h))
    got, _ = layer(x, padding_mask=padding, causal=causal)
    torch.testing.assert_close(got, expected)


def test_pre_norm_encoder_layer_is_residual_of_normed() -> None:
    x, padding = _mask_and_input(1)
    layer = EncoderLayer(E, 2, 32, dropout=0.0, norm_first=True)
    h = x + layer.self_attn(layer.norm1(x), key_padding_mask=padding).output
    expected = h + layer.feed_forward(layer.norm2(h))
    torch.testing.assert_close(layer(x, padding_mask=padding)[0], expected)


@pytest.mark.parametrize("norm_first", [False, True])
def test_decoder_layer_composition(norm_first: bool) -> None:
    x, tgt_padding = _mask_and_input(2)
    memory = torch.randn(3, 6, E)
    memory_padding = torch.tensor([[1] * 6, [1] * 4 + [0] * 2, [1] + [0] * 5]).bool()
    layer = DecoderLayer(E, 2, 32, dropout=0.0, norm_first=norm_first)
    if norm_first:
        h = x + layer.self_attn(layer.norm1(x), key_padding_mask=tgt_padding, causal=True)[0]
        h = h + layer.cross_attn(layer.norm2(h), memory, key_padding_mask=memory_padding)[0]
        expected = h + layer.feed_forward(layer.norm3(h))
    else:
        h = layer.norm1(x + layer.self_attn(x, key_padding_mask=tgt_padding, causal=True)[0])
        h = layer.norm2(h + layer.cross_attn(h, memory, key_padding_mask=memory_padding)[0])
        expected = layer.norm3(h + layer.feed_forward(h))
    got, self_w, cross_w = layer(
        x,
        memory,
        tgt_padding_mask=tgt_padding,
        memory_padding_mask=memory_padding,
        need_weights=True,
    )
    torch.testing.assert_close(got, expected)
    assert self_w is not None and cross_w is not None
    assert self_w.shape == (3, 2, 5, 5) and cross_w.shape == (3, 2, 5, 6)


def _copy_attention(ours: nn.Module, theirs: nn.MultiheadAttention) -> None:
    theirs.load_state_dict(ours.to_torch().state_dict())


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_layers_match_torch_transformer_layers(norm_first: bool, activation: str) -> None:
    """torch.nn.Transformer{Encoder,Decoder}Layer with the same weights is the reference."""
    x, padding = _mask_and_input(3)
    memory = torch.randn(3, 4, E)
    kwargs = dict(dropout=0.0, norm_first=norm_first, activation=activation)
    torch_kwargs = dict(dim_feedforward=32, batch_first=True, **kwargs)

    ours = EncoderLayer(E, 2, 32, **kwargs)
    ref = nn.TransformerEncoderLayer(E, 2, **torch_kwargs)
    _copy_attention(ours.self_attn, ref.self_attn)
    for name in ("linear1", "linear2"):
        getattr(ref, name).load_state_dict(getattr(ours.feed_forward, name).state_dict())
    ref.norm1.load_state_dict(ours.norm1.state_dict())
    ref.norm2.load_state_dict(ours.norm2.state_dict())
    # torch's bool key padding mask is True = pad: the opposite of ours.
    torch.testing.assert_close(
        ours(x, padding_mask=padding)[0], ref(x, src_key_padding_mask=~padding)
    )

    ours_dec = DecoderLayer(E, 2, 32, **kwargs)
    ref_dec = nn.TransformerDecoderLayer(E, 2, **torch_kwargs)
    _copy_attention(ours_dec.self_attn, ref_dec.self_attn)
    _copy_attention(ours_dec.cross_attn, ref_dec.multihead_attn)
    for name in ("linear1", "linear2"):
        getattr(ref_dec, name).load_state_dict(getattr(ours_dec.feed_forward, name).state_dict())
    for name in ("norm1", "norm2", "norm3"):
        getattr(ref_dec, name).load_state_dict(getattr(ours_dec, name).state_dict())
    causal = torch.triu(torch.full((5, 5), float("-inf")), diagonal=1)
    torch.testing.assert_close(ours_dec(x, memory)[0], ref_dec(x, memory, tgt_mask=causal))


# ------------------------------------------------------------------------------ shapes


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"positional": "learned", "norm_first": False, "activation": "relu"},
        {"num_kv_heads": 1, "tgt_vocab_size": 7, "tie_embeddings": False},
        {"num_heads": 4, "num_kv_heads": 2, "tgt_vocab_size": 7},
    ],
)
def test_shapes_through_every_model(overrides: dict) -> None:
    torch.manual_seed(0)
    config = small_config(num_classes=3, **overrides)
    vt = config.target_vocab_size
    h = config.num_heads
    src, src_mask = padded_batch([6, 4], 6, V, seed=0)
    tgt, tgt_mask = padded_batch([5, 2], 5, vt, seed=1)

    s2s = Seq2SeqTransformer(config).eval()
    assert s2s(src, tgt, src_mask, tgt_mask).shape == (2, 5, vt)
    memory = s2s.encode(src, src_mask)
    assert memory.shape == (2, 6, E)
    assert s2s.decode(tgt, memory, src_mask, tgt_mask).shape == (2, 5, vt)
    maps = s2s.attention_maps(src, tgt, src_mask, tgt_mask)
    assert isinstance(maps, AttentionMaps)
    assert [m.shape for m in maps.encoder_self] == [(2, h, 6, 6)] * 2
    assert [m.shape for m in maps.decoder_self] == [(2, h, 5, 5)] * 2
    assert [m.shape for m in maps.decoder_cross] == [(2, h, 5, 6)] * 2

    lm = DecoderLM(small_config(**{k: v for k, v in overrides.items() if k != "tgt_vocab_size"}))
    assert lm(src, src_mask).shape == (2, 6, V)
    assert [m.shape for m in lm.attention_maps(src).decoder_self] == [(2, h, 6, 6)] * 2

    clf = EncoderClassifier(config)
    assert clf(src, src_mask).shape == (2, 3)
    assert len(clf.attention_maps(src, src_mask).encoder_self) == 2

    for model in (s2s, lm, clf):
        assert model.config is not None


@pytest.mark.parametrize(("image_size", "patch_size", "channels"), [(8, 2, 1), (6, 3, 3)])
def test_vit_shapes_and_maps(image_size: int, patch_size: int, channels: int) -> None:
    config = ViTConfig(
        image_size=image_size,
        patch_size=patch_size,
        in_channels=channels,
        num_classes=5,
        d_model=16,
        num_heads=2,
        d_ff=32,
    )
    vit = ViTClassifier(config)
    images = torch.randn(4, channels, image_size, image_size)
    assert vit(images).shape == (4, 5)
    n = 1 + (image_size // patch_size) ** 2
    assert [m.shape for m in vit.attention_maps(images).encoder_self] == [(4, 2, n, n)] * 2
    assert vit.config is config


def test_vit_rejects_wrong_images() -> None:
    vit = ViTClassifier(ViTConfig(d_model=16, num_heads=2, d_ff=32))
    with pytest.raises(ValueError, match=r"\(B, 1, 8, 8\)"):
        vit(torch.randn(2, 1, 10, 10))
    with pytest.raises(ValueError, match=r"\(B, 1, 8, 8\)"):
        vit(torch.randn(2, 3, 8, 8))
    with pytest.raises(ValueError, match="shape"):
        vit(torch.randn(1, 8, 8))
    with pytest.raises(TypeError, match="floating"):
        vit(torch.zeros(2, 1, 8, 8, dtype=torch.long))


# ------------------------------------------------------------------------------ padding


@pytest.mark.parametrize("positional", ["sinusoidal", "learned"])
@pytest.mark.parametrize("norm_first", [True, False])
def test_padding_never_changes_real_positions(positional: str, norm_first: bool) -> None:
    torch.manual_seed(0)
    config = small_config(positional=positional, norm_first=norm_first, num_classes=4)
    src, src_mask = padded_batch([5, 3, 1], 5, V, seed=2)
    tgt, tgt_mask = padded_batch([4, 4, 2], 4, V, seed=3)
    src2, src_mask2 = extend(src, src_mask, 3, V, seed=4)
    tgt2, tgt_mask2 = extend(tgt, tgt_mask, 2, V, seed=5)
    real_src, real_tgt = src_mask.unsqueeze(-1), tgt_mask.unsqueeze(-1)

    def same_where_real(a: torch.Tensor, b: torch.Tensor, real: torch.Tensor) -> None:
        torch.testing.assert_close(a * real, b[:, : a.shape[1]] * real, atol=1e-5, rtol=1e-5)

    encoder = Encoder(config).eval()
    same_where_real(encoder(src, src_mask).hidden, encoder(src2, src_mask2).hidden, real_src)

    s2s = Seq2SeqTransformer(config).eval()
    same_where_real(
        s2s(src, tgt, src_mask, tgt_mask), s2s(src2, tgt2, src_mask2, tgt_mask2), real_tgt
    )

    lm = DecoderLM(config).eval()
    same_where_real(lm(src, src_mask), lm(src2, src_mask2), real_src)

    clf = EncoderClassifier(config).eval()
    torch.testing.assert_close(clf(src, src_mask), clf(src2, src_mask2), atol=1e-5, rtol=1e-5)


def test_classifier_pools_mean_of_real_tokens() -> None:
    torch.manual_seed(1)
    clf = EncoderClassifier(small_config(num_classes=3)).eval()
    ids, mask = padded_batch([4, 2], 4, V, seed=6)
    hidden = clf.encoder(ids, mask).hidden
    pooled = torch.stack([hidden[0, :4].mean(0), hidden[1, :2].mean(0)])
    torch.testing.assert_close(clf(ids, mask), clf.head(pooled))


def test_attention_maps_respect_masks() -> None:
    torch.manual_seed(2)
    s2s = Seq2SeqTransformer(small_config()).eval()
    src, src_mask = padded_batch([5, 3], 5, V, seed=7)
    tgt, tgt_mask = padded_batch([4, 4], 4, V, seed=8)
    maps = s2s.attention_maps(src, tgt, src_mask, tgt_mask)
    padded_keys = ~src_mask[:, None, None, :]  # (B, 1, 1, Ns)
    for w in maps.encoder_self:
        real_rows = w.sum(-1)[src_mask[:, None, :].expand(-1, 2, -1)]
        torch.testing.assert_close(real_rows, torch.ones_like(real_rows))
        assert torch.all(w.masked_select(padded_keys) == 0)
    for w in maps.decoder_cross:
        torch.testing.assert_close(w.sum(-1), torch.ones(2, 2, 4))
        assert torch.all(w.masked_select(padded_keys) == 0)
    future = torch.triu(torch.ones(4, 4, dtype=torch.bool), diagonal=1)
    for w in maps.decoder_self:
        assert torch.all(w[..., future] == 0)


# ------------------------------------------------------------------------------ causality


def _causality_grads(run, positional: nn.Module, n: int) -> torch.Tensor:
    """grads[t, s] = |d logits[:, t] / d x[:, s]|, x the input of the first layer."""
    captured: list[torch.Tensor] = []
    handle = positional.register_forward_hook(lambda m, i, out: captured.append(out))
    try:
        logits = run()
    finally:
        handle.remove()
    (x,) = captured
    grads = torch.zeros(n, n)
    for t in range(n):
        (g,) = torch.autograd.grad(logits[:, t].sum(), x, retain_graph=True)
        grads[t] = g.abs().sum(dim=(0, 2))
    return grads


@pytest.mark.parametrize("norm_first", [True, False])
def test_decoder_lm_is_causal_by_gradients(norm_first: bool) -> None:
    torch.manual_seed(3)
    lm = DecoderLM(small_config(norm_first=norm_first)).eval()
    ids = torch.randint(0, V, (2, 6))
    grads = _causality_grads(lambda: lm(ids), lm.decoder.positional, 6)
    future = torch.triu(torch.ones(6, 6, dtype=torch.bool), diagonal=1)
    assert torch.all(grads[future] == 0)
    assert torch.all(grads[~future] > 0)


@pytest.mark.parametrize("norm_first", [True, False])
def test_seq2seq_decoder_is_causal_by_gradients(norm_first: bool) -> None:
    torch.manual_seed(4)
    s2s = Seq2SeqTransformer(small_config(norm_first=norm_first)).eval()
    src, src_mask = padded_batch([5, 3], 5, V, seed=9)
    tgt = torch.randint(0, V, (2, 6))
    grads = _causality_grads(lambda: s2s(src, tgt, src_mask), s2s.decoder.positional, 6)
    future = torch.triu(torch.ones(6, 6, dtype=torch.bool), diagonal=1)
    assert torch.all(grads[future] == 0)
    assert torch.all(grads[~future] > 0)


# ------------------------------------------------------------------------------ configs


@pytest.mark.parametrize(
    ("overrides", "error", "match"),
    [
        ({"vocab_size": 0}, ValueError, "vocab_size"),
        ({"vocab_size": 3.0}, TypeError, "vocab_size"),
        ({"tgt_vocab_size": 0}, ValueError, "tgt_vocab_size"),
        ({"d_model": 10, "num_heads": 4}, ValueError, "divisible by num_heads"),
        ({"num_kv_heads": 3, "num_heads": 4}, ValueError, "num_kv_heads"),
        ({"num_encoder_layers": -1}, ValueError, "num_encoder_layers"),
        ({"dropout": 1.0}, ValueError, "dropout"),
        ({"attn_dropout": -0.1}, ValueError, "attn_dropout"),
        ({"positional": "xpos"}, ValueError, "positional"),
        ({"activation": "tanh"}, ValueError, "activation"),
        ({"norm_first": 1}, TypeError, "norm_first"),
        ({"pad_id": 11}, ValueError, "pad_id"),
        ({"pad_id": 8, "tgt_vocab_size": 8}, ValueError, "pad_id"),
        ({"num_classes": 0}, ValueError, "num_classes"),
        ({"max_len": 0}, ValueError, "max_len"),
    ],
)
def test_transformer_config_validation(overrides: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        small_config(**overrides)


def test_config_round_trip_through_json() -> None:
    config = small_config(tgt_vocab_size=9, num_kv_heads=1, positional="learned", num_classes=2)
    restored = TransformerConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert restored == config
    vit = ViTConfig(image_size=6, patch_size=3, num_classes=4)
    assert ViTConfig.from_dict(json.loads(json.dumps(vit.to_dict()))) == vit
    assert TransformerConfig.from_dict({"vocab_size": 5, "dropout": 0}).dropout == 0.0


def test_config_from_dict_errors() -> None:
    with pytest.raises(ValueError, match="unknown TransformerConfig fields"):
        TransformerConfig.from_dict({"vocab_size": 5, "n_layers": 2})
    with pytest.raises(ValueError, match="vocab_size"):
        TransformerConfig.from_dict({"d_model": 16})
    with pytest.raises(ValueError, match="patch_size=3 must divide image_size=8"):
        ViTConfig(image_size=8, patch_size=3)
    with pytest.raises(AttributeError):  # frozen
        small_config().d_model = 8  # type: ignore[misc]


def test_model_argument_errors() -> None:
    with pytest.raises(ValueError, match="num_classes"):
        EncoderClassifier(small_config())
    with pytest.raises(ValueError, match="tgt_vocab_size"):
        DecoderLM(small_config(tgt_vocab_size=5))
    with pytest.raises(TypeError, match="TransformerConfig"):
        Seq2SeqTransformer(ViTConfig())  # type: ignore[arg-type]
    s2s = Seq2SeqTransformer(small_config(tgt_vocab_size=5))
    src = torch.randint(0, V, (2, 4))
    with pytest.raises(ValueError, match=r"tgt must hold ids in \[0, 5\)"):
        s2s(src, torch.full((2, 3), 7))
    with pytest.raises(TypeError, match="src must be an integer tensor"):
        s2s(src.float(), src)
    with pytest.raises(TypeError, match="src_padding_mask must be a bool"):
        s2s(src, src % 5, src_padding_mask=torch.ones(2, 4))
    with pytest.raises(ValueError, match="src_padding_mask must be"):
        s2s(src, src % 5, src_padding_mask=torch.ones(2, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="memory must be"):
        s2s.decode(src % 5, torch.randn(2, 4, 8))


# ------------------------------------------------------------------------------ tying


def test_tied_weights_share_storage() -> None:
    s2s = Seq2SeqTransformer(small_config())
    ptr = s2s.lm_head.weight.data_ptr()
    assert s2s.encoder.embedding.weight.data_ptr() == ptr
    assert s2s.decoder.embedding.weight.data_ptr() == ptr
    # One optimizer step keeps them one tensor.
    opt = torch.optim.SGD(s2s.parameters(), lr=0.1)
    s2s(torch.randint(0, V, (2, 3)), torch.randint(0, V, (2, 3))).sum().backward()
    opt.step()
    assert torch.equal(s2s.encoder.embedding.weight, s2s.lm_head.weight)

    separate_vocab = Seq2SeqTransformer(small_config(tgt_vocab_size=7))
    assert separate_vocab.decoder.embedding.weight is separate_vocab.lm_head.weight
    assert separate_vocab.encoder.embedding.weight.shape == (V, E)

    untied = Seq2SeqTransformer(small_config(tie_embeddings=False))
    ptrs = {
        untied.encoder.embedding.weight.data_ptr(),
        untied.decoder.embedding.weight.data_ptr(),
        untied.lm_head.weight.data_ptr(),
    }
    assert len(ptrs) == 3
    # Tying removes two (V, E) matrices from the count.
    assert num_parameters(untied) - num_parameters(s2s) == 2 * V * E

    lm = DecoderLM(small_config())
    assert lm.lm_head.weight.data_ptr() == lm.decoder.embedding.weight.data_ptr()


def test_num_parameters_counts_by_hand() -> None:
    config = ViTConfig(d_model=16, num_heads=2, d_ff=32, num_layers=1, num_classes=3)
    vit = ViTClassifier(config)
    per_layer = 4 * (16 * 16 + 16) + (16 * 32 + 32) + (32 * 16 + 16) + 2 * 2 * 16
    expected = (
        (1 * 2 * 2 * 16 + 16)  # patch conv
        + 16  # CLS token
        + 17 * 16  # positions: 16 patches + CLS
        + per_layer
        + 2 * 16  # final LayerNorm
        + 16 * 3
        + 3  # head
    )
    assert num_parameters(vit) == expected
    vit.head.requires_grad_(False)
    assert num_parameters(vit, trainable_only=True) == expected - 51
