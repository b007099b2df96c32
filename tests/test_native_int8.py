"""multihead's int8 kernel (multihead.quantize.native): against float64 written plainly, how it
is built and cached, and what happens where it cannot be built."""

from __future__ import annotations

import copy
import os
import platform
import tempfile
import time
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import multihead.quantize as quantize_package
from multihead import _native
from multihead.modules.models import DecoderLM, TransformerConfig
from multihead.quantize import kernels, native, quantization_of, quantize, weight_only
from multihead.quantize.weight_only import Int8WeightLinear
from oracle import int8_dequantized64

needs_native = pytest.mark.skipif(
    not native.native_available(), reason=f"no int8 kernel here: {native.native_problem()}"
)


def reference(x, codes, scale, bias):
    """float64: x @ (codes * scale per group)^T + bias."""
    n, k = codes.shape
    per_input = scale.double().repeat_interleave(k // scale.shape[1], dim=1)  # (N, K)
    y = x.double() @ (codes.double() * per_input).T
    return y if bias is None else y + bias.double()


def operands(m, n, k, groups, bias, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g)
    codes = torch.randint(-127, 128, (n, k), generator=g, dtype=torch.int8)
    scale = torch.rand(n, groups, generator=g) * 0.02 + 1e-3
    b = torch.randn(n, generator=g) if bias else None
    return x, codes, scale, b


def close(got, expected, x, codes, scale):
    # float32 sums of K products: a bound from the magnitudes, not from the result.
    n, k = codes.shape
    per_input = scale.double().repeat_interleave(k // scale.shape[1], dim=1)
    size = x.double().abs() @ (codes.double().abs() * per_input).T
    assert got.dtype == torch.float32
    assert bool(((got.double() - expected).abs() <= 4 * k * 2**-24 * size + 1e-6).all())


@needs_native
@pytest.mark.parametrize("m", [1, 2, 3, 4, 5, 9])
@pytest.mark.parametrize(
    ("n", "k", "groups"),
    [(1, 16, 1), (7, 64, 1), (33, 96, 3), (5, 768, 6), (4, 40, 2), (3, 10, 1), (6, 200, 5)],
)
@pytest.mark.parametrize("bias", [True, False])
def test_kernel_equals_float64(m, n, k, groups, bias):
    # k=40/groups 2, k=10, k=200/groups 5: groups that are not a multiple of the vector width.
    x, codes, scale, b = operands(m, n, k, groups, bias)
    got = native.int8_mm(x, codes, scale, b)
    assert got.shape == (m, n)
    close(got, reference(x, codes, scale, b), x, codes, scale)


@needs_native
@settings(max_examples=40, deadline=None)
@given(
    m=st.integers(0, 6),
    n=st.integers(0, 20),
    k_per_group=st.integers(1, 70),
    groups=st.integers(1, 4),
    bias=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_kernel_equals_float64_on_any_shape(m, n, k_per_group, groups, bias, seed):
    x, codes, scale, b = operands(m, n, k_per_group * groups, groups, bias, seed)
    got = native.int8_mm(x, codes, scale, b)
    assert got.shape == (m, n)
    close(got, reference(x, codes, scale, b), x, codes, scale)


@needs_native
def test_threads_split_the_rows_without_changing_a_bit():
    x, codes, scale, b = operands(3, 301, 128, 2, True)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = native.int8_mm(x, codes, scale, b)
        torch.set_num_threads(2)
        two = native.int8_mm(x, codes, scale, b)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, two)  # each output element is one thread's, summed in one order


@needs_native
def test_inputs_are_made_contiguous_float32_and_rows_do_not_mix():
    x, codes, scale, b = operands(6, 9, 64, 2, True)
    wide = torch.cat([x, x], dim=1)[:, :64]  # a strided view
    assert torch.equal(native.int8_mm(wide, codes, scale, b), native.int8_mm(x, codes, scale, b))
    # Row i of the output depends on row i of the input only (no batch-wide state).
    alone = native.int8_mm(x[4:5], codes, scale, b)
    assert torch.equal(alone, native.int8_mm(x, codes, scale, b)[4:5])
    assert native.int8_mm(x.double(), codes, scale, b).dtype == torch.float32


@needs_native
@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"x": torch.zeros(2, 63)}, r"x must have 64 columns to match codes \(N, 64\)"),
        ({"x": torch.zeros(64)}, r"x must be a 2-D floating-point"),
        ({"x": torch.zeros(2, 64, dtype=torch.long)}, r"x must be a 2-D floating-point"),
        ({"codes": torch.zeros(5, 64)}, r"codes must be int8 \(N, K\), got torch.float32"),
        ({"codes": torch.zeros(64, 5, dtype=torch.int8).t()}, r"codes must be a contiguous"),
        ({"scale": torch.ones(5, 3)}, r"scale must be contiguous float32 \(5, G\).*dividing 64"),
        ({"scale": torch.ones(5, 2).double()}, r"scale must be contiguous float32"),
        ({"scale": torch.ones(4, 2)}, r"scale must be .* \(5, G\)"),
        ({"bias": torch.ones(4)}, r"bias must be contiguous float32 \(5,\)"),
        ({"bias": torch.ones(5).double()}, r"bias must be contiguous float32"),
    ],
)
def test_operands_that_do_not_fit_are_refused(change, words):
    args = {
        "x": torch.zeros(2, 64),
        "codes": torch.zeros(5, 64, dtype=torch.int8),
        "scale": torch.ones(5, 2),
        "bias": torch.zeros(5),
    }
    args.update(change)
    with pytest.raises(ValueError, match=words):
        native.int8_mm(args["x"], args["codes"], args["scale"], args["bias"])


