"""The lean decoding step of DecoderLMs, float and quantized (multihead.modules.lean_decode).

References: a GPT forward written plainly in float64 from the model's own weights, and the
float64 copy of the unquantized model run over the whole sequence without a cache (a different
path: no cache, no lean step, no quantized layers).
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import multihead.modules.lean_decode as lean_decode
from multihead import MultiHeadAttention
from multihead.cache import KVCache
from multihead.decoding import generate_lm
from multihead.modules.lean_decode import LeanStepper
from multihead.modules.models import DecoderLM, TransformerConfig
from multihead.modules.observers import add_attention_observer
from multihead.quantize import (
    Int8WeightLinear,
    QuantizedMultiHeadAttention,
    float32_packing_available,
    native_available,
    quantize,
    torch_kernels_available,
)
from oracle import int8_dequantized64

needs_packing = pytest.mark.skipif(
    not float32_packing_available(), reason="oneDNN float32 packing unavailable"
)


def small_lm(**overrides: object) -> DecoderLM:
    torch.manual_seed(0)
    options = dict(vocab_size=37, d_model=32, num_heads=4, d_ff=64, num_decoder_layers=2)
    options.update(dropout=0.0, max_len=64)
    options.update(overrides)
    return DecoderLM(TransformerConfig(**options)).eval()


def gpt64(lm: DecoderLM, ids: torch.Tensor) -> torch.Tensor:
    """Logits ``(B, N, V)`` of a pre-norm, LayerNorm, GELU, learned-position, tied GPT, written
    out in float64 from ``lm``'s parameters."""
    p = {k: v.detach().double() for k, v in lm.state_dict().items()}
    cfg = lm.config
    e, h = cfg.d_model, cfg.num_heads
    d = e // h
    b, n = ids.shape
    x = p["decoder.embedding.weight"][ids] * math.sqrt(e)
    x = x + p["decoder.positional.weight"][:n]
    causal = torch.ones(n, n, dtype=torch.bool).tril()

    def norm(x: torch.Tensor, name: str) -> torch.Tensor:
        mean = x.mean(-1, keepdim=True)
        var = ((x - mean) ** 2).mean(-1, keepdim=True)
        return (x - mean) / torch.sqrt(var + cfg.norm_eps) * p[name + ".weight"] + p[name + ".bias"]

    def linear(x: torch.Tensor, name: str) -> torch.Tensor:
        return x @ p[name + ".weight"].T + p[name + ".bias"]

    for i in range(cfg.num_decoder_layers):
        pre = f"decoder.layers.{i}."
        a = norm(x, pre + "norm1")
        q, k, v = (
            linear(a, pre + f"self_attn.{w}_proj").view(b, n, h, d).transpose(1, 2) for w in "qkv"
        )
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(d)
        weights = scores.masked_fill(~causal, -math.inf).softmax(-1)
        out = (weights @ v).transpose(1, 2).reshape(b, n, e)
        x = x + linear(out, pre + "self_attn.out_proj")
        f = linear(norm(x, pre + "norm2"), pre + "feed_forward.linear1")
        x = x + linear(0.5 * f * (1 + torch.erf(f / math.sqrt(2))), pre + "feed_forward.linear2")
    return norm(x, "decoder.norm") @ p["decoder.embedding.weight"].T


def stepped_logits(stepper: LeanStepper, ids: torch.Tensor, prompt: int) -> torch.Tensor:
    """The stepper's next-token logits for positions ``prompt - 1 .. N - 1`` -> ``(B, N', V)``:
    the prompt in one call, then one token per call."""
    out = [stepper.next_logits(ids[:, :prompt])]
    for t in range(prompt + 1, ids.shape[1] + 1):
        out.append(stepper.next_logits(ids[:, :t]))
    return torch.stack(out, 1)


@needs_packing
def test_lean_step_matches_a_plain_float64_gpt():
    lm = small_lm(positional="learned")
    q = quantize(lm, weights="float32")
    stepper = q._lean_stepper(12)
    assert isinstance(stepper, LeanStepper)
    ids = torch.randint(0, 37, (3, 12))
    with torch.no_grad():
        got = stepped_logits(stepper, ids, prompt=4)
    expected = gpt64(lm, ids)[:, 3:]
    torch.testing.assert_close(got.double(), expected, atol=1e-5, rtol=1e-5)


