"""multihead.quantize: a quantized copy, int8 layers, outputs close to float32, still decodes."""

from __future__ import annotations

import copy
import json
import warnings

import pytest
import torch
from torch import nn

import multihead.quantize as quantize_package
from multihead import MultiHeadAttention, threads
from multihead.decoding import greedy_decode
from multihead.modules.feedforward import FeedForward
from multihead.modules.models import DecoderLM, Seq2SeqTransformer, TransformerConfig
from multihead.quantize import (
    BF16WeightLinear,
    Float32PackedLinear,
    Int4WeightLinear,
    Int8DynamicLinear,
    Int8WeightLinear,
    QuantizedMultiHeadAttention,
    bf16_units,
    float32_packing_available,
    load_quantized,
    native_available,
    quantization_of,
    quantize,
    quantized_linear,
    save_quantized,
    torch_kernels_available,
)
from multihead.quantize.weight_only import weight_only_linear

KERNELS = ["reference", "int8pack", "onednn"] + (["torch"] if torch_kernels_available() else [])
# Relative Frobenius error of the logits of the small model below, measured: ~1.7% with
# PyTorch's kernel (one 7-bit scale per activation tensor) and ~1.0% with the reference kernel
# (8-bit, one scale per token). The bound leaves a 4x margin over the worse of the two, and is
# still far below what a wrong scale or a swapped q/k/v block gives (errors of order 100%).
LOGIT_TOLERANCE = 0.08

# "int8/32": int8 with one scale per 32 input channels (multihead's own kernel only).
FORMATS = (
    ["int8", "int4"]
    + (["int8/32"] if native_available() else [])
    + (["bf16"] if bf16_units() else [])
)
# Relative error of the layer against the float layer for Gaussian weights: int8 rounding and
# bf16 activations ~0.5%; int4 with groups of 32 ~8%.
FLOAT_TOLERANCE = {"int8": 0.02, "int8/32": 0.02, "int4": 0.15, "bf16": 0.01}


def options(fmt: str | None) -> dict:
    """quantize()'s arguments for a format of the lists above (int4 in groups of 32)."""
    if fmt == "int8/32":
        return {"weights": "int8", "group_size": 32}
    if fmt == "int4":
        return {"weights": "int4", "group_size": 32}
    return {"weights": fmt}


# weights="float32" rounds nothing: it only prepacks the float32 weights for oneDNN.
PACKED = ["float32"] if float32_packing_available() else []
needs_packing = pytest.mark.skipif(not PACKED, reason="oneDNN float32 packing unavailable")


def small_seq2seq() -> Seq2SeqTransformer:
    torch.manual_seed(0)
    config = TransformerConfig(
        vocab_size=20, d_model=64, num_heads=4, d_ff=128, num_decoder_layers=1, dropout=0.0
    )
    return Seq2SeqTransformer(config).eval()


def is_quantized(module: nn.Module) -> bool:
    return isinstance(module, Int8DynamicLinear) or module._get_name() == "DynamicQuantizedLinear"


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("kernel", KERNELS)
def test_returns_a_quantized_copy_and_leaves_the_original_alone(kernel):
    model = small_seq2seq()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    qmodel = quantize(model, kernel=kernel)
    assert qmodel is not model and not qmodel.training
    # The original: same classes, same values.
    for mha in (m for m in model.modules() if isinstance(m, MultiHeadAttention)):
        assert type(mha) is MultiHeadAttention
        assert all(type(getattr(mha, n)) is nn.Linear for n in ("q_proj", "out_proj"))
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    # The copy: every projection and feed-forward layer is int8, nothing else.
    mhas = [m for m in qmodel.modules() if isinstance(m, MultiHeadAttention)]
    assert len(mhas) == 4  # 2 encoder self, 1 decoder self, 1 cross
    for mha in mhas:
        assert isinstance(mha, QuantizedMultiHeadAttention)
        for name in ("q_proj", "k_proj", "v_proj", "out_proj", "qkv_proj"):
            assert is_quantized(getattr(mha, name)), name
    ffs = [m for m in qmodel.modules() if isinstance(m, FeedForward)]
    assert ffs and all(is_quantized(f.linear1) and is_quantized(f.linear2) for f in ffs)
    assert type(qmodel.lm_head) is nn.Linear  # tied to the embedding: stays float