@needs_native
def test_an_empty_sum_gives_the_bias():
    y = native.int8_mm(
        torch.randn(2, 0), torch.zeros(3, 0, dtype=torch.int8), torch.ones(3, 1), None
    )
    assert torch.equal(y, torch.zeros(2, 3))
    bias = torch.tensor([1.0, 2.0, 3.0])
    got = native.int8_mm(
        torch.randn(2, 0), torch.zeros(3, 0, dtype=torch.int8), torch.ones(3, 1), bias
    )
    assert torch.equal(got, bias.expand(2, 3))
    layer = Int8WeightLinear(8, 0)
    assert layer(torch.randn(2, 8)).shape == (2, 0)


@needs_native
@pytest.mark.parametrize("rows", [1, 5, 31, 32, 100])
@pytest.mark.parametrize("group_size", [None, 16])
def test_the_layer_equals_float64_below_and_above_the_gemm_switch(rows, group_size):
    # From 32 rows on (a prompt) the layer multiplies the dequantized float32 weight with a
    # GEMM; below, the kernel. Both against float64 of the same codes and scales.
    torch.manual_seed(rows)
    layer = Int8WeightLinear.from_float(nn.Linear(64, 24), group_size=group_size)
    x = torch.randn(rows, 64)
    expected = reference(x, layer.qweight, layer.scale.reshape(24, -1), layer.bias)
    close(layer(x), expected, x, layer.qweight, layer.scale.reshape(24, -1))


@needs_native
@pytest.mark.parametrize("rows", [3, 40])
def test_gradients_flow_to_the_input_as_float64_says(rows):
    torch.manual_seed(0)
    layer = Int8WeightLinear.from_float(nn.Linear(48, 10), group_size=16)
    x = torch.randn(rows, 48, requires_grad=True)
    weights = torch.randn(rows, 10)
    (layer(x) * weights).sum().backward()
    x64 = x.detach().double().requires_grad_()
    y64 = reference(x64, layer.qweight, layer.scale, layer.bias)
    (y64 * weights.double()).sum().backward()
    torch.testing.assert_close(x.grad.double(), x64.grad, rtol=1e-5, atol=1e-5)


@needs_native
def test_a_cast_module_still_multiplies_in_float32():
    layer = Int8WeightLinear.from_float(nn.Linear(32, 6))
    x = torch.randn(4, 32, dtype=torch.float64)
    expected = reference(x, layer.qweight, layer.scale.reshape(6, 1), layer.bias)
    got = copy.deepcopy(layer).double()(x)
    assert got.dtype == torch.float64
    close(got.float(), expected, x, layer.qweight, layer.scale.reshape(6, 1))


