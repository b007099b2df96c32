"""multihead.nn on PyTorch's own material: the module-test inputs PyTorch uses for
``nn.MultiheadAttention``, and PyTorch's Transformer models after :func:`swap_attention`."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
import torch
from torch import nn

from multihead.nn import MultiheadAttention, swap_attention
from test_nn import run_both


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("training", [True, False])
def test_pytorch_module_test_inputs(training: bool, dtype: torch.dtype) -> None:
    """Every input PyTorch's own module tests feed torch.nn.MultiheadAttention
    (``torch.testing._internal.common_modules.module_db``), through both modules."""
    pytest.importorskip("expecttest")  # common_modules imports it
    from torch.testing._internal.common_modules import module_db

    infos = [info for info in module_db if info.module_cls is nn.MultiheadAttention]
    assert len(infos) == 1
    info = infos[0]
    samples = info.module_inputs_func(
        info, device="cpu", dtype=dtype, requires_grad=True, training=training
    )
    assert len(samples) >= 64
    for sample in samples:
        ctor, fwd = sample.constructor_input, sample.forward_input
        torch.manual_seed(0)
        ref = nn.MultiheadAttention(*ctor.args, **ctor.kwargs, dtype=dtype).train(training)
        ours = MultiheadAttention(*ctor.args, **ctor.kwargs, dtype=dtype).train(training)
        ours.load_state_dict(ref.state_dict())
        run_both(ref, ours, tuple(fwd.args), **fwd.kwargs)
        # PyTorch's own check of the unbatched call, run on our module.
        if sample.reference_fn is not None:
            args = [a.detach() for a in fwd.args]
            out, weights = ours(*args, **fwd.kwargs)
            expected = sample.reference_fn(ours, *args, **fwd.kwargs)  # runs a copy of ours
            torch.testing.assert_close(out, expected[0])
            torch.testing.assert_close(weights, expected[1])


D, HEADS, B, NS, NT = 16, 4, 3, 6, 5


@contextmanager
def fastpath(enabled: bool) -> Iterator[None]:
    before = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(enabled)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(before)


def encoder(nested: bool) -> nn.Module:
    layer = nn.TransformerEncoderLayer(D, HEADS, 32, dropout=0.1, batch_first=True)
    return nn.TransformerEncoder(layer, 2, enable_nested_tensor=nested)


def decoder(nested: bool) -> nn.Module:
    del nested  # the decoder has no nested-tensor path
    layer = nn.TransformerDecoderLayer(D, HEADS, 32, dropout=0.1, batch_first=True)
    return nn.TransformerDecoder(layer, 2)


def transformer(nested: bool) -> nn.Module:
    model = nn.Transformer(D, HEADS, 1, 1, 32, dropout=0.1, batch_first=True)
    model.encoder.use_nested_tensor = nested and model.encoder.use_nested_tensor
    return model


MODELS: dict[str, Callable[[bool], nn.Module]] = {
    "encoder": encoder,
    "decoder": decoder,
    "transformer": transformer,
}


def call(name: str, model: nn.Module, src: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
    """Each model with PyTorch-convention masks: padding at the end of sequences (left aligned,
    as the nested-tensor path wants) and a causal target mask given with the is_causal hint."""
    pad = torch.zeros(B, NS, dtype=torch.bool)
    pad[0, 4:] = True
    pad[2, 5:] = True
    causal = nn.Transformer.generate_square_subsequent_mask(NT)
    if name == "encoder":
        return model(src, src_key_padding_mask=pad)
    if name == "decoder":
        return model(tgt, src, tgt_mask=causal, tgt_is_causal=True, memory_key_padding_mask=pad)
    return model(
        src,
        tgt,
        src_key_padding_mask=pad,
        tgt_mask=causal,
        tgt_is_causal=True,
        memory_key_padding_mask=pad,
    )


def swapped_pair(name: str, nested: bool, training: bool) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    ref = MODELS[name](nested).train(training)
    ours = copy.deepcopy(ref)
    rng = torch.get_rng_state()
    assert swap_attention(ours) is ours
    assert torch.equal(torch.get_rng_state(), rng)  # the swap draws no random numbers
    assert not any(type(m) is nn.MultiheadAttention for m in ours.modules())
    assert sum(isinstance(m, MultiheadAttention) for m in ours.modules()) == sum(
        type(m) is nn.MultiheadAttention for m in ref.modules()
    )
    assert all(m.training == training for m in ours.modules())
    return ref, ours


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("training", [True, False])
def test_swapped_models_match_outputs_and_gradients(name: str, training: bool) -> None:
    """Training mode keeps dropout=0.1: under one seed our attention draws the same dropout
    masks as PyTorch's (same shapes, same order), so the outputs are equal, not just close."""
    ref, ours = swapped_pair(name, nested=True, training=training)
    src, tgt = torch.randn(B, NS, D), torch.randn(B, NT, D)
    results = []
    for model in (ref, ours):
        torch.manual_seed(1)
        out = call(name, model, src, tgt)
        out.square().sum().backward()
        results.append((out, {n: p.grad for n, p in model.named_parameters()}))
    (o1, g1), (o2, g2) = results
    torch.testing.assert_close(o2, o1)
    assert g1.keys() == g2.keys()
    for n in g1:
        torch.testing.assert_close(g2[n], g1[n], msg=lambda m, n=n: f"grad of {n}: {m}")


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("nested", [True, False])
@pytest.mark.parametrize("fast", [True, False])
def test_swapped_models_in_inference_with_and_without_fast_path(
    name: str, nested: bool, fast: bool
) -> None:
    """Under no_grad in eval, PyTorch's encoder layers take their fused fast path (nested
    tensors when enabled); it reads our parameters, which are PyTorch's layout, so it works
    unchanged. With the fast path off our forward runs instead."""
    ref, ours = swapped_pair(name, nested=nested, training=False)
    calls = []
    for m in ours.modules():
        if isinstance(m, MultiheadAttention):
            # Counted by wrapping forward: a hook would itself make PyTorch decline its fast path.
            m.forward = counted(m.forward, calls)  # type: ignore[method-assign]
    src, tgt = torch.randn(B, NS, D), torch.randn(B, NT, D)
    with torch.no_grad(), fastpath(fast):
        expected = call(name, ref, src, tgt)
        out = call(name, ours, src, tgt)
    torch.testing.assert_close(out, expected)
    if name == "encoder":
        assert bool(calls) != fast  # fast path: PyTorch's fused kernel, not our forward
    else:
        assert calls  # decoders always call self/cross attention modules