@pytest.mark.parametrize("kernel", KERNELS)
def test_outputs_close_to_float32(kernel):
    model = small_seq2seq()
    qmodel = quantize(model, kernel=kernel)
    src = torch.randint(3, 20, (8, 12))
    tgt = torch.randint(3, 20, (8, 7))
    mask = torch.arange(12) < torch.randint(6, 13, (8, 1))  # (B, Ns) real tokens
    with torch.no_grad():
        ref = model(src, tgt, mask)
        out = qmodel(src, tgt, mask)
    assert 0 < rel_err(out, ref) < LOGIT_TOLERANCE


@pytest.mark.parametrize("kernel", KERNELS)
def test_fused_self_attention_projection_matches_the_separate_ones(kernel):
    mha = MultiHeadAttention(32, 4).eval()
    qmha = quantize(mha, kernel=kernel)
    x = torch.randn(2, 5, 32)
    with torch.no_grad():
        fused = qmha.project(x, x, x)  # one qkv_proj product
        separate = qmha.project(x, x.clone(), x.clone())  # q_proj, k_proj, v_proj
        ref = mha(x).output
        out = qmha(x).output
    for a, b in zip(fused, separate, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert rel_err(out, ref) < LOGIT_TOLERANCE
    assert qmha.bias is True and quantize(MultiHeadAttention(32, 4, bias=False)).bias is False


@pytest.mark.skipif(not torch_kernels_available(), reason="torch.ao quantization unavailable")
def test_plain_quantize_dynamic_breaks_the_fused_path_which_is_why_we_convert():
    mha = MultiHeadAttention(32, 4).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = torch.ao.quantization.quantize_dynamic(mha, {nn.Linear}, dtype=torch.qint8)
        x = torch.randn(1, 3, 32)
        # q_proj.weight etc. are methods of a quantized Linear, not tensors: the float module's
        # fused path (torch.cat of the three weights) fails on them.
        with pytest.raises((TypeError, AttributeError)):
            plain(x)
    assert quantize(mha)(x).output.shape == (1, 3, 32)


@pytest.mark.parametrize("kernel", KERNELS)
def test_quantized_model_still_decodes(kernel):
    model = small_seq2seq()
    qmodel = quantize(model, kernel=kernel)
    src = torch.randint(3, 20, (16, 10))
    ref = greedy_decode(model, src, bos_id=1, eos_id=2, max_len=8)
    out = greedy_decode(qmodel, src, bos_id=1, eos_id=2, max_len=8)
    assert out.dtype == torch.long and out.shape[0] == 16
    assert int(out.min()) >= 0 and int(out.max()) < 20
    # An untrained model has small logit margins, so a few near-ties may flip; the first token
    # depends on one decoder pass only and must mostly agree.
    assert (out[:, 0] == ref[:, 0]).float().mean() >= 0.8


def test_decoder_lm_and_float16_weights():
    torch.manual_seed(0)
    lm = DecoderLM(TransformerConfig(vocab_size=30, d_model=32, num_heads=2, d_ff=64)).eval()
    ids = torch.randint(0, 30, (2, 9))
    with torch.no_grad():
        ref = lm(ids)
        for kernel in KERNELS:
            assert rel_err(quantize(lm, kernel=kernel)(ids), ref) < LOGIT_TOLERANCE
            half = quantize(lm, dtype=torch.float16, kernel=kernel)(ids)
            assert rel_err(half, ref) < 1e-2  # float16 weights only: ~1e-3


def test_bad_arguments():
    with pytest.raises(TypeError, match=r"model must be an nn\.Module"):
        quantize("model")
    with pytest.raises(
        ValueError, match=r"dtype must be torch.qint8 or torch.float16, got torch.int8"
    ):
        quantize(nn.Linear(2, 2), dtype=torch.int8)
    with pytest.raises(TypeError, match=r"dtype must be a torch\.dtype"):
        quantize(nn.Linear(2, 2), dtype="int8")
    with pytest.raises(ValueError, match="kernel must be one of"):
        quantize(nn.Linear(2, 2), kernel="fast")
    with pytest.raises(ValueError, match="already quantized"):
        quantize(quantize(MultiHeadAttention(8, 2)))
    with pytest.raises(TypeError, match=r"linear must be an nn\.Linear"):
        quantized_linear(nn.Conv1d(2, 2, 1))


def test_reference_linear_is_close_and_handles_zero_rows():
    lin = nn.Linear(16, 8)
    with torch.no_grad():
        lin.weight[0].zero_()
    q = Int8DynamicLinear.from_float(lin)
    assert q.weight_q.dtype == torch.int8 and q.weight_scale is not None
    x = torch.randn(5, 16)
    with torch.no_grad():
        assert rel_err(q(x), lin(x)) < 0.02
        torch.testing.assert_close(q(x)[:, 0], lin(x)[:, 0])  # a zero row is just the bias
        assert torch.isfinite(q(torch.zeros(2, 16))).all()


# ------------------------------------------------------------------ batch invariance (issue 12.4)


def gpt_like(seed: int, gain: float = 3.0) -> DecoderLM:
    """A small LM whose weights are scaled up by ``gain``: larger activations make a
    per-tensor activation scale visibly depend on the batch (as in the issue's repro)."""
    torch.manual_seed(seed)
    config = TransformerConfig(
        vocab_size=50, d_model=64, num_heads=4, d_ff=128, num_decoder_layers=2, dropout=0.0
    )
    lm = DecoderLM(config).eval()
    with torch.no_grad():
        for p in lm.parameters():
            if p.dim() == 2:
                p.mul_(gain)
    return lm


def padding_drift(model: nn.Module, ids: torch.Tensor) -> float:
    """Largest change of sequence 0's logits between running it alone and in a batch with
    other sequences and right padding after its 7 real tokens."""
    mask = torch.ones(ids.shape, dtype=torch.bool)
    mask[0, 7:] = False
    with torch.no_grad():
        alone = model(ids[:1, :7])
        batched = model(ids, mask)[:1, :7]
    return float((alone - batched).abs().max())


@pytest.mark.parametrize("weights", [None, *dict.fromkeys([*FORMATS, "bf16"]), *PACKED])
def test_quantized_outputs_do_not_depend_on_batch_mates_or_padding(weights):
    lm = gpt_like(0)
    ids = torch.randint(1, 50, (4, 12))
    float_drift = padding_drift(lm, ids)  # ~5e-7: reordered float sums only
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # bf16 fallback on CPUs without units
        drift = padding_drift(quantize(lm, **options(weights)), ids)
    # The old default (one activation scale per tensor) drifted by ~0.1 here.
    assert drift <= max(10 * float_drift, 1e-5)


@pytest.mark.skipif(not torch_kernels_available(), reason="torch.ao quantization unavailable")
def test_the_per_tensor_kernel_is_what_broke_invariance():
    lm = gpt_like(0)
    ids = torch.randint(1, 50, (4, 12))
    assert padding_drift(quantize(lm, kernel="torch"), ids) > 1e-3


@pytest.mark.parametrize("seed", range(4))
def test_cached_greedy_generation_equals_uncached_with_the_default_kernel(seed):
    qlm = quantize(gpt_like(seed))
    prompt = torch.randint(1, 50, (4, 3), generator=torch.Generator().manual_seed(seed))
    cached = qlm.generate(prompt, 40, use_cache=True)
    assert torch.equal(cached, qlm.generate(prompt, 40, use_cache=False))


# ------------------------------------------------------------------ weight-only layers


def dequantized_weight(layer: nn.Module) -> torch.Tensor:
    """The float64 weight a quantized layer stands for, from its stored integers (the layout
    documented in multihead.quantize.weight_only), independent of the kernels."""
    if isinstance(layer, Int8WeightLinear):
        scale = layer.scale.double().reshape(layer.out_features, -1)  # (N, groups)
        per_input = scale.repeat_interleave(layer.in_features // scale.shape[1], dim=1)
        return layer.qweight.double() * per_input
    if isinstance(layer, Int4WeightLinear):
        low, high = (layer.qweight & 0xF).long(), (layer.qweight >> 4).long()
        q = torch.stack([low, high], dim=-1).flatten(1).double()  # (N', K), even index low
        groups = q.view(q.shape[0], -1, layer.group_size)
        scale = layer.scales_zeros[..., 0].double().t()[..., None]  # (N', groups, 1)
        zero = layer.scales_zeros[..., 1].double().t()[..., None]
        return ((groups - 8) * scale + zero).flatten(1)[: layer.out_features]
    assert isinstance(layer, BF16WeightLinear)
    return layer.weight.double()


@needs_packing
@pytest.mark.parametrize(
    ("k", "n", "bias", "lead"), [(64, 24, True, (3,)), (96, 50, False, (2, 5))]
)
def test_packed_float32_linear_equals_the_float_layer(k, n, bias, lead):
    torch.manual_seed(0)
    lin = nn.Linear(k, n, bias=bias)
    layer = weight_only_linear(lin, "float32", group_size=None)
    assert isinstance(layer, Float32PackedLinear)
    x = torch.randn(*lead, k)
    with torch.no_grad():
        out = layer(x)
        exact = torch.nn.functional.linear(
            x.double(), lin.weight.double(), None if lin.bias is None else lin.bias.double()
        )
    assert out.shape == (*lead, n) and out.dtype == torch.float32
    torch.testing.assert_close(out.double(), exact, rtol=1e-5, atol=1e-5)
    # Its state dict is nn.Linear's, exactly: a float layer's loads into it and back.
    assert layer.state_dict().keys() == lin.state_dict().keys()
    assert torch.equal(layer.state_dict()["weight"], lin.weight)
    other = nn.Linear(k, n, bias=bias)
    other.load_state_dict(layer.state_dict())
    fresh = Float32PackedLinear(k, n, bias)
    fresh.load_state_dict(lin.state_dict())
    with torch.no_grad():
        assert torch.equal(fresh(x), out) and torch.equal(other.weight, lin.weight)
    with pytest.raises(RuntimeError, match=r"expected shape \(24, 64\), got \(24, 63\)"):
        Float32PackedLinear(64, 24).load_state_dict(
            {"weight": torch.zeros(24, 63), "bias": torch.zeros(24)}
        )
    with pytest.raises(RuntimeError, match=r"Missing key.*weight"):
        Float32PackedLinear(64, 24).load_state_dict({"bias": torch.zeros(24)})
    # Another dtype is computed in float32 and comes back in its own.
    with torch.no_grad():
        out64 = layer(x.double())
    assert out64.dtype == torch.float64 and torch.equal(out64, out.double())


@needs_packing
def test_packed_float32_model_decodes_like_the_float_model():
    torch.manual_seed(0)
    config = TransformerConfig(vocab_size=30, d_model=64, num_heads=4, d_ff=128)
    lm = DecoderLM(config).eval()
    q = quantize(lm, weights="float32")
    assert isinstance(q.lm_head, Float32PackedLinear) and type(lm.lm_head) is nn.Linear
    assert quantization_of(q) == {"weights": "float32"}
    ids = torch.randint(0, 30, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(q(ids), lm(ids), rtol=1e-5, atol=1e-5)
    prompt = ids[:1, :4]
    with torch.no_grad():
        steps = q.generate(prompt, 6, do_sample=False, use_cache=True)
        # Each generated token is the float model's argmax on the packed model's own prefix.
        logits = lm(steps[:, :-1])[0, 3:]
    torch.testing.assert_close(
        logits.gather(-1, steps[0, 4:, None]).squeeze(-1), logits.max(-1).values, atol=1e-4, rtol=0
    )
    with pytest.raises(ValueError, match="already quantized"):
        quantize(q, weights="float32")
    # A float model's state dict lacks the fused q/k/v copy: refused even with strict=False,
    # which would otherwise leave self-attention on the old weights.
    other = DecoderLM(config).state_dict()
    for strict in (True, False):
        with pytest.raises(ValueError, match=r"qkv_proj: the checkpoint has no fused q/k/v"):
            q.load_state_dict(other, strict=strict)
    twin = copy.deepcopy(q)
    assert not twin.training and twin.lm_head is not q.lm_head
    with torch.no_grad():
        assert torch.equal(twin(ids), q(ids))
    wide = quantize(copy.deepcopy(lm).double(), weights="float32")
    with torch.no_grad():
        assert wide(ids).dtype == torch.float64


@pytest.mark.parametrize("weights", FORMATS)
@pytest.mark.parametrize(
    ("k", "n", "bias", "lead"), [(64, 24, True, (3,)), (128, 50, False, (2, 5))]
)
def test_weight_only_linear_computes_its_stored_weights(weights, k, n, bias, lead):
    torch.manual_seed(0)
    lin = nn.Linear(k, n, bias=bias)
    layer = weight_only_linear(
        lin, options(weights)["weights"], group_size=options(weights).get("group_size")
    )
    x = torch.randn(*lead, k)
    with torch.no_grad():
        out = layer(x)
        exact = torch.nn.functional.linear(
            x.double(), dequantized_weight(layer), None if lin.bias is None else lin.bias.double()
        )
        ref = lin(x)
    assert out.shape == (*lead, n) and out.dtype == torch.float32
    if getattr(layer, "_native", False):  # multihead's int8 kernel: float32 arithmetic
        assert rel_err(out.double(), exact) < 1e-6
    else:  # PyTorch's kernels see bf16 activations and round to bf16: ~2^-8 relative
        assert rel_err(out.double(), exact) < 1e-2
    assert rel_err(out, ref) < FLOAT_TOLERANCE[weights]


def test_weight_only_quantizes_every_linear_and_the_head_and_leaves_the_original():
    torch.manual_seed(0)
    config = TransformerConfig(vocab_size=30, d_model=64, num_heads=2, d_ff=128, ffn="gated")
    lm = DecoderLM(config).eval()
    q = quantize(lm, weights="int8")
    assert not any(type(m) is nn.Linear for m in q.modules())
    assert all(type(m) is not Int8WeightLinear for m in lm.modules())
    assert isinstance(q.lm_head, Int8WeightLinear) and q.lm_head.out_features == 30
    assert type(q.decoder.embedding) is nn.Embedding  # a step reads one row of it: stays float
    assert quantization_of(q) == {"weights": "int8"} and quantization_of(lm) is None
    ids = torch.randint(0, 30, (2, 9))
    with torch.no_grad():
        assert rel_err(q(ids), lm(ids)) < 0.05
        mha = q.decoder.layers[0].self_attn
        x = torch.randn(2, 5, 64)
        for a, b in zip(mha.project(x, x, x), mha.project(x, x.clone(), x.clone()), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-2, atol=1e-3)  # fused == separate


# ------------------------------------------------------------------ bad input and checkpoints


def test_bad_weight_only_arguments(monkeypatch):
    lm = DecoderLM(TransformerConfig(vocab_size=20, d_model=32, num_heads=2, d_ff=64))
    with pytest.raises(ValueError, match="already quantized"):
        quantize(quantize(lm, weights="int8"), weights="int4")
    with pytest.raises(ValueError, match="already quantized"):
        quantize(quantize(lm), weights="int8")
    with pytest.raises(ValueError, match=r"weights must be one of .* got 'int2'"):
        quantize(lm, weights="int2")
    with pytest.raises(TypeError, match="weights must be a str"):
        quantize(lm, weights=8)
    with pytest.raises(ValueError, match="dtype and kernel belong to the dynamic mode"):
        quantize(lm, weights="int8", kernel="torch")
    with pytest.raises(ValueError, match=r"group_size=48 must divide .* \[32, 64\]"):
        quantize(lm, weights="int4", group_size=48)
    monkeypatch.setattr(quantize_package, "int4_kernel_available", lambda: False)
    with pytest.raises(ValueError, match=r"_weight_int4pack_mm_for_cpu.*use weights='int8'"):
        quantize(lm, weights="int4")


@pytest.mark.parametrize(
    ("weights", "probe", "notice"),
    [
        ("bf16", "bf16_units", "no bf16 units"),
        ("float32", "float32_packing_available", "oneDNN's packed float32 linear does not run"),
    ],
)
def test_formats_fall_back_to_float32_with_a_notice_where_the_cpu_lacks_the_kernel(
    monkeypatch, weights, probe, notice
):
    monkeypatch.setattr(quantize_package, probe, lambda: False)
    lm = DecoderLM(TransformerConfig(vocab_size=20, d_model=32, num_heads=2, d_ff=64))
    with pytest.warns(RuntimeWarning, match=f"{notice}.*keeping float32") as record:
        q = quantize(lm, weights=weights)
    assert len(record) == 1 and len(str(record[0].message).splitlines()) == 1
    assert type(q.lm_head) is nn.Linear
    assert quantization_of(q) == {"weights": weights, "fallback": "float32"}
    with pytest.raises(ValueError, match="already quantized"):
        quantize(q, weights=weights)


@pytest.mark.parametrize("weights", [None, *FORMATS, *PACKED])
def test_quantized_checkpoints_save_and_load(weights, tmp_path):
    config = TransformerConfig(vocab_size=20, d_model=64, num_heads=2, d_ff=128)
    torch.manual_seed(0)
    lm = DecoderLM(config).eval()
    q = quantize(lm, **options(weights))
    path = tmp_path / "q.pt"
    save_quantized(q, path)
    torch.manual_seed(1)
    again = load_quantized(path, DecoderLM(config))  # another float skeleton
    ids = torch.randint(0, 20, (2, 7))
    with torch.no_grad():
        assert torch.equal(again(ids), q(ids))
    assert [p.name for p in tmp_path.iterdir()] == ["q.pt"]  # no temporary file left


def test_float_and_quantized_checkpoints_are_not_confused(tmp_path):
    config = TransformerConfig(vocab_size=20, d_model=64, num_heads=2, d_ff=128)
    lm = DecoderLM(config)
    float_path = tmp_path / "float.pt"
    torch.save(lm.state_dict(), float_path)
    with pytest.raises(ValueError, match="not a quantized checkpoint"):
        load_quantized(float_path, DecoderLM(config))
    for weights in FORMATS:
        q = quantize(lm, **options(weights))
        with pytest.raises(
            ValueError, match=r"holds (float|bf16) weights|is torch.float32|no fused q/k/v"
        ):
            q.load_state_dict(torch.load(float_path, weights_only=True))
    q_path = tmp_path / "q.pt"
    save_quantized(quantize(lm, weights="int8"), q_path)
    with pytest.raises(ValueError, match="not a quantized model"):
        load_quantized(q_path, quantize(lm, weights="int8"))
    with pytest.raises(ValueError, match="another configuration"):
        load_quantized(q_path, DecoderLM(TransformerConfig(vocab_size=20, d_model=64, num_heads=2)))
    with pytest.raises(ValueError, match="not a quantized model made by"):
        save_quantized(lm, tmp_path / "x.pt")


# ------------------------------------------------------------------ threads and the command


def test_thread_policy(monkeypatch):
    before = torch.get_num_threads()
    try:
        monkeypatch.setattr(threads.os, "getloadavg", lambda: (1000.0, 0.0, 0.0))
        assert threads.default_threads() == 1  # busy: one thread
        monkeypatch.setattr(threads.os, "getloadavg", lambda: (0.0, 0.0, 0.0))
        assert threads.default_threads() == threads.physical_cores()
        assert threads.apply_thread_policy(1) == 1 and torch.get_num_threads() == 1
        with pytest.raises(ValueError, match="threads must be >= 1, got 0"):
            threads.apply_thread_policy(0)
    finally:
        torch.set_num_threads(before)


def test_generate_command_runs_a_quantized_model(tiny_text_generate, capsys):
    from multihead.cli import main

    base = tiny_text_generate
    capsys.readouterr()
    texts = {}
    for mode in ("none", "dynamic", "int8", "int4", *PACKED):
        assert main([*base, "--quantize", mode]) == 0
        texts[mode] = json.loads(capsys.readouterr().out)["text"]
    assert all(len(t) == 5 for t in texts.values())
    assert main([*base, "--quantize", "int3"]) == 2  # a usage error: one line, exit 2
    assert "invalid choice" in capsys.readouterr().err
