"""The library on a CUDA device, against the same independent references as on the CPU.

Skipped where there is no CUDA device (CI has none); run on a GPU machine with
``python -m pytest tests/test_cuda.py``.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from multihead import MultiHeadAttention
from multihead.functional import attention, backend_names
from multihead.modules.models import DecoderLM, TransformerConfig
from multihead.quantize import quantize
from oracle import allowed_matrix, attention64, int8_dequantized64

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
CUDA = "cuda"
# Tolerances against float64: float32 storage (TF32 is off in PyTorch's defaults for
# matmuls), half/bf16 storage with float32 accumulation.
TOL = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def masked_case(
    b: int, h: int, nq: int, nk: int, d: int, dtype: torch.dtype
) -> tuple[torch.Tensor, ...]:
    torch.manual_seed(0)
    q, k, v = (torch.randn(b, h, n, d, device=CUDA, dtype=dtype) for n in (nq, nk, nk))
    keep = torch.rand(b, 1, nq, nk, device=CUDA) > 0.3
    keep[0, 0, 0] = False  # one query sees no key at all
    return q, k, v, keep


@pytest.mark.parametrize("backend", ["auto", *backend_names()])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_attention_matches_float64_on_cuda(backend, dtype):
    q, k, v, keep = masked_case(2, 4, 9, 13, 16, dtype)
    approximate = backend in ("linear", "lowrank")  # not exact softmax attention by design
    mask = None if approximate or backend == "local" else keep
    window = 3 if backend == "local" else None
    try:
        out = attention(q, k, v, mask, causal=True, window=window, backend=backend).output
    except ValueError as exc:  # a backend that refuses this call says why
        pytest.skip(f"{backend} refused: {exc}")
    assert out.device.type == "cuda" and out.dtype == dtype
    assert torch.isfinite(out).all()  # the fully masked row gives zeros, not NaN
    if approximate:
        return
    allowed = allowed_matrix(9, 13, causal=True, window=window)  # (Nq, Nk) on the CPU
    full = allowed if mask is None else keep.cpu() & allowed
    expected, _ = attention64(q.cpu(), k.cpu(), v.cpu(), full)  # float64 on the CPU
    tol = TOL[dtype]
    torch.testing.assert_close(out.cpu().double(), expected, atol=tol, rtol=tol)


def test_attention_gradients_on_cuda_in_float64():
    torch.manual_seed(0)
    q, k, v = (
        torch.randn(1, 2, n, 4, device=CUDA, dtype=torch.float64, requires_grad=True)
        for n in (3, 5, 5)
    )
    keep = torch.rand(1, 1, 3, 5, device=CUDA) > 0.3
    keep[..., 0] = True
    assert torch.autograd.gradcheck(lambda q, k, v: attention(q, k, v, keep).output, (q, k, v))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_module_matches_torch_multihead_attention_on_cuda(dtype):
    torch.manual_seed(0)
    theirs = nn.MultiheadAttention(32, 4, batch_first=True).to(CUDA, dtype).eval()
    ours = MultiHeadAttention.from_torch(theirs).to(CUDA, dtype).eval()
    x = torch.randn(3, 7, 32, device=CUDA, dtype=dtype)
    pad = torch.zeros(3, 7, dtype=torch.bool, device=CUDA)
    pad[1, 4:] = True  # torch: True = padding
    with torch.no_grad():
        expected, _ = theirs(x, x, x, key_padding_mask=pad, need_weights=False)
        got, _ = ours(x, key_padding_mask=~pad)
    tol = TOL[dtype] * 4
    torch.testing.assert_close(got, expected, atol=tol, rtol=tol)


def test_decoder_lm_on_cuda_decodes_like_float64_on_the_cpu():
    torch.manual_seed(0)
    config = TransformerConfig(
        vocab_size=50, d_model=64, num_heads=4, d_ff=128, num_decoder_layers=2, dropout=0.0
    )
    lm = DecoderLM(config).eval()
    reference = copy.deepcopy(lm).double()
    gpu = lm.to(CUDA)
    prompt = torch.randint(0, 50, (2, 5))
    with torch.no_grad():
        tokens = gpu.generate(prompt.to(CUDA), 12).cpu()
        logits = reference(tokens[:, :-1])[:, 4:]  # (B, 12, V) on the CPU, float64
    chosen = logits.gather(-1, tokens[:, 5:, None]).squeeze(-1)
    # Each token is float64's argmax on the GPU model's own prefix, up to float32 rounding.
    assert (logits.max(-1).values - chosen).max() < 1e-4
    with torch.no_grad():
        torch.testing.assert_close(
            gpu(tokens.to(CUDA)).double().cpu(), reference(tokens), atol=1e-4, rtol=1e-4
        )


def test_training_step_on_cuda_lowers_the_loss():
    torch.manual_seed(0)
    config = TransformerConfig(vocab_size=20, d_model=32, num_heads=4, d_ff=64, dropout=0.0)
    lm = DecoderLM(config).to(CUDA).train()
    ids = torch.randint(0, 20, (8, 12), device=CUDA)
    opt = torch.optim.Adam(lm.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        logits = lm(ids[:, :-1])
        loss = nn.functional.cross_entropy(logits.reshape(-1, 20), ids[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - math.log(2)  # memorising 8 sequences: a clear drop


def test_int8_model_decodes_through_the_lean_step_on_cuda():
    # PyTorch's CUDA _weight_int8pack_mm under the quantized layers and the lean step; the
    # reference is the float model with the int8 weights (codes x scales) in float64 on the CPU.
    torch.manual_seed(0)
    config = TransformerConfig(
        vocab_size=50,
        d_model=64,
        num_heads=4,
        num_kv_heads=2,
        d_ff=128,
        positional="rope",
        dropout=0.0,
    )
    lm = DecoderLM(config).eval()
    q = quantize(lm, weights="int8")
    reference = int8_dequantized64(lm, q)
    gpu = q.to(CUDA)
    assert gpu._lean_stepper(16) is not None
    prompt = torch.randint(0, 50, (2, 5))
    with torch.no_grad():
        tokens = gpu.generate(prompt.to(CUDA), 10).cpu()
        logits = reference(tokens[:, :-1])[:, 4:]
    chosen = logits.gather(-1, tokens[:, 5:, None]).squeeze(-1)
    # Activations enter the kernel in bf16 (~0.4% per element): each token is the float64
    # argmax up to that rounding.
    assert (logits.max(-1).values - chosen).max() < 2e-2
