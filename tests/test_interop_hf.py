"""Hugging Face interop: our kernels inside transformers models, and converted weights.

Every check compares against transformers itself: the same model run with its own ``"eager"``
attention, or the original model next to its conversion. Models are tiny and randomly
initialized from configs (nothing is downloaded). ``initializer_range=0.2`` makes attention
far from uniform, so a wrong mask or alignment shows up in the outputs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

transformers = pytest.importorskip("transformers")

from multihead.interop import huggingface as hfi  # noqa: E402
from multihead.modules.models import DecoderLM, Encoder, EncoderClassifier  # noqa: E402

V, N = 97, 8  # vocabulary, sequence length
ATOL = 1e-5


@pytest.fixture(scope="module", autouse=True)
def _registered() -> None:
    assert hfi.register() == "multihead"


def _bert_config(**overrides: Any) -> Any:
    options = dict(
        vocab_size=V,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=64,
        initializer_range=0.2,
        num_labels=3,
    )
    return transformers.BertConfig(**(options | overrides))


def _gpt2_config(**overrides: Any) -> Any:
    options = dict(
        vocab_size=V,
        n_embd=64,
        n_layer=2,
        n_head=4,
        n_positions=64,
        initializer_range=0.2,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    return transformers.GPT2Config(**(options | overrides))


def _llama_config(**overrides: Any) -> Any:
    options = dict(
        vocab_size=V,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,  # grouped-query attention
        intermediate_size=128,
        max_position_embeddings=64,
        initializer_range=0.2,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    return transformers.LlamaConfig(**(options | overrides))


def _mistral_config() -> Any:
    options = _llama_config().to_dict()
    keep = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "intermediate_size", "max_position_embeddings",
            "initializer_range", "bos_token_id", "eos_token_id", "pad_token_id")  # fmt: skip
    return transformers.MistralConfig(**{k: options[k] for k in keep}, sliding_window=3)


# name -> (builder, padding side, number of attention layers)
MODELS: dict[str, tuple[Callable[[], Any], str]] = {
    "bert": (lambda: transformers.BertForSequenceClassification(_bert_config()), "right"),
    "gpt2": (lambda: transformers.GPT2LMHeadModel(_gpt2_config()), "left"),
    "llama": (lambda: transformers.LlamaForCausalLM(_llama_config()), "left"),
    "mistral": (lambda: transformers.MistralForCausalLM(_mistral_config()), "left"),
}


def _model(name: str) -> Any:
    torch.manual_seed(0)
    return MODELS[name][0]().eval()


def _batch(side: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``ids (3, N)`` and an HF ``attention_mask`` (1 = real) padded on ``side``."""
    torch.manual_seed(1)
    ids = torch.randint(3, V, (3, N))
    mask = torch.ones(3, N, dtype=torch.long)
    if side == "right":
        mask[1, 5:] = 0
        mask[2, 2:] = 0
    else:
        mask[1, :3] = 0
        mask[2, :6] = 0
    ids = ids.masked_fill(mask == 0, 0)
    return ids, mask


def _run(model: Any, impl: str, ids: torch.Tensor, mask: torch.Tensor, **kwargs: Any) -> Any:
    model.set_attn_implementation(impl)
    with torch.no_grad():
        return model(ids, attention_mask=mask, **kwargs)


# ------------------------------------------------------------------ attn_implementation


