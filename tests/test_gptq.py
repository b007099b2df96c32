"""GPTQ rounding (multihead.quantize.gptq): smaller layer error than round-to-nearest on the
calibration inputs, the same format and scales, the column-by-column algorithm of the paper."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from multihead.modules.models import DecoderLM, Seq2SeqTransformer, TransformerConfig
from multihead.quantize import (
    Int4WeightLinear,
    Int8WeightLinear,
    load_quantized,
    quantization_of,
    quantize,
    save_quantized,
)
from multihead.quantize.gptq import gptq_round

VOCAB = 40


def tiny_lm() -> DecoderLM:
    torch.manual_seed(0)
    config = TransformerConfig(
        vocab_size=VOCAB, d_model=64, num_heads=2, d_ff=128, num_decoder_layers=2, max_len=32
    )
    return DecoderLM(config).eval()


def calibration_ids(batch: int = 8, length: int = 16, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def correlated_inputs(m: int, k: int, seed: int) -> torch.Tensor:
    """Inputs ``(M, K)`` float64 with correlated channels of unequal size, as activations have
    (with white inputs GPTQ has nothing to exploit)."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(k, k, generator=g, dtype=torch.float64) / k**0.5
    size = torch.logspace(-1, 1, k, dtype=torch.float64)
    return (torch.randn(m, k, generator=g, dtype=torch.float64) @ mix) * size


# ---------------------------------------------------------------- independent reference


