"""``torch.compile`` of MultiHeadAttention: one graph (``fullgraph=True`` raises on any graph
break), and the same outputs and gradients as eager mode, with a padding mask and causality.

Kept to one tiny module so that it runs in CI in well under a minute: the default backend is
compiled with inductor (C++ for the CPU: it needs a working compiler, else the test skips), the
math backend (the one ONNX export uses) with ``aot_eager``, which traces forward and backward
the same way but skips code generation.
"""

from __future__ import annotations

import shutil

import pytest
import torch

from multihead import MultiHeadAttention


def _compiler_available() -> bool:
    from torch._inductor import config

    return shutil.which(config.cpp.cxx[0] or "g++") is not None or shutil.which("g++") is not None


def _compile_or_explain(fn: object, *args: object, **kwargs: object) -> object:
    """Run ``fn``; only a missing C++ compiler skips, any compile error fails the test."""
    try:
        return fn(*args, **kwargs)  # type: ignore[operator]
    except Exception as error:
        if "InvalidCxxCompiler" in type(error).__name__:
            pytest.skip(f"inductor cannot compile C++ here: {error}")
        raise


@pytest.mark.parametrize(("backend", "compiler"), [("auto", "inductor"), ("math", "aot_eager")])
def test_compiled_mha_matches_eager_without_graph_breaks(backend: str, compiler: str) -> None:
    if compiler == "inductor" and not _compiler_available():
        pytest.skip("inductor needs a C++ compiler (g++)")
    torch._dynamo.reset()
    torch.manual_seed(0)
    mha = MultiHeadAttention(32, 4, num_kv_heads=2, backend=backend)
    x = torch.randn(3, 6, 32)
    padding = torch.ones(3, 6, dtype=torch.bool)
    padding[1, 4:] = False
    padding[2, :] = False  # a row with no key at all: zeros and finite gradients

    def step(module: torch.nn.Module, inp: torch.Tensor) -> tuple[torch.Tensor, ...]:
        module.zero_grad(set_to_none=True)
        inp = inp.clone().requires_grad_(True)
        out, _ = module(inp, key_padding_mask=padding, causal=True)
        # A weighted sum, so every output element has its own gradient.
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        assert inp.grad is not None
        grads = tuple(p.grad for p in module.parameters() if p.grad is not None)
        return (out.detach(), inp.grad, *grads)

    compiled = torch.compile(mha, backend=compiler, fullgraph=True, dynamic=False)
    got = _compile_or_explain(step, compiled, x)
    expected = step(mha, x)
    assert isinstance(got, tuple)
    for a, b in zip(got, expected, strict=True):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert torch.equal(got[0][2], torch.zeros_like(got[0][2]))  # the empty row
