"""multihead.quantize: a quantized copy, int8 layers, outputs close to float32, still decodes."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from multihead import MultiHeadAttention
from multihead.decoding import greedy_decode
from multihead.modules.feedforward import FeedForward
from multihead.modules.models import DecoderLM, Seq2SeqTransformer, TransformerConfig
from multihead.quantize import (
    Int8DynamicLinear,
    QuantizedMultiHeadAttention,
    quantize,
    quantized_linear,
    torch_kernels_available,
)

KERNELS = ["reference", "int8pack"] + (["torch"] if torch_kernels_available() else [])
# Relative Frobenius error of the logits of the small model below, measured: ~1.7% with
# PyTorch's kernel (one 7-bit scale per activation tensor) and ~1.0% with the reference kernel
# (8-bit, one scale per token). The bound leaves a 4x margin over the worse of the two, and is
# still far below what a wrong scale or a swapped q/k/v block gives (errors of order 100%).
LOGIT_TOLERANCE = 0.08


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