def counted(fn: Callable, calls: list) -> Callable:
    def wrapper(*args: object, **kwargs: object) -> object:
        calls.append(args[0])
        return fn(*args, **kwargs)

    return wrapper


@pytest.mark.parametrize("need_weights", [False, True])
def test_nested_input_reaches_our_module_when_a_hook_declines_the_layer_fast_path(
    need_weights: bool,
) -> None:
    """A forward hook anywhere in a layer makes PyTorch's encoder layer decline its fused path
    after the encoder already packed the batch as a nested tensor, so the attention module
    receives the nested tensor, as PyTorch's own module would."""
    ref, ours = swapped_pair("encoder", nested=True, training=False)
    seen = []
    for m in ours.modules():
        if isinstance(m, MultiheadAttention):
            m.register_forward_hook(lambda mod, args, out: seen.append(args[0].is_nested))
    src = torch.randn(B, NS, D)
    with torch.no_grad():
        expected = call("encoder", ref, src, src)
        out = call("encoder", ours, src, src)
    assert seen == [True, True]
    torch.testing.assert_close(out, expected)
    x = torch.nested.as_nested_tensor([src[0, :4], src[1], src[2, :5]], layout=torch.strided)
    attn = ours.layers[0].self_attn
    nested_out, weights = attn(x, x, x, need_weights=need_weights)
    for i, n in enumerate((4, NS, 5)):
        part = src[i : i + 1, :n]
        torch.testing.assert_close(nested_out.unbind()[i], attn(part, part, part)[0][0])
    assert (weights is None) != need_weights


def test_swap_keeps_parameter_objects_dtype_and_a_prebuilt_optimizer() -> None:
    torch.manual_seed(0)
    model = nn.TransformerEncoder(
        nn.TransformerEncoderLayer(D, HEADS, 32, dropout=0.0, dtype=torch.float64),
        1,
        enable_nested_tensor=False,
    )
    reference = copy.deepcopy(model)
    params_before = list(model.parameters())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    ref_optimizer = torch.optim.SGD(reference.parameters(), lr=0.1)
    swap_attention(model)
    assert [id(p) for p in model.parameters()] == [id(p) for p in params_before]
    attn = model.layers[0].self_attn
    assert isinstance(attn, MultiheadAttention)
    assert attn.in_proj_weight.dtype == torch.float64 and not attn.batch_first
    x = torch.randn(NS, B, D, dtype=torch.float64)
    for m, opt in ((model, optimizer), (reference, ref_optimizer)):
        for _ in range(2):  # a step taken through the old optimizer reaches the new module
            opt.zero_grad()
            m(x).square().sum().backward()
            opt.step()
    torch.testing.assert_close(model(x), reference(x))


def test_swap_a_bare_module_returns_its_replacement() -> None:
    ref = nn.MultiheadAttention(D, HEADS, kdim=6, vdim=10, add_bias_kv=True).eval()
    ours = swap_attention(ref)
    assert isinstance(ours, MultiheadAttention) and not ours.training
    q, k, v = torch.randn(NT, B, D), torch.randn(NS, B, 6), torch.randn(NS, B, 10)
    run_both(ref, ours, (q, k, v))


def test_assigning_the_drop_in_as_self_attn_works() -> None:
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(D, HEADS, 32, dropout=0.0, batch_first=True)
    reference = copy.deepcopy(layer)
    attn = MultiheadAttention(D, HEADS, batch_first=True)
    attn.load_state_dict(layer.self_attn.state_dict())
    layer.self_attn = attn
    x = torch.randn(B, NS, D)
    torch.testing.assert_close(layer(x, is_causal=False), reference(x))
    layer.eval()
    reference.eval()
    with torch.no_grad():
        torch.testing.assert_close(layer(x), reference(x))