def read_back(codes: torch.Tensor, grid: torch.Tensor, weights: str) -> torch.Tensor:
    """The weights ``(N, K)`` float64 a kernel multiplies by: int8 ``q * s``; int4
    ``(q - 8) * s + z`` with the scale and zero as bfloat16 (what the int4 kernel reads)."""
    if weights == "int8":  # grid: (N,) per channel or (N, groups)
        scale = grid.double().reshape(grid.shape[0], -1)
        return codes.double() * scale.repeat_interleave(codes.shape[1] // scale.shape[1], 1)
    scale, zero = grid.to(torch.bfloat16).double().unbind(-1)  # (N, groups) each
    g = codes.shape[1] // scale.shape[1]
    return (codes.double() - 8) * scale.repeat_interleave(g, 1) + zero.repeat_interleave(g, 1)


def column_grid(j: int, k: int, grid: torch.Tensor, weights: str):
    """Scale and zero ``(N,)`` of input channel ``j`` of ``k`` (int8: zero 0, codes symmetric)."""
    if weights == "int8":  # (N,) per channel, or (N, groups)
        scale = grid.double().reshape(grid.shape[0], -1)
        scale = scale[:, j // (k // scale.shape[1])]
        return scale, torch.zeros_like(scale)
    scale, zero = grid.to(torch.bfloat16).double().unbind(-1)  # (N, groups) each
    g = k // scale.shape[1]
    return scale[:, j // g], zero[:, j // g]


def reference_gptq(
    weight: torch.Tensor, hessian: torch.Tensor, grid: torch.Tensor, weights: str
) -> torch.Tensor:
    """Optimal Brain Quantization's greedy step in column order (GPTQ eq. 2-3), written out:
    round column ``j`` to the nearest grid point; move every column by ``-err / [H_F^-1]_jj``
    times row ``j`` of ``H_F^-1``; remove ``j`` from ``H_F^-1`` by one step of Gaussian
    elimination (eq. 3). No blocks, no Cholesky factor: float64 throughout."""
    w = weight.double().clone()
    k = w.shape[1]
    h = hessian.double() + 0.01 * torch.diagonal(hessian).double().mean() * torch.eye(k)
    h_inv = torch.linalg.inv(h)
    codes = torch.zeros_like(w)
    low, high, offset = (-127, 127, 0) if weights == "int8" else (0, 15, 8)
    for j in range(k):
        scale, zero = column_grid(j, k, grid, weights)
        q = torch.round((w[:, j] - zero) / scale + offset).clamp(low, high)
        codes[:, j] = q
        err = (w[:, j] - ((q - offset) * scale + zero)) / h_inv[j, j]  # (N,)
        w -= err[:, None] * h_inv[j][None, :]  # column j itself lands on its grid point
        h_inv = h_inv - h_inv[:, j : j + 1] @ h_inv[j : j + 1, :] / h_inv[j, j]
    return codes


def rtn(weight: torch.Tensor, weights: str, group: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Round-to-nearest codes and grid as the layers store them (int8: ``group`` None for one
    scale per output channel, else one per ``group`` input channels, max |w| / 127)."""
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    linear.weight.data.copy_(weight)
    if weights == "int8" and group is None:
        layer8 = Int8WeightLinear.from_float(linear)
        return layer8.qweight, layer8.scale
    if weights == "int8":  # written out: grouped layers need multihead's C kernel to exist
        w = weight.float().reshape(weight.shape[0], -1, group)
        scale = w.abs().amax(-1) / 127  # (N, groups)
        codes = torch.round(w / scale[..., None]).clamp(-127, 127).flatten(1)
        return codes.to(torch.int8), scale
    layer4 = Int4WeightLinear.from_float(linear, group_size=group)
    q = torch.stack([layer4.qweight & 0xF, layer4.qweight >> 4], -1).flatten(1)
    n = weight.shape[0]
    return q[:n], layer4.scales_zeros.transpose(0, 1)[:n]  # bfloat16, as stored


# ------------------------------------------------------------------------------ layer level


@pytest.mark.parametrize(
    ("weights", "group", "act_order"),
    [
        ("int8", None, False),
        ("int8", 16, False),
        ("int4", 16, False),
        ("int8", None, True),
        ("int8", 16, True),
    ],
)
def test_gptq_equals_the_plain_column_by_column_algorithm(weights, group, act_order):
    torch.manual_seed(0)
    n, k = 8, 48
    weight = torch.randn(n, k)
    x = correlated_inputs(200, k, seed=2)
    hessian = 2 * x.T @ x
    # Blocks of 16 columns: the lazy updates across blocks are exercised.
    got = gptq_round(weight, hessian, weights, group_size=group, block_size=16, act_order=act_order)
    _, grid = rtn(weight, weights, group)
    # Act-order is column order on permuted input channels with each column's own grid.
    order = (
        torch.argsort(torch.diagonal(hessian), descending=True, stable=True)
        if act_order
        else torch.arange(k)
    )
    if weights == "int8" and group is not None:  # grid per column, then permuted
        grid = grid.repeat_interleave(group, 1)[:, order]
    expected = reference_gptq(weight[:, order], hessian[order][:, order], grid, weights)
    assert torch.equal(got.codes.double(), expected[:, torch.argsort(order)])


@pytest.mark.parametrize(("weights", "group"), [("int8", None), ("int8", 32), ("int4", 32)])
def test_gptq_output_error_is_at_most_round_to_nearest(weights, group):
    torch.manual_seed(3)
    n, k = 24, 64
    weight = torch.randn(n, k)
    x = correlated_inputs(300, k, seed=4)  # the calibration inputs
    got = gptq_round(weight, 2 * x.T @ x, weights, group_size=group)
    rtn_codes, grid = rtn(weight, weights, group)
    assert torch.equal(got.grid.to(grid.dtype), grid)  # the same scales (and zeros)
    exact = x @ weight.double().T
    err_gptq = (exact - x @ read_back(got.codes, got.grid, weights).T).norm()
    err_rtn = (exact - x @ read_back(rtn_codes, grid, weights).T).norm()
    assert err_gptq <= err_rtn
    # Correlated inputs: a real gain, not a tie (int4: its coarse grid leaves less to gain).
    assert err_gptq < {"int8": 0.95, "int4": 0.98}[weights] * err_rtn


def test_an_input_never_seen_in_calibration_keeps_its_nearest_rounding():
    torch.manual_seed(5)
    weight = torch.randn(8, 32)
    x = correlated_inputs(100, 32, seed=6)
    x[:, 3] = 0.0  # channel 3 never fires in calibration
    got = gptq_round(weight, 2 * x.T @ x, "int8", act_order=True)
    rtn_codes, _ = rtn(weight, "int8", None)
    assert torch.equal(got.codes[:, 3], rtn_codes[:, 3])  # not zeroed, not moved
    assert not torch.equal(got.codes, rtn_codes)


def test_the_scale_of_the_hessian_does_not_matter_with_a_dead_input():
    """H and c * H give the same codes (powers of two keep the float64 arithmetic exact), also
    when an input is never active, whose stand-in diagonal must scale with the rest."""
    torch.manual_seed(7)
    weight = torch.randn(8, 32)
    x = correlated_inputs(100, 32, seed=8)
    x[:, 5] = 0.0
    hessian = 2 * x.T @ x
    for weights, group in (("int8", None), ("int8", 16), ("int4", 16)):
        base = gptq_round(weight, hessian, weights, group_size=group, act_order=True).codes
        for c in (2.0**-20, 2.0**20):
            again = gptq_round(weight, c * hessian, weights, group_size=group, act_order=True)
            assert torch.equal(again.codes, base), (weights, c)


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"weight": torch.randn(48)}, ValueError, "weight must be a 2-D"),
        ({"weight": torch.ones(8, 48, dtype=torch.long)}, ValueError, "floating-point"),
        ({"hessian": torch.eye(47)}, ValueError, r"hessian must be \(48, 48\)"),
        ({"block_size": 0}, ValueError, "block_size"),
        ({"block_size": 2.5}, TypeError, "block_size"),
        ({"damping": -1.0}, ValueError, "damping"),
        ({"weights": "int4", "group_size": 20}, ValueError, "group_size"),
        ({"weights": "int4", "group_size": 0}, ValueError, "group_size"),
        ({"weights": "int2"}, ValueError, "'int8' or 'int4'"),
    ],
)
def test_gptq_round_refuses_bad_arguments_by_name(kwargs, error, words):
    args = {"weight": torch.randn(8, 48), "hessian": torch.eye(48), "weights": "int8", **kwargs}
    with pytest.raises(error, match=words):
        gptq_round(args.pop("weight"), args.pop("hessian"), args.pop("weights"), **args)


# ------------------------------------------------------------------------------ model level


@pytest.mark.parametrize("weights", ["int8", "int4"])
def test_quantize_with_calibration_keeps_the_format_and_scales(weights):
    lm = tiny_lm()
    ids = calibration_ids()
    plain = quantize(lm, weights=weights)
    gptq = quantize(lm, weights=weights, calibration=ids)
    assert quantization_of(gptq)["rounding"] == "gptq"
    assert "rounding" not in quantization_of(plain)
    layers = dict(gptq.named_modules())
    changed = 0
    for name, ref in plain.named_modules():
        if isinstance(ref, Int8WeightLinear):
            got = layers[name]
            assert isinstance(got, Int8WeightLinear)
            assert got.qweight.dtype == torch.int8 and int(got.qweight.abs().max()) <= 127
            assert torch.equal(got.scale, ref.scale)
            changed += int(not torch.equal(got.qweight, ref.qweight))
        elif isinstance(ref, Int4WeightLinear):
            got = layers[name]
            assert isinstance(got, Int4WeightLinear)
            assert torch.equal(got.scales_zeros, ref.scales_zeros)
            changed += int(not torch.equal(got.qweight, ref.qweight))
    assert changed > 0
    # The fused q/k/v matrix holds the three rounded projections stacked.
    attn = gptq.decoder.layers[0].self_attn
    stacked = torch.cat([attn.q_proj.qweight, attn.k_proj.qweight, attn.v_proj.qweight])
    if weights == "int8":
        assert torch.equal(attn.qkv_proj.qweight, stacked)
    assert gptq.generate(ids[:2, :4], 5).shape == (2, 9)


def test_first_layer_output_error_on_the_calibration_inputs_is_at_most_rtn():
    lm = tiny_lm()
    ids = calibration_ids()
    inputs = []
    first = lm.decoder.layers[0].self_attn.q_proj
    handle = first.register_forward_pre_hook(lambda m, a: inputs.append(a[0].detach()))
    with torch.no_grad():
        lm(ids)
    handle.remove()
    x = inputs[0].reshape(-1, first.in_features).double()  # (M, K)
    exact = x @ first.weight.double().T
    errors = {}
    for name, kwargs in (("rtn", {}), ("gptq", {"calibration": ids})):
        q = quantize(lm, weights="int8", **kwargs).decoder.layers[0].self_attn.q_proj
        w = q.qweight.double() * q.scale.double()[:, None]
        errors[name] = float((exact - x @ w.T).norm().detach())
    assert errors["gptq"] <= errors["rtn"]


def test_batches_may_come_as_an_iterable():
    lm = tiny_lm()
    ids = calibration_ids()
    one = quantize(lm, weights="int8", calibration=ids)
    two = quantize(lm, weights="int8", calibration=[ids[:3], ids[3:]])
    # The Hessian is summed in another order: a code may move by one where a weight sits on a
    # rounding boundary, nothing more.
    diff = (one.lm_head.qweight.int() - two.lm_head.qweight.int()).abs()
    assert int(diff.max()) <= 1 and float((diff > 0).float().mean()) < 0.01


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gptq_logits_are_closer_to_the_float_models_than_rtn(dtype):
    """The float model is the reference: on ids that calibration never saw, GPTQ's logits
    are nearer to it than round-to-nearest's (also for a float64 model)."""
    lm = tiny_lm().to(dtype)
    held_out = calibration_ids(batch=4, seed=9)
    with torch.no_grad():
        exact = lm(held_out).double()
        error = {
            name: float((quantize(lm, weights="int8", **options)(held_out).double() - exact)
                        .abs().mean())
            for name, options in (("rtn", {}), ("gptq", {"calibration": calibration_ids()}))
        }  # fmt: skip
    assert error["gptq"] < error["rtn"]


def test_gptq_checkpoint_round_trips(tmp_path):
    lm = tiny_lm()
    ids = calibration_ids()
    q = quantize(lm, weights="int4", calibration=ids)
    path = tmp_path / "q.pt"
    save_quantized(q, path)
    again = load_quantized(path, tiny_lm())
    assert quantization_of(again) == quantization_of(q)
    assert torch.equal(again.lm_head.qweight, q.lm_head.qweight)
    with torch.no_grad():
        assert torch.equal(again(ids), q(ids))


def test_bad_calibration_is_refused_with_its_name():
    lm = tiny_lm()
    ids = calibration_ids()
    seq2seq = Seq2SeqTransformer(TransformerConfig(vocab_size=VOCAB, d_model=32, num_heads=2))
    cases = [
        (lm, "int8", ids.float(), TypeError, "torch.long"),
        (lm, "int8", ids[0], ValueError, "2-D"),
        (lm, "int8", ids + VOCAB, ValueError, "vocabulary"),
        (lm, "int8", ids - 100, ValueError, "vocabulary"),
        (lm, "int8", torch.zeros(2, 33, dtype=torch.long), ValueError, "max_len"),
        (lm, "int8", [], ValueError, "at least one"),
        (lm, "int8", "abc", TypeError, "LongTensor"),
        (lm, "int8", [ids, "x"], TypeError, r"calibration\[1\]"),
        (lm, "bf16", ids, ValueError, "int8"),
        (lm, "dynamic", ids, ValueError, "int8"),
        (seq2seq, "int8", ids, TypeError, "DecoderLM"),
    ]
    for model, weights, calibration, error, words in cases:
        with pytest.raises(error, match=words) as info:
            quantize(model, weights=weights, calibration=calibration)
        assert "calibration" in str(info.value)


def test_generate_command_calibrates_on_the_training_text(tiny_text_generate, capsys):
    from multihead.cli import main

    base = tiny_text_generate
    capsys.readouterr()
    for mode in ("int8", "int4"):
        assert main([*base, "--quantize", mode, "--calibrate", "4"]) == 0
        assert len(json.loads(capsys.readouterr().out)["text"]) == 5
    assert main([*base, "--quantize", "bf16", "--calibrate", "4"]) == 2
    assert "--calibrate goes with --quantize int8 or int4" in capsys.readouterr().err


def test_generate_command_takes_a_group_size(tiny_text_generate, capsys):
    from multihead.cli import main
    from multihead.quantize import native_available

    base = tiny_text_generate
    capsys.readouterr()
    grouped = [*base, "--quantize", "int8", "--group-size", "8", "--calibrate", "4"]
    if native_available():
        assert main(grouped) == 0
        assert len(json.loads(capsys.readouterr().out)["text"]) == 5
    else:  # grouped int8 needs multihead's kernel: the message names the alternative
        assert main(grouped) == 2
        assert "leave group_size out" in capsys.readouterr().err
    assert main([*base, "--quantize", "bf16", "--group-size", "8"]) == 2
    assert "--group-size goes with --quantize int8 or int4" in capsys.readouterr().err
    assert main([*base, "--quantize", "int8", "--group-size", "7"]) == 2
    assert "group_size must be an even int >= 2, got 7" in capsys.readouterr().err


def test_generate_calibrate_refuses_a_training_text_that_changed(tmp_path, capsys):
    from multihead.cli import main

    text = tmp_path / "corpus.txt"
    text.write_text("abcdefgh " * 40, encoding="utf-8")
    out = tmp_path / "text"
    tiny = ["--d-model", "16", "--layers", "1", "--heads", "2", "--batch-size", "2"]
    args = ["train", "text", "--text", str(text), "--steps", "1", "--block-size", "8"]
    assert main([*args, "--out", str(out), *tiny, "--no-progress"]) == 0
    text.write_text("xyz " * 100, encoding="utf-8")  # other characters now
    capsys.readouterr()
    command = ["generate", "--checkpoint", str(out / "checkpoint.pt"), "--prompt", "a"]
    assert main([*command, "--quantize", "int8", "--calibrate", "2"]) == 2
    assert "no longer has the characters the model was trained on" in capsys.readouterr().err