CONFIGS = [
    {},
    {"positional": "rope"},
    {"positional": "none", "norm_first": False},
    {"num_kv_heads": 2, "norm": "rmsnorm", "ffn": "gated", "activation": "silu", "bias": False},
    {"num_kv_heads": 1, "tie_embeddings": False, "activation": "gelu_tanh"},
    {"embedding_norm": True, "type_vocab_size": 2, "final_norm": True, "norm_first": False},
]


@pytest.mark.parametrize("overrides", CONFIGS, ids=lambda o: ",".join(o) or "default")
@pytest.mark.parametrize("prompt", [1, 5])
@pytest.mark.parametrize("packed", [False, True], ids=["float", "float32-packed"])
def test_lean_step_matches_the_uncached_float64_model(overrides, prompt, packed):
    lm = small_lm(**overrides)
    if packed and not float32_packing_available():
        pytest.skip("oneDNN float32 packing unavailable")
    q = quantize(lm, weights="float32") if packed else lm
    ids = torch.randint(0, 37, (2, 11))
    stepper = q._lean_stepper(11)
    assert stepper is not None
    with torch.no_grad():
        got = stepped_logits(stepper, ids, prompt)
        expected = copy.deepcopy(lm).double()(ids)[:, prompt - 1 :]
    torch.testing.assert_close(got.double(), expected, atol=1e-5, rtol=1e-5)


@needs_packing
@settings(max_examples=15, deadline=None)
@given(
    batch=st.integers(1, 3),
    prompt=st.integers(1, 6),
    chunks=st.lists(st.integers(1, 4), min_size=1, max_size=3),
)
def test_lean_step_takes_several_new_tokens_after_a_prefix(batch, prompt, chunks):
    # After the prompt, calls that feed more than one token at a time (the mask is then
    # bottom-right causal) give the logits of the whole sequence.
    lm = small_lm(positional="rope")
    q = quantize(lm, weights="float32")
    total = prompt + sum(chunks)
    ids = torch.randint(0, 37, (batch, total))
    stepper = q._lean_stepper(total)
    assert stepper is not None
    with torch.no_grad():
        expected = copy.deepcopy(lm).double()(ids)
        got = stepper.next_logits(ids[:, :prompt])
        torch.testing.assert_close(got.double(), expected[:, prompt - 1], atol=1e-5, rtol=1e-5)
        fed = prompt
        for n in chunks:
            fed += n
            got = stepper.next_logits(ids[:, :fed])
            torch.testing.assert_close(got.double(), expected[:, fed - 1], atol=1e-5, rtol=1e-5)


def through_modules(monkeypatch: pytest.MonkeyPatch, model: DecoderLM) -> None:
    """Make ``model`` decode through its modules and their cache (no lean step)."""
    monkeypatch.setattr(model, "_lean_stepper", lambda max_len: None)