@pytest.mark.parametrize(
    ("bad", "error", "words"),
    [
        (True, TypeError, "group_size must be an int or None, got bool"),
        (16.0, TypeError, "group_size must be an int or None, got float"),
        (0, ValueError, "group_size must be >= 1, got 0"),
        (-32, ValueError, "group_size must be >= 1, got -32"),
        (7, ValueError, "group_size must divide in_features=64, got 7"),
    ],
)
def test_the_layer_refuses_a_group_size_that_does_not_fit(bad, error, words):
    with pytest.raises(error, match=words):
        Int8WeightLinear(64, 8, group_size=bad)


# ------------------------------------------------------------------ building and caching


@pytest.fixture
def fresh_library(monkeypatch, tmp_path):
    """A clean build state (environment, cache directory), restored afterwards."""
    monkeypatch.setenv("MULTIHEAD_CACHE_DIR", str(tmp_path))
    for name in ("MULTIHEAD_NATIVE", "MULTIHEAD_CFLAGS", "CC"):
        monkeypatch.delenv(name, raising=False)
    _native._library.cache_clear()
    yield tmp_path
    _native._library.cache_clear()


@needs_native
def test_the_build_lands_in_the_cache_whole_and_is_reused(fresh_library):
    assert native.native_problem() is None
    built = sorted(p.name for p in (fresh_library / "kernels").iterdir())
    assert len(built) == 1 and built[0].endswith(".so")  # no temporary file left
    assert native.vector_lanes() in (1, 8, 16)
    mtime = (fresh_library / "kernels" / built[0]).stat().st_mtime_ns
    _native._library.cache_clear()
    assert native.native_problem() is None  # loaded from the cache, not rebuilt
    assert (fresh_library / "kernels" / built[0]).stat().st_mtime_ns == mtime


@needs_native
def test_a_cache_that_cannot_be_written_builds_in_a_private_temporary_directory(
    fresh_library, monkeypatch
):
    blocked = fresh_library / "a-file"
    blocked.write_text("not a directory")
    monkeypatch.setenv("MULTIHEAD_CACHE_DIR", str(blocked))
    monkeypatch.setattr(tempfile, "tempdir", str(fresh_library))  # where the fallback goes
    assert native.native_problem() is None
    assert blocked.read_text() == "not a directory"
    # The private directory is removed once the library is loaded (the mapping stays).
    assert sorted(p.name for p in fresh_library.iterdir()) == ["a-file"]
    x, codes, scale, b = operands(2, 5, 64, 2, True)
    close(native.int8_mm(x, codes, scale, b), reference(x, codes, scale, b), x, codes, scale)


X86 = platform.machine().lower() in ("x86_64", "amd64")


@needs_native
@pytest.mark.skipif(not X86, reason="the AVX2 and plain C paths are chosen by x86 flags")
@pytest.mark.parametrize(("flags", "lanes"), [("-mno-avx512f", 8), ("-mno-avx2 -mno-avx512f", 1)])
def test_the_avx2_and_plain_c_paths_equal_float64(fresh_library, monkeypatch, flags, lanes):
    # Build the other vector paths on this CPU (a CPU without AVX-512 or AVX2 gets them).
    monkeypatch.setenv("MULTIHEAD_CFLAGS", flags)
    assert native.native_problem() is None
    if lanes == 8 and "avx2" not in kernels.cpu_flags():
        pytest.skip("no AVX2 here")
    assert native.vector_lanes() == lanes
    for m, n, k, groups in [(1, 7, 64, 1), (5, 9, 96, 3), (3, 4, 40, 2), (2, 3, 10, 1)]:
        x, codes, scale, b = operands(m, n, k, groups, True, seed=k)
        close(native.int8_mm(x, codes, scale, b), reference(x, codes, scale, b), x, codes, scale)


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"MULTIHEAD_NATIVE": "0"}, "MULTIHEAD_NATIVE=0"),
        ({"CC": "no-such-compiler-here"}, "no C compiler .*no-such-compiler-here"),
        ({"CC": "false"}, "does not run"),
    ],
)
def test_without_a_compiler_it_says_why(fresh_library, monkeypatch, env, words):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert not native.native_available()
    assert native.native_problem() is not None
    with pytest.raises(RuntimeError, match=words):
        native.int8_mm(*operands(1, 2, 16, 1, False))
    assert not (fresh_library / "kernels").exists() or not os.listdir(fresh_library / "kernels")