@pytest.mark.parametrize("name", sorted(MODELS))
def test_logits_match_eager_on_padded_batches(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    model = _model(name)
    ids, mask = _batch(MODELS[name][1])
    seen: list[tuple[int, torch.dtype | None]] = []
    original = hfi.attention

    def spy(query: torch.Tensor, key: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        m = kwargs.get("mask")
        seen.append((key.shape[1], None if m is None else m.dtype))
        return original(query, key, *args, **kwargs)

    monkeypatch.setattr(hfi, "attention", spy)
    ours = _run(model, "multihead", ids, mask).logits
    theirs = _run(model, "eager", ids, mask).logits
    assert len(seen) == 2, "every attention layer runs on multihead's kernel"
    # Masks reach us as bool (True = attend), never as HF's finfo.min additive floats.
    assert all(dtype in (torch.bool, None) for _, dtype in seen)
    if name in ("llama", "mistral"):
        assert {heads for heads, _ in seen} == {2}, "GQA keys arrive unrepeated"
    assert torch.isfinite(ours).all()
    if ours.dim() == 3:  # LM logits (B, N, V): padded query positions are undefined in HF
        real = mask.bool()
        torch.testing.assert_close(ours[real], theirs[real], atol=ATOL, rtol=0)
    else:
        torch.testing.assert_close(ours, theirs, atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_output_attentions_match_eager(name: str) -> None:
    model = _model(name)
    ids, mask = _batch(MODELS[name][1])
    ours = _run(model, "multihead", ids, mask, output_attentions=True).attentions
    theirs = _run(model, "eager", ids, mask, output_attentions=True).attentions
    assert len(ours) == len(theirs) == 2
    real_query = mask.bool()[:, None, :, None]  # (B, 1, Nq, 1)
    for w_ours, w_theirs in zip(ours, theirs, strict=True):
        assert w_ours is not None and w_ours.shape == w_theirs.shape  # (B, H, Nq, Nk)
        torch.testing.assert_close(w_ours * real_query, w_theirs * real_query, atol=ATOL, rtol=0)
        if MODELS[name][1] == "left":
            # The first (padded) query of a left-padded row has no key: zeros, not NaN or HF's
            # uniform spread over forbidden keys.
            assert torch.equal(w_ours[2, :, 0], torch.zeros_like(w_ours[2, :, 0]))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_logits_match_eager_without_padding(name: str) -> None:
    """No padding: HF skips the mask and the kernel must apply the module's causality itself."""
    model = _model(name)
    ids, mask = _batch("right")
    mask = torch.ones_like(mask)
    ours = _run(model, "multihead", ids, mask).logits
    theirs = _run(model, "eager", ids, mask).logits
    torch.testing.assert_close(ours, theirs, atol=ATOL, rtol=0)


def test_custom_float_mask_passes_through() -> None:
    """A user's 4-D additive mask (HF style: 0 or finfo.min) reaches the kernel as is, with
    finfo.min read as "forbidden", so an all-forbidden row gives zeros."""
    model = _model("llama")
    ids, _ = _batch("left")
    allowed = torch.ones(N, N, dtype=torch.bool).tril()[None, None].repeat(3, 1, 1, 1)
    allowed[1, :, :, :3] = False  # the first three keys of row 1 are padding
    additive = torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)
    ours = _run(model, "multihead", ids, additive, output_attentions=True)
    theirs = _run(model, "eager", ids, additive, output_attentions=True)
    real = torch.ones(3, N, dtype=torch.bool)
    real[1, :3] = False
    torch.testing.assert_close(ours.logits[real], theirs.logits[real], atol=ATOL, rtol=0)
    assert torch.equal(ours.attentions[0][1, :, :3], torch.zeros_like(ours.attentions[0][1, :, :3]))


def test_sliding_window_when_the_mask_is_skipped() -> None:
    """With no mask, ``sliding_window=w`` lets a query see itself and the w - 1 keys before it,
    as HF's sliding_window_causal_mask_function."""
    from transformers.masking_utils import sdpa_mask, sliding_window_causal_mask_function

    torch.manual_seed(0)
    q, k, v = torch.randn(2, 4, 6, 8), torch.randn(2, 2, 6, 8), torch.randn(2, 2, 6, 8)
    module = torch.nn.Module()
    module.is_causal = True  # type: ignore[assignment]
    out, _ = hfi.attention_forward(module, q, k, v, None, sliding_window=3)
    window = sdpa_mask(
        batch_size=2, q_length=6, kv_length=6,
        mask_function=sliding_window_causal_mask_function(3), allow_is_causal_skip=False,
    )  # fmt: skip
    expected, _ = hfi.attention_forward(module, q, k, v, window)
    torch.testing.assert_close(out, expected, atol=ATOL, rtol=0)


def test_asking_for_weights_does_not_change_outputs() -> None:
    model = _model("llama")
    ids, mask = _batch("left")
    plain = _run(model, "multihead", ids, mask).logits
    weighted = _run(model, "multihead", ids, mask, output_attentions=True).logits
    torch.testing.assert_close(plain, weighted, atol=ATOL, rtol=0)


def test_fully_masked_rows_give_zeros_not_nan() -> None:
    model = _model("bert")
    ids, mask = _batch("right")
    mask[2] = 0  # a sequence with no real token at all
    out = _run(model, "multihead", ids, mask, output_attentions=True)
    assert torch.isfinite(out.logits).all()
    assert all(torch.equal(w[2], torch.zeros_like(w[2])) for w in out.attentions)


@pytest.mark.parametrize("name", ["gpt2", "llama", "mistral"])
def test_generate_with_cache_matches_eager(name: str) -> None:
    """Cached decoding in HF: one query against a growing cache, left-padded prompts."""
    model = _model(name)
    ids, mask = _batch("left")
    tokens = {}
    for impl in ("eager", "multihead"):
        model.set_attn_implementation(impl)
        tokens[impl] = model.generate(
            ids, attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=0
        )
    assert torch.equal(tokens["multihead"], tokens["eager"])


def test_register_is_idempotent_and_checks_arguments() -> None:
    assert hfi.register() == "multihead"
    assert hfi.register("multihead-math", backend="math") == "multihead-math"
    model = _model("gpt2")
    ids, mask = _batch("left")
    pinned = _run(model, "multihead-math", ids, mask).logits
    auto = _run(model, "multihead", ids, mask).logits
    real = mask.bool()
    torch.testing.assert_close(pinned[real], auto[real], atol=ATOL, rtol=0)
    with pytest.raises(ValueError, match="shadow"):
        hfi.register("sdpa")
    with pytest.raises(ValueError, match="backend"):
        hfi.register("other", backend="no-such-kernel")
    with pytest.raises(TypeError, match="name"):
        hfi.register("")


def test_unsupported_kernel_options_are_refused() -> None:
    q = torch.randn(1, 2, 3, 8)
    module = torch.nn.Module()
    with pytest.raises(ValueError, match="softcap"):
        hfi.attention_forward(module, q, q, q, None, softcap=30.0)
    with pytest.raises(ValueError, match="sinks"):
        hfi.attention_forward(module, q, q, q, None, s_aux=torch.zeros(2))


# ------------------------------------------------------------------ convert


def test_convert_bert_model() -> None:
    torch.manual_seed(0)
    bert = transformers.BertModel(_bert_config()).eval()
    encoder = hfi.convert(bert)
    assert isinstance(encoder, Encoder)
    ids, mask = _batch("right")
    types = torch.randint(0, 2, ids.shape)
    with torch.no_grad():
        theirs = bert(ids, attention_mask=mask, token_type_ids=types).last_hidden_state
        ours = encoder(ids, mask.bool(), token_type_ids=types).hidden
        no_types = encoder(ids, mask.bool()).hidden
        no_types_hf = bert(ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(ours, theirs, atol=ATOL, rtol=0)
    torch.testing.assert_close(no_types, no_types_hf, atol=ATOL, rtol=0)


def test_convert_bert_classifier() -> None:
    torch.manual_seed(0)
    bert = transformers.BertForSequenceClassification(_bert_config()).eval()
    classifier = hfi.convert(bert)
    assert isinstance(classifier, EncoderClassifier)
    ids, mask = _batch("right")
    types = torch.randint(0, 2, ids.shape)
    with torch.no_grad():
        theirs = bert(ids, attention_mask=mask, token_type_ids=types).logits
        ours = classifier(ids, mask.bool(), token_type_ids=types)
    assert ours.shape == (3, 3)
    torch.testing.assert_close(ours, theirs, atol=ATOL, rtol=0)


def test_convert_gpt2_logits() -> None:
    torch.manual_seed(0)
    gpt2 = transformers.GPT2LMHeadModel(_gpt2_config()).eval()
    lm = hfi.convert(gpt2)
    assert isinstance(lm, DecoderLM)
    assert lm.lm_head.weight is lm.decoder.embedding.weight, "GPT-2 ties its embeddings"
    ids, mask = _batch("right")
    with torch.no_grad():
        theirs = gpt2(ids, attention_mask=mask).logits
        ours = lm(ids, mask.bool())
    torch.testing.assert_close(ours, theirs, atol=ATOL, rtol=0)


def test_convert_gpt2_greedy_generation_matches_hf() -> None:
    torch.manual_seed(0)
    gpt2 = transformers.GPT2LMHeadModel(_gpt2_config()).eval()
    gpt2.generation_config.eos_token_id = None  # never stop early: compare all 24 tokens
    lm = hfi.convert(gpt2)
    assert isinstance(lm, DecoderLM)
    prompt = torch.randint(3, V, (2, 5))
    theirs = gpt2.generate(
        prompt,
        attention_mask=torch.ones_like(prompt),
        max_new_tokens=24,
        do_sample=False,
        pad_token_id=0,
    )
    ours = lm.generate(prompt, 24, do_sample=False, use_cache=True)
    assert torch.equal(ours, theirs)


def test_convert_copies_weights_mode_and_dtype() -> None:
    torch.manual_seed(0)
    gpt2 = transformers.GPT2LMHeadModel(_gpt2_config()).train()
    lm = hfi.convert(gpt2)
    assert isinstance(lm, DecoderLM) and lm.training
    assert lm.config.dropout == gpt2.config.resid_pdrop
    with torch.no_grad():
        lm.get_parameter("decoder.layers.0.self_attn.q_proj.weight").zero_()
    assert gpt2.transformer.h[0].attn.c_attn.weight.abs().sum() > 0, "weights are cloned"
    double = hfi.convert(transformers.GPT2LMHeadModel(_gpt2_config()).double())
    assert next(double.parameters()).dtype == torch.float64


def test_convert_refuses_what_it_cannot_reproduce() -> None:
    with pytest.raises(TypeError, match="GPT2LMHeadModel"):
        hfi.convert(transformers.LlamaForCausalLM(_llama_config()))
    with pytest.raises(TypeError, match="transformers model"):
        hfi.convert("gpt2")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="scale_attn_by_inverse_layer_idx"):
        hfi.convert(
            transformers.GPT2LMHeadModel(_gpt2_config(scale_attn_by_inverse_layer_idx=True))
        )
    with pytest.raises(ValueError, match="activation"):
        hfi.convert(transformers.GPT2LMHeadModel(_gpt2_config(activation_function="quick_gelu")))