@pytest.mark.parametrize("weights", ["int8", "int4", "dynamic"])
def test_quantized_generation_is_the_same_through_the_lean_step(weights, monkeypatch):
    # The lean step runs the model's own quantized layers over the same cached keys: greedy
    # tokens and logits equal those of the cached module path.
    lm = small_lm(d_model=64, d_ff=128)
    q = quantize(lm) if weights == "dynamic" else quantize(lm, weights=weights)
    prompt = torch.randint(0, 37, (2, 4))
    with torch.no_grad():
        lean = generate_lm(q, prompt, max_new_tokens=12)
        stepper = q._lean_stepper(16)
        assert stepper is not None
        lean_logits = stepped_logits(stepper, lean, 4)
        through_modules(monkeypatch, q)
        modules = generate_lm(q, prompt, max_new_tokens=12)
        cache = q.new_cache(max_len=16)
        module_logits = torch.stack(
            [q(lean[:, :4], cache=cache)[:, -1]]
            + [q(lean[:, t - 1 : t], cache=cache)[:, -1] for t in range(5, 17)],
            1,
        )
    assert torch.equal(lean, modules)
    torch.testing.assert_close(lean_logits, module_logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("group_size", [None, 16])
def test_int8_lean_step_matches_float64_with_the_int8_weights(group_size):
    # An independent reference for a quantized model: the float model with the int8 codes x
    # scales as weights, in float64, uncached. multihead's kernel computes in float32;
    # PyTorch's (where ours cannot be built) rounds activations to bf16 (~0.4%).
    if group_size is not None and not native_available():
        pytest.skip("grouped int8 needs multihead's int8 kernel (a C compiler)")
    lm = small_lm(d_model=64, d_ff=128, num_kv_heads=2, positional="rope")
    q = quantize(lm, weights="int8", group_size=group_size)
    reference = int8_dequantized64(lm, q)
    ids = torch.randint(0, 37, (2, 10))
    stepper = q._lean_stepper(10)
    assert stepper is not None
    with torch.no_grad():
        got = stepped_logits(stepper, ids, 4)
        expected = reference(ids)[:, 3:]
    scale = expected.abs().max()
    # multihead's kernel: float32 arithmetic; PyTorch's (no compiler, or no vector path): bf16.
    ours = all(m._native for m in q.modules() if isinstance(m, Int8WeightLinear))
    tolerance = 1e-4 if ours else 2e-2
    torch.testing.assert_close(got.double(), expected, atol=tolerance * scale, rtol=0)


@needs_packing
def test_select_keeps_and_repeats_rows():
    lm = small_lm()
    q = quantize(lm, weights="float32")
    ids = torch.randint(0, 37, (3, 8))
    stepper = q._lean_stepper(8)
    assert stepper is not None
    rows = torch.tensor([2, 0, 2])
    with torch.no_grad():
        stepper.next_logits(ids[:, :5])
        stepper.select(rows)
        got = stepper.next_logits(ids[rows, :6])
        expected = copy.deepcopy(lm).double()(ids[rows, :6])[:, -1]
    torch.testing.assert_close(got.double(), expected, atol=1e-5, rtol=1e-5)


@needs_packing
def test_feeding_past_the_room_is_refused():
    q = quantize(small_lm(), weights="float32")
    stepper = q._lean_stepper(4)
    assert stepper is not None
    with pytest.raises(ValueError, match=r"holds 4 tokens; feeding 5 after 0 needs 5"):
        stepper.next_logits(torch.zeros(1, 5, dtype=torch.long))


class Doubled(DecoderLM):
    def forward(self, ids, padding_mask=None, **options):  # type: ignore[override]
        return 2 * super().forward(ids, padding_mask, **options)


@needs_packing
def test_models_the_lean_step_does_not_reproduce_decode_through_their_modules():
    assert quantize(small_lm(positional="alibi"), weights="float32")._lean_stepper(8) is None
    q = quantize(small_lm(), weights="float32")
    assert q._lean_stepper(8) is not None
    assert q.train()._lean_stepper(8) is None
    q.eval()
    seen = []
    handle = q.decoder.layers[0].register_forward_hook(lambda *args: seen.append(1))
    assert q._lean_stepper(8) is None
    prompt = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        q.generate(prompt, 3)
    assert seen  # the hook ran: decoding went through the modules
    handle.remove()
    doubled = Doubled(small_lm().config).eval()
    doubled.load_state_dict(small_lm().state_dict())
    qd = quantize(doubled, weights="float32")
    assert qd._lean_stepper(8) is None
    with torch.no_grad():
        tokens = qd.generate(prompt, 4)
        logits = qd(tokens[:, :-1])[0, 2:]
    assert torch.equal(tokens[0, 3:], logits.argmax(-1))


def test_sampling_through_the_lean_step_draws_the_same_tokens(monkeypatch):
    q = quantize(small_lm(), weights="int8")
    prompt = torch.randint(0, 37, (2, 3))
    draws = []
    for lean in (True, False):
        if not lean:
            through_modules(monkeypatch, q)
        gen = torch.Generator().manual_seed(5)
        with torch.no_grad():
            draws.append(generate_lm(q, prompt, max_new_tokens=10, do_sample=True, generator=gen))
    assert torch.equal(draws[0], draws[1])


@needs_packing
def test_grouped_query_attention_without_enable_gqa(monkeypatch):
    # torch < 2.5 has no enable_gqa: keys and values are repeated per query head instead.
    monkeypatch.setattr(lean_decode, "_HAS_GQA", False)
    lm = small_lm(num_kv_heads=2, positional="rope")
    q = quantize(lm, weights="float32")
    ids = torch.randint(0, 37, (2, 9))
    stepper = q._lean_stepper(9)
    assert stepper is not None
    with torch.no_grad():
        got = stepped_logits(stepper, ids, 3)
        expected = copy.deepcopy(lm).double()(ids)[:, 2:]
    torch.testing.assert_close(got.double(), expected, atol=1e-5, rtol=1e-5)


@needs_packing
def test_a_nan_query_gives_nan_logits_as_the_modules_do(monkeypatch):
    q = quantize(small_lm(), weights="float32")
    with torch.no_grad():
        q.decoder.layers[0].self_attn.qkv_proj.bias[0] = float("nan")  # one query feature
    ids = torch.randint(0, 37, (1, 6))
    stepper = q._lean_stepper(6)
    assert stepper is not None
    with torch.no_grad():
        lean = stepped_logits(stepper, ids, 3)
        through_modules(monkeypatch, q)
        modules = torch.stack(
            [q(ids[:, :t])[:, -1] for t in range(3, 7)], 1
        )  # uncached, through the modules
    assert torch.isnan(modules).all() and torch.isnan(lean).all()


@needs_packing
def test_stepper_refuses_what_it_cannot_do():
    q = quantize(small_lm(), weights="float32")
    stepper = q._lean_stepper(8)
    assert stepper is not None
    ids = torch.randint(0, 37, (3, 8))
    with pytest.raises(ValueError, match=r"tokens must hold new tokens after the 0 fed"):
        stepper.next_logits(ids[:, :0])
    stepper.next_logits(ids[:, :4])
    with pytest.raises(
        ValueError, match=r"tokens must have the cache's 3 rows .* got shape \(1, 5\)"
    ):
        stepper.next_logits(ids[:1, :5])
    with pytest.raises(ValueError, match=r"after the 4 fed, got shape \(3, 4\)"):
        stepper.next_logits(ids[:, :4])


class ZeroedFloat(MultiHeadAttention):
    def project(self, query, key, value):  # type: ignore[no-untyped-def]
        q, k, v = super().project(query, key, value)
        return q, k, v * 0


def test_float_models_decode_through_the_lean_step_unless_the_attention_is_a_subclass():
    lm = small_lm()
    prompt = torch.randint(0, 37, (2, 3))
    assert lm._lean_stepper(8) is not None
    with torch.no_grad():
        tokens = lm.generate(prompt, 6)
        logits = copy.deepcopy(lm).double()(tokens[:, :-1])[:, 2:]
    chosen = logits.gather(-1, tokens[:, 3:, None]).squeeze(-1)
    assert (logits.max(-1).values - chosen).max() < 1e-6  # float64's argmax, up to rounding
    lm.decoder.layers[1].self_attn.__class__ = ZeroedFloat
    assert lm._lean_stepper(8) is None
    with torch.no_grad():
        tokens = lm.generate(prompt, 6)
        logits = lm(tokens[:, :-1])[:, 2:]  # the subclass's own forward, uncached
    assert torch.equal(tokens[:, 3:], logits.argmax(-1))


class Zeroed(QuantizedMultiHeadAttention):
    def project(self, query, key, value):  # type: ignore[no-untyped-def]
        q, k, v = super().project(query, key, value)
        return q, k, v * 0


@needs_packing
def test_watchers_and_replaced_code_keep_the_module_path():
    q = quantize(small_lm(), weights="float32")
    assert q._lean_stepper(8) is not None
    handle = add_attention_observer(lambda module, spec: None)
    try:
        assert q._lean_stepper(8) is None
    finally:
        handle.remove()
    handle = torch.nn.modules.module.register_module_forward_hook(lambda *args: None)
    try:
        assert q._lean_stepper(8) is None
    finally:
        handle.remove()
    assert q._lean_stepper(8) is not None
    q.decoder.layers[1].feed_forward.forward = lambda x: x  # an instance's own forward
    assert q._lean_stepper(8) is None
    del q.decoder.layers[1].feed_forward.forward
    q.decoder.layers[0].self_attn.__class__ = Zeroed  # a subclass of the quantized attention
    assert q._lean_stepper(8) is None


class Windowed(DecoderLM):
    def new_cache(self, *, max_len=None, window=None):  # type: ignore[no-untyped-def]
        return super().new_cache(window=4)  # room grows with the window, not max_len


def test_subclasses_and_patched_or_compiled_code_keep_the_module_path(monkeypatch):
    lm = small_lm(positional="rope")
    windowed = Windowed(lm.config).eval()
    windowed.load_state_dict(lm.state_dict())
    assert windowed._lean_stepper(8) is None  # its sliding-window cache decides the tokens
    prompt = torch.randint(0, 37, (1, 12))
    with torch.no_grad():
        tokens = windowed.generate(prompt, 4)
        cache = windowed.new_cache()
        logits = [windowed(tokens[:, :12], cache=cache)[:, -1]]
        logits += [windowed(tokens[:, t - 1 : t], cache=cache)[:, -1] for t in range(13, 16)]
    assert torch.equal(tokens[0, 12:], torch.cat(logits).argmax(-1))

    assert lm._lean_stepper(8) is not None
    layer_forward = type(lm.decoder.layers[0]).forward
    monkeypatch.setattr(
        type(lm.decoder.layers[0]), "forward", lambda *a, **k: layer_forward(*a, **k)
    )
    assert lm._lean_stepper(8) is None  # a method patched onto the class
    monkeypatch.undo()
    assert lm._lean_stepper(8) is not None
    q = quantize(lm, weights="int8")
    for cls, name in [
        (QuantizedMultiHeadAttention, "_spec"),  # a registered attention class's own method
        (type(lm.decoder.layers[0]), "_drop"),  # the residual dropout the lean step skips
        (KVCache, "update"),  # the module path's cache
    ]:
        original = getattr(cls, name)
        monkeypatch.setattr(cls, name, lambda *a, f=original, **k: f(*a, **k))
        assert lm._lean_stepper(8) is None or cls is QuantizedMultiHeadAttention
        assert q._lean_stepper(8) is None
        monkeypatch.undo()
    assert q._lean_stepper(8) is not None
    lm.decoder.layers[1].self_attn.dropout = 0.5
    lm.decoder.layers[1].train()  # one sub-layer left training: its dropout must apply
    assert lm._lean_stepper(8) is None
    lm.eval()
    lm.decoder.layers[0].compile()  # Module.compile(): calls go through the compiled module
    assert lm._lean_stepper(8) is None


def test_an_exact_backend_tried_before_sdpa_keeps_the_module_path(monkeypatch):
    import multihead.functional as functional

    lm = small_lm()
    assert lm._lean_stepper(8) is not None
    registry = dict(functional._REGISTRY)
    monkeypatch.setattr(functional, "_REGISTRY", registry)
    plain = functional.get_backend("math").fn
    functional.register_backend("after-sdpa", plain, exact=True)  # priority 100: sdpa first
    functional.register_backend("approximate", plain, exact=False, priority=1)  # named only
    assert lm._lean_stepper(8) is not None
    functional.register_backend("before-sdpa", plain, exact=True, priority=1)
    assert lm._lean_stepper(8) is None  # "auto" would now pick it
    del registry["before-sdpa"]
    functional.register_backend("sdpa", plain, exact=True, priority=10, replace=True)
    assert lm._lean_stepper(8) is None  # sdpa itself replaced


@pytest.mark.skipif(not torch_kernels_available(), reason="no quantized engine in this torch")
@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")
def test_the_head_sees_the_whole_prompt_as_in_forward():
    # PyTorch's own dynamic quantization scales a tensor's activations together, so the last
    # position's logits depend on the other rows: the lean prefill must give forward's.
    lm = small_lm()
    q = torch.ao.quantization.quantize_dynamic(lm, {torch.nn.Linear}, dtype=torch.qint8).eval()
    ids = torch.randint(0, 37, (2, 8))
    stepper = q._lean_stepper(8)
    assert stepper is not None
    with torch.no_grad():
        torch.testing.assert_close(stepper.next_logits(ids), q(ids)[:, -1], atol=1e-6, rtol=0)


def test_an_empty_batch_decodes_to_an_empty_batch():
    lm = small_lm()
    empty = torch.zeros(0, 3, dtype=torch.long)
    with torch.no_grad():
        assert lm.generate(empty, 4).shape == (0, 7)