def test_a_hanging_compiler_is_given_up_with_its_children(fresh_library, monkeypatch, tmp_path):
    # Answers --version, then hangs (with a child of its own) on everything else.
    fake = tmp_path / "hangcc"
    fake.write_text(
        '#!/bin/sh\nif [ "$1" = "--version" ]; then echo fake 1.0; exit 0; fi\n'
        "sleep 60 & sleep 60\n"
    )
    fake.chmod(0o755)
    monkeypatch.setenv("CC", str(fake))
    monkeypatch.setattr(_native, "_BUDGET_S", 1.5)
    start = time.monotonic()
    problem = native.native_problem()
    assert time.monotonic() - start < 20
    assert problem is not None and "timed out" in problem
    assert list((fresh_library / "kernels").iterdir()) == []  # no partial build left


def test_a_cc_that_cannot_be_split_says_so(fresh_library, monkeypatch):
    monkeypatch.setenv("CC", "gcc '-O2")
    assert "cannot be split into words" in native.native_problem()


@needs_native
@pytest.mark.parametrize("how", ["assign", "data", "expand"])
def test_replaced_codes_that_do_not_fit_are_refused_not_read(how):
    # The kernel trusts its pointers: whatever happens to the buffers between calls, every
    # call checks them (a too-small buffer would otherwise be read past its end).
    layer = Int8WeightLinear.from_float(nn.Linear(256, 64))
    x = torch.randn(1, 256)
    layer(x)
    if how == "assign":
        layer.qweight = torch.zeros(64, 16, dtype=torch.int8)
    elif how == "data":
        layer.qweight.data = torch.zeros(64, 16, dtype=torch.int8)
    else:
        layer.qweight.data = torch.zeros(1, 256, dtype=torch.int8).expand(64, 256)
    with pytest.raises(ValueError, match=r"codes must be|x must have"):
        layer(x)


@needs_native
def test_weights_changed_in_place_are_the_weights_multiplied():
    layer = Int8WeightLinear.from_float(nn.Linear(64, 8)).double()
    x = torch.randn(2, 64, dtype=torch.float64)
    layer(x)
    fresh = Int8WeightLinear.from_float(nn.Linear(64, 8))
    layer.load_state_dict(fresh.state_dict())  # copied into the same (float64) buffers
    with torch.no_grad():
        layer.bias.add_(1.0)
    expected = reference(x, fresh.qweight, fresh.scale.reshape(8, 1), fresh.bias + 1.0)
    close(layer(x).float(), expected, x, fresh.qweight, fresh.scale.reshape(8, 1))


@pytest.fixture
def no_native(monkeypatch):
    """This machine as one without a C compiler."""
    monkeypatch.setattr(_native, "_library", lambda *_: "no C compiler (test)")


def small_lm() -> DecoderLM:
    torch.manual_seed(0)
    return DecoderLM(
        TransformerConfig(vocab_size=30, d_model=64, num_heads=2, d_ff=128, dropout=0.0)
    ).eval()


def test_per_channel_int8_falls_back_to_torch_with_one_notice(no_native, monkeypatch):
    monkeypatch.setattr(weight_only, "_warn_int8_fallback", _fresh_warning())
    lm = small_lm()
    with pytest.warns(RuntimeWarning, match=r"no C compiler \(test\).*_weight_int8pack_mm") as w:
        q = quantize(lm, weights="int8")
    assert len(w) == 1 and len(str(w[0].message).splitlines()) == 1
    assert not q.lm_head._native
    ids = torch.randint(0, 30, (2, 7))
    with torch.no_grad():
        rel = (q(ids) - lm(ids)).norm() / lm(ids).norm()
    assert rel < 0.05


def test_loading_an_int8_checkpoint_without_the_kernel_says_so(tmp_path, monkeypatch):
    path = tmp_path / "q.pt"
    quantize_package.save_quantized(quantize(small_lm(), weights="int8"), path)
    monkeypatch.setattr(_native, "_library", lambda *_: "no C compiler (test)")
    monkeypatch.setattr(weight_only, "_warn_int8_fallback", _fresh_warning())
    with pytest.warns(RuntimeWarning, match=r"no C compiler \(test\)"):
        loaded = quantize_package.load_quantized(path, small_lm())
    assert not loaded.lm_head._native


def _fresh_warning():
    import functools

    return functools.cache(weight_only._warn_int8_fallback.__wrapped__)


