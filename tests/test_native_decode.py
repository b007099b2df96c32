"""The decoding step in C (multihead.modules.native_decode) for float32 DecoderLMs.

References: the model's layers written out plainly in float64 (oracle.decoder_lm64), and the
float64 copy of the model run over the whole sequence without a cache. Also: when the C step
must step aside (weights replaced, autocast, classes it does not read) and that it does.
"""

from __future__ import annotations

import copy
import platform

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from multihead import MultiHeadAttention, _native
from multihead.decoding import generate_lm
from multihead.modules import native_decode
from multihead.modules.lean_decode import LeanStepper
from multihead.modules.models import DecoderLM, TransformerConfig
from multihead.modules.native_decode import NativeStep, native_step
from multihead.quantize import kernels
from oracle import decoder_lm64

needs_native = pytest.mark.skipif(
    not _native.native_available(_native.DECODE),
    reason=f"no C step here: {_native.native_problem(_native.DECODE)}",
)


def small_lm(**overrides: object) -> DecoderLM:
    torch.manual_seed(0)
    options = dict(vocab_size=37, d_model=32, num_heads=4, d_ff=48, num_decoder_layers=2)
    options.update(dropout=0.0, max_len=64)
    options.update(overrides)
    return DecoderLM(TransformerConfig(**options)).eval()


@pytest.fixture
def c_calls(monkeypatch):
    """Counts the steps the C code ran (a ``None`` from NativeStep means PyTorch's path)."""
    calls = {"c": 0, "declined": 0}
    original = NativeStep.__call__

    def counted(self, *args):
        out = original(self, *args)
        calls["c" if out is not None else "declined"] += 1
        return out

    monkeypatch.setattr(NativeStep, "__call__", counted)
    return calls


class Counted:
    """A NativeStep that counts the steps it ran in C."""

    def __init__(self, step: NativeStep) -> None:
        self.step, self.calls = step, 0

    def __call__(self, *args):
        out = self.step(*args)
        self.calls += out is not None
        return out


def stepped_logits(stepper: LeanStepper, ids: torch.Tensor, prompt: int) -> torch.Tensor:
    """Next-token logits for positions ``prompt - 1 .. N - 1`` -> ``(B, N', V)``: the prompt
    in one call, then one token per call."""
    out = [stepper.next_logits(ids[:, :prompt])]
    for t in range(prompt + 1, ids.shape[1] + 1):
        out.append(stepper.next_logits(ids[:, :t]))
    return torch.stack(out, 1)


CONFIGS = [
    {},
    {"positional": "learned", "activation": "gelu_tanh"},
    {"norm_first": False, "positional": "none"},
    {"num_kv_heads": 2, "norm": "rmsnorm", "ffn": "gated", "activation": "silu", "bias": False},
    {"num_kv_heads": 1, "tie_embeddings": False, "activation": "relu"},
    {"embedding_norm": True, "final_norm": True, "norm_first": False},
    {"d_model": 40, "num_heads": 5, "d_ff": 23},  # sizes that are no multiple of a vector
]


@needs_native
@pytest.mark.parametrize("overrides", CONFIGS, ids=lambda o: ",".join(o) or "default")
@pytest.mark.parametrize("rows", [1, 6])  # 6: a tile of 4 rows and one of 2
@pytest.mark.parametrize("prompt", [1, 4])
def test_c_steps_match_the_layers_written_in_float64(overrides, rows, prompt, c_calls):
    lm = small_lm(**overrides)
    ids = torch.randint(0, 37, (rows, 12))
    stepper = lm._lean_stepper(12)
    assert stepper is not None and stepper._native is not None
    with torch.no_grad():
        got = stepped_logits(stepper, ids, prompt)
    assert c_calls == {"c": 12 - prompt + (prompt == 1), "declined": 0}
    expected = decoder_lm64(lm, ids)[:, prompt - 1 :]
    torch.testing.assert_close(got.double(), expected, atol=1e-6, rtol=1e-6)
    uncached = copy.deepcopy(lm).double()(ids)[:, prompt - 1 :]
    torch.testing.assert_close(got.double(), uncached, atol=1e-6, rtol=1e-6)