def test_grouped_int8_without_the_kernel_names_the_alternative(no_native):
    with pytest.raises(ValueError, match=r"group_size=32 needs multihead's int8 kernel.*leave"):
        quantize(small_lm(), weights="int8", group_size=32)
    with pytest.raises(RuntimeError, match="group_size=32 need multihead's int8 kernel"):
        Int8WeightLinear(64, 8, group_size=32)


def test_int8_with_no_kernel_at_all_is_refused(no_native, monkeypatch):
    monkeypatch.setattr(quantize_package, "int8_kernel_available", lambda: False)
    with pytest.raises(ValueError, match=r"_weight_int8pack_mm \(or multihead's int8 kernel"):
        quantize(small_lm(), weights="int8")


# ------------------------------------------------------------------ grouped int8 models


@needs_native
@pytest.mark.parametrize("group_size", [16, 32, 64])
def test_grouped_int8_model_equals_float64_with_its_weights(group_size):
    lm = small_lm()
    q = quantize(lm, weights="int8", group_size=group_size)
    assert quantization_of(q) == {"weights": "int8", "group_size": group_size}
    assert q.lm_head.scale.shape == (30, 64 // group_size)
    ids = torch.randint(0, 30, (2, 9))
    with torch.no_grad():
        got = q(ids).double()
        expected = int8_dequantized64(lm, q)(ids)
    torch.testing.assert_close(got, expected, atol=1e-4 * float(expected.abs().max()), rtol=0)
    # Finer groups round the weights closer than one scale per row (64: the whole row).
    per_row = quantize(lm, weights="int8")
    weight = lm.lm_head.weight.detach().double()
    err = {
        name: float((int8_dequantized64(lm, model).lm_head.weight.detach() - weight).norm())
        for name, model in (("group", q), ("row", per_row))
    }
    assert err["group"] < err["row"] if group_size < 64 else err["group"] == err["row"]


@needs_native
def test_grouped_int8_gptq_keeps_the_grid_and_fuses_q_k_v():
    lm = small_lm()
    ids = torch.randint(0, 30, (8, 16), generator=torch.Generator().manual_seed(1))
    q = quantize(lm, weights="int8", group_size=32, calibration=ids)
    assert quantization_of(q) == {"weights": "int8", "group_size": 32, "rounding": "gptq"}
    attn = q.decoder.layers[0].self_attn
    stacked = torch.cat([attn.q_proj.qweight, attn.k_proj.qweight, attn.v_proj.qweight])
    assert torch.equal(attn.qkv_proj.qweight, stacked)
    assert attn.qkv_proj.scale.shape == (3 * 64, 2)
    rtn = quantize(lm, weights="int8", group_size=32)
    assert torch.equal(q.lm_head.scale, rtn.lm_head.scale)  # same grid, other grid points
    with torch.no_grad():
        assert q.generate(ids[:1, :4], 5).shape == (1, 9)


def test_group_size_goes_with_int8_and_int4_only():
    lm = small_lm()
    for weights in (None, "bf16", "float32", "dynamic"):
        with pytest.raises(ValueError, match=r"group_size applies to weights='int8' or 'int4'"):
            quantize(lm, weights=weights, group_size=32)
    with pytest.raises(ValueError, match=r"group_size=48 must divide"):
        quantize(lm, weights="int8", group_size=48)
    with pytest.raises(TypeError, match="group_size must be an int"):
        quantize(lm, weights="int8", group_size=32.0)


@needs_native
def test_per_channel_checkpoint_loads_as_per_channel(tmp_path):
    # A checkpoint of the first int8 format (no group size recorded) stays per-channel.
    lm = small_lm()
    q = quantize(lm, weights="int8")
    path = tmp_path / "q.pt"
    quantize_package.save_quantized(q, path)
    again = quantize_package.load_quantized(path, small_lm())
    assert again.lm_head.scale.shape == (30,) and again.lm_head.group_size is None
    grouped = quantize(lm, weights="int8", group_size=32)
    quantize_package.save_quantized(grouped, path)
    with pytest.raises(RuntimeError, match=r"size mismatch for lm_head.scale"):
        q.load_state_dict(torch.load(path, weights_only=True)["state_dict"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = quantize_package.load_quantized(path, small_lm())
    assert loaded.lm_head.group_size == 32
    assert isinstance(loaded.lm_head, Int8WeightLinear) and not isinstance(
        loaded.lm_head, nn.Linear
    )