@needs_native
@settings(max_examples=25, deadline=None)
@given(
    heads=st.sampled_from([(1, 1), (2, 1), (3, 3), (4, 2), (6, 3)]),
    head_dim=st.integers(1, 19),
    d_ff=st.integers(1, 70),
    vocab=st.integers(1, 90),
    rows=st.integers(1, 9),
    prompt=st.integers(1, 5),
    steps=st.integers(1, 6),
    norm_first=st.booleans(),
    threads=st.sampled_from([1, 2]),
)
def test_c_steps_match_float64_for_any_shape(
    heads, head_dim, d_ff, vocab, rows, prompt, steps, norm_first, threads
):
    h, hkv = heads
    lm = small_lm(
        vocab_size=vocab,
        d_model=h * head_dim,
        num_heads=h,
        num_kv_heads=hkv,
        d_ff=d_ff,
        norm_first=norm_first,
    )
    ids = torch.randint(0, vocab, (rows, prompt + steps))
    stepper = lm._lean_stepper(prompt + steps)
    assert stepper is not None and stepper._native is not None
    stepper._native = Counted(stepper._native)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.no_grad():
            got = stepped_logits(stepper, ids, prompt)
    finally:
        torch.set_num_threads(before)
    assert stepper._native.calls == steps + (prompt == 1)  # every step ran in C
    expected = decoder_lm64(lm, ids)[:, prompt - 1 :]
    torch.testing.assert_close(got.double(), expected, atol=1e-6, rtol=1e-6)


@needs_native
def test_generate_gives_the_module_paths_tokens(monkeypatch, c_calls):
    lm = small_lm(d_model=64, num_heads=4, d_ff=96)
    prompt = torch.randint(0, 37, (3, 5))
    with torch.no_grad():
        greedy = generate_lm(lm, prompt, max_new_tokens=20)
        assert c_calls == {"c": 19, "declined": 0}
        monkeypatch.setattr(lm, "_lean_stepper", lambda max_len: None)
        assert torch.equal(greedy, generate_lm(lm, prompt, max_new_tokens=20))


@needs_native
def test_selected_rows_keep_their_caches(c_calls):
    # select() (beam search) reorders and repeats the cache's rows between C steps.
    lm = small_lm()
    ids = torch.randint(0, 37, (3, 7))
    stepper = lm._lean_stepper(7)
    rows = torch.tensor([2, 0, 0])
    with torch.no_grad():
        stepper.next_logits(ids[:, :3])
        stepper.next_logits(ids[:, :4])
        stepper.select(rows)
        got = [stepper.next_logits(ids[rows, :t]) for t in (5, 6, 7)]
    assert c_calls == {"c": 4, "declined": 0}
    expected = decoder_lm64(lm, ids[rows])[:, 4:]
    torch.testing.assert_close(torch.stack(got, 1).double(), expected, atol=1e-6, rtol=1e-6)


@needs_native
def test_a_query_that_overflows_gives_nan_as_on_pytorchs_path(c_calls):
    # Finite inputs, an infinite query: one query weight row so large that q overflows.
    lm = small_lm()
    with torch.no_grad():
        lm.decoder.layers[1].self_attn.q_proj.weight[0] = 3e38
    ids = torch.randint(0, 37, (2, 6))
    stepper, reference = lm._lean_stepper(6), lm._lean_stepper(6)
    reference._native = None
    with torch.no_grad():
        got = stepped_logits(stepper, ids, 2)
        expected = stepped_logits(reference, ids, 2)
    assert c_calls["c"] == 4
    assert expected.isnan().all() and got.isnan().all()


@needs_native
def test_no_rows_give_no_logits():
    lm = small_lm()
    stepper = lm._lean_stepper(4)
    keys = [torch.empty(0, 4, 4, 8) for _ in range(2)]
    logits = stepper._native(torch.empty(0, 32), keys, keys, 0)
    assert logits is not None and logits.shape == (0, 37)


def with_variants(lm: DecoderLM) -> DecoderLM:
    """Modules the config cannot make: norms without affine weights or bias, epsilons that
    differ per norm (large enough to matter), a bias on some projections only, a value head
    size other than the query's, a head with a bias."""
    e, v = lm.config.d_model, lm.config.vocab_size
    first, second = lm.decoder.layers
    first.norm1 = nn.LayerNorm(e, elementwise_affine=False, eps=0.5)
    second.norm2 = nn.LayerNorm(e, bias=False, eps=0.25)
    first.norm2.eps = 0.125
    lm.decoder.norm.eps = 0.05
    for layer in (first, second):
        attn = MultiHeadAttention(e, 4, v_head_dim=6, num_kv_heads=2)
        attn.k_proj = nn.Linear(e, 2 * (e // 4), bias=False)
        layer.self_attn = attn
    lm.lm_head = nn.Linear(e, v)
    return lm.eval()


@needs_native
@pytest.mark.parametrize("rms", [False, True], ids=["layernorm", "rmsnorm, default eps"])
def test_norms_biases_and_head_sizes_the_config_cannot_make(rms, c_calls):
    lm = small_lm(norm="rmsnorm") if rms else with_variants(small_lm())
    if rms:  # RMSNorm without an epsilon: float32's machine epsilon
        for layer in lm.decoder.layers:
            layer.norm1 = nn.RMSNorm(32)
            layer.norm2 = nn.RMSNorm(32, elementwise_affine=layer is lm.decoder.layers[0])
        lm.eval()
    ids = torch.randint(0, 37, (3, 9))
    stepper = lm._lean_stepper(9)
    assert stepper._native is not None
    with torch.no_grad():
        got = stepped_logits(stepper, ids, 3)
    assert c_calls == {"c": 6, "declined": 0}
    torch.testing.assert_close(got.double(), decoder_lm64(lm, ids)[:, 2:], atol=1e-6, rtol=1e-6)


X86 = platform.machine().lower() in ("x86_64", "amd64")


@needs_native
@pytest.mark.parametrize("build", ["avx2", "plain C", "no OpenMP"])
def test_the_other_builds_equal_float64(build, monkeypatch, tmp_path):
    # The AVX2 and plain C paths built on this CPU (a CPU without AVX-512 or AVX2 gets them),
    # and a compiler without OpenMP (one thread).
    if build != "no OpenMP" and not X86:
        pytest.skip("the AVX2 and plain C paths are chosen by x86 flags")
    if build == "avx2" and "avx2" not in kernels.cpu_flags():
        pytest.skip("no AVX2 here")
    monkeypatch.setenv("MULTIHEAD_CACHE_DIR", str(tmp_path))
    if build == "no OpenMP":
        cc = tmp_path / "cc-without-openmp"
        cc.write_text(
            '#!/bin/sh\nfor a in "$@"; do [ "$a" = -fopenmp ] && exit 1; done\nexec cc "$@"\n'
        )
        cc.chmod(0o755)
        monkeypatch.setenv("CC", str(cc))
    else:
        flags = "-mno-avx512f" if build == "avx2" else "-mno-avx2 -mno-avx512f"
        monkeypatch.setenv("MULTIHEAD_CFLAGS", flags)
    _native._library.cache_clear()
    try:
        assert _native.native_problem(_native.DECODE) is None
        lanes = {"avx2": 8, "plain C": 1}.get(build)
        assert lanes is None or _native.vector_lanes(_native.DECODE) == lanes
        lm = small_lm(d_model=40, num_heads=5, num_kv_heads=1, d_ff=37)
        ids = torch.randint(0, 37, (5, 8))
        stepper = lm._lean_stepper(8)
        stepper._native = Counted(stepper._native)
        with torch.no_grad():
            got = stepped_logits(stepper, ids, 2)
        assert stepper._native.calls == 6
    finally:
        _native._library.cache_clear()
    torch.testing.assert_close(got.double(), decoder_lm64(lm, ids)[:, 1:], atol=1e-6, rtol=1e-6)


# ------------------------------------------------------------------ stepping aside


@needs_native
def test_weights_changed_in_place_are_read_by_the_c_step(c_calls):
    lm = small_lm()
    ids = torch.randint(0, 37, (2, 8))
    stepper = lm._lean_stepper(8)
    with torch.no_grad():
        lm.decoder.layers[1].feed_forward.linear1.weight.mul_(2.0)
        lm.decoder.norm.bias.add_(0.5)
        got = stepped_logits(stepper, ids, 1)
    assert c_calls == {"c": 8, "declined": 0}
    torch.testing.assert_close(got.double(), decoder_lm64(lm, ids), atol=1e-6, rtol=1e-6)


def _replace(linear: nn.Linear, how: str, new: torch.Tensor) -> None:
    if how == "data":
        linear.weight.data = new
    elif how == "parameter":
        linear.weight = nn.Parameter(new)
    elif how == "transposed":
        linear.weight.data = linear.weight.data.t()
    elif how == "narrowed":
        linear.weight.data = linear.weight.data[:, :16]
    else:  # the same bytes as int32 (a parameter without grad may hold integers)
        linear.weight.requires_grad_(False)
        linear.weight.data = linear.weight.data.view(torch.int32)


@needs_native
@pytest.mark.parametrize("how", ["data", "parameter", "transposed", "narrowed", "dtype"])
def test_a_replaced_weight_sends_the_step_back_to_pytorch(how, c_calls):
    # The C code reads the pointers it was given: a weight replaced between steps (another
    # tensor, storage, layout or dtype) must not be read through them.
    lm = small_lm(num_heads=4, d_model=32, d_ff=32)
    twin = copy.deepcopy(lm)
    ids = torch.randint(0, 37, (2, 8))
    stepper, reference = lm._lean_stepper(8), twin._lean_stepper(8)
    reference._native = None  # PyTorch's path throughout
    new = torch.randn(32, 32)
    with torch.no_grad():
        for s in (stepper, reference):
            s.next_logits(ids[:, :4])
            s.next_logits(ids[:, :5])
        _replace(lm.decoder.layers[0].feed_forward.linear1, how, new)
        _replace(twin.decoder.layers[0].feed_forward.linear1, how, new.clone())
        if how in ("narrowed", "dtype"):  # PyTorch's path refuses these, and so must this
            with pytest.raises((RuntimeError, ValueError)):
                reference.next_logits(ids[:, :6])
            with pytest.raises((RuntimeError, ValueError)):
                stepper.next_logits(ids[:, :6])
        else:
            got = stepper.next_logits(ids[:, :6])
            torch.testing.assert_close(got, reference.next_logits(ids[:, :6]))
    assert c_calls == {"c": 1, "declined": 1} and stepper._native.stale


def _change(lm: DecoderLM, how: str, seed: int = 1) -> None:
    torch.manual_seed(seed)
    layer = lm.decoder.layers[1]
    if how == "linear replaced":
        layer.feed_forward.linear1 = nn.Linear(32, 48)
    elif how == "head replaced":
        lm.lm_head = nn.Linear(32, 37)
    elif how == "final norm replaced":
        lm.decoder.norm = nn.LayerNorm(32, eps=0.5)
    elif how == "bias added":
        layer.self_attn.q_proj.bias = nn.Parameter(torch.randn(32))
    elif how == "eps changed":
        layer.norm2.eps = 0.5
    elif how == "hook":
        lm.lm_head.register_forward_hook(lambda module, args, out: out * 2)
    else:  # a forward of its own on one instance
        ff = layer.feed_forward
        ff.forward = lambda x: ff.linear2(torch.relu(ff.linear1(x)))


CHANGES = [
    "linear replaced",
    "head replaced",
    "final norm replaced",
    "bias added",
    "eps changed",
    "hook",
    "instance forward",
]


@needs_native
@pytest.mark.parametrize("how", CHANGES)
def test_a_module_changed_between_steps_sends_the_step_back_to_pytorch(how, c_calls):
    lm = small_lm(d_ff=48, bias=False) if how == "bias added" else small_lm(d_ff=48)
    twin = copy.deepcopy(lm)
    ids = torch.randint(0, 37, (2, 8))
    stepper, reference = lm._lean_stepper(8), twin._lean_stepper(8)
    reference._native = None
    with torch.no_grad():
        for s in (stepper, reference):
            s.next_logits(ids[:, :4])
            s.next_logits(ids[:, :5])
        _change(lm, how)
        _change(twin, how)
        got = [stepper.next_logits(ids[:, :t]) for t in (6, 7)]
        expected = [reference.next_logits(ids[:, :t]) for t in (6, 7)]
    assert c_calls == {"c": 1, "declined": 2} and stepper._native.stale
    torch.testing.assert_close(got, expected)


@needs_native
def test_autocast_steps_are_left_to_pytorch(c_calls):
    lm = small_lm()
    ids = torch.randint(0, 37, (1, 6))
    stepper = lm._lean_stepper(6)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        got = stepped_logits(stepper, ids, 3)
    assert c_calls["c"] == 0
    expected = decoder_lm64(lm, ids)[:, 2:]
    torch.testing.assert_close(got.double(), expected, atol=0.1, rtol=0.05)


def test_without_the_c_code_the_step_is_pytorchs(monkeypatch):
    monkeypatch.setattr(_native, "_library", lambda *_: "no C compiler (test)")
    lm = small_lm()
    stepper = lm._lean_stepper(8)
    assert stepper is not None and stepper._native is None
    ids = torch.randint(0, 37, (2, 8))
    with torch.no_grad():
        got = stepped_logits(stepper, ids, 3)
    torch.testing.assert_close(got.double(), decoder_lm64(lm, ids)[:, 2:], atol=1e-6, rtol=1e-6)


def _patched_linear(monkeypatch):
    monkeypatch.setattr(nn.Linear, "forward", lambda self, x: nn.functional.linear(x, self.weight))


@pytest.mark.parametrize(
    "change",
    [
        "rope",
        "float64",
        "non-contiguous",
        "patched nn.Linear",
        "subclassed linear",
        "other norm in one layer",
        "bias of another size",
        "norm weight of another size",
        "one module for q and k",
    ],
)
def test_models_the_c_step_does_not_read_are_declined(change, monkeypatch):
    lm = small_lm(positional="rope") if change == "rope" else small_lm()
    if change == "float64":
        lm = lm.double()
    elif change == "non-contiguous":
        w = lm.decoder.layers[0].self_attn.q_proj.weight
        w.data = w.data.t().contiguous().t()
    elif change == "patched nn.Linear":
        _patched_linear(monkeypatch)
    elif change == "subclassed linear":

        class Linear(nn.Linear):
            pass

        old = lm.decoder.layers[1].feed_forward.linear2
        new = Linear(old.in_features, old.out_features)
        new.load_state_dict(old.state_dict())
        lm.decoder.layers[1].feed_forward.linear2 = new
    elif change == "bias of another size":  # PyTorch's path would raise; C must not read it
        lm.decoder.layers[0].feed_forward.linear2.bias = nn.Parameter(torch.zeros(3))
    elif change == "norm weight of another size":
        lm.decoder.layers[1].norm1.weight = nn.Parameter(torch.ones(3))
    elif change == "one module for q and k":  # grouped heads: q needs 32 rows, k has 16
        gqa = small_lm(num_kv_heads=2)
        attn = gqa.decoder.layers[0].self_attn
        attn.q_proj = attn.k_proj
        lm = gqa
    else:
        lm.decoder.layers[1].norm2 = nn.RMSNorm(32)
    assert native_step(lm) is None


def test_a_model_of_no_layers_is_declined():
    lm = small_lm(num_decoder_layers=1)
    lm.decoder.layers = nn.ModuleList()
    assert native_step(lm) is None


@needs_native
@pytest.mark.parametrize("key", list(native_decode._READS), ids=lambda k: f"{k[0].__name__}.{k[1]}")
def test_methods_patched_on_the_classes_it_reads_are_declined(key, monkeypatch):
    cls, name = key
    original = getattr(cls, name)
    monkeypatch.setattr(cls, name, lambda self, *args, **kwargs: original(self, *args, **kwargs))
    assert native_step(small_lm()) is None


def test_an_activation_name_that_is_not_the_function_run_is_declined():
    lm = small_lm()
    lm.decoder.layers[0].feed_forward.activation = "relu"  # still runs GELU (its _act)
    assert native_step(lm) is None


def _change_more(lm: DecoderLM, how: str) -> None:
    layer = lm.decoder.layers[1]
    if how == "activation function":
        layer.feed_forward._act = torch.relu
    elif how == "class swapped":

        class Doubled(nn.Linear):
            def forward(self, x):
                return super().forward(x) * 2

        lm.lm_head.__class__ = Doubled
    elif how == "method set on an instance":
        attn = layer.self_attn
        original = attn._project_query
        attn._project_query = lambda x: original(x) * 4
    else:  # training mode, with dropout to apply
        lm.train()


@needs_native
@pytest.mark.parametrize(
    "how", ["activation function", "class swapped", "method set on an instance", "training"]
)
def test_more_changes_between_steps_send_the_step_back_to_pytorch(how, c_calls):
    lm = small_lm(d_ff=48)
    ids = torch.randint(0, 37, (2, 7))
    stepper = lm._lean_stepper(7)
    with torch.no_grad():
        stepper.next_logits(ids[:, :4])
        stepper.next_logits(ids[:, :5])
        _change_more(lm, how)
        stepper.next_logits(ids[:, :6])
    assert c_calls == {"c": 1, "declined": 1} and stepper._native.stale


def test_the_c_code_is_built_only_for_a_model_it_runs(monkeypatch):
    built = []
    monkeypatch.setattr(_native, "native_problem", lambda name: built.append(name))
    assert native_step(small_lm(positional="rope")) is None and built == []
