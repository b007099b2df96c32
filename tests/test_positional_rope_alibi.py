"""Rotary embeddings and ALiBi against the papers' formulas written out in plain float64 math."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from multihead import MultiHeadAttention
from multihead.modules.models import DecoderLM, TransformerConfig
from multihead.modules.observers import add_attention_observer
from multihead.positional import (
    LearnedPositionalEncoding,
    RotaryEmbedding,
    SinusoidalPositionalEncoding,
    alibi_bias,
    alibi_slopes,
    build_positional,
)
from oracle import attention64

# ------------------------------------------------------------------------------ references


def rope64(x: torch.Tensor, positions: list[int], base: float = 10000.0) -> torch.Tensor:
    """Su et al. (2021), Eq. 34, one feature pair at a time, with GPT-NeoX/LLaMA's pairing of
    feature i with feature i + D/2. ``x (..., N, D)``; position of row n is positions[n]."""
    x = x.double()
    out = x.clone()
    d = x.shape[-1]
    half = d // 2
    for n, p in enumerate(positions):
        for i in range(half):
            theta = p * base ** (-2.0 * i / d)
            c, s = math.cos(theta), math.sin(theta)
            a, b = x[..., n, i], x[..., n, i + half]
            out[..., n, i] = a * c - b * s
            out[..., n, i + half] = b * c + a * s
    return out


def rope_interleaved64(x: torch.Tensor, positions: list[int], base: float = 10000.0):
    """The paper's own pairing, (2i, 2i + 1)."""
    x = x.double()
    out = x.clone()
    d = x.shape[-1]
    for n, p in enumerate(positions):
        for i in range(d // 2):
            theta = p * base ** (-2.0 * i / d)
            c, s = math.cos(theta), math.sin(theta)
            a, b = x[..., n, 2 * i], x[..., n, 2 * i + 1]
            out[..., n, 2 * i] = a * c - b * s
            out[..., n, 2 * i + 1] = b * c + a * s
    return out


def paper_slopes(h: int) -> list[float]:
    """Press et al. (2022), Sec. 3 and their reference code, written independently."""

    def pow2(n: int) -> list[float]:
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start * start**i for i in range(n)]

    if math.log2(h).is_integer():
        return pow2(h)
    closest = 2 ** math.floor(math.log2(h))
    return pow2(closest) + pow2(2 * closest)[0::2][: h - closest]


# ------------------------------------------------------------------------------ RoPE


@pytest.mark.parametrize("d", [2, 8, 16])
def test_rope_matches_plain_rotation(d: int) -> None:
    rope = RotaryEmbedding(d, max_len=4)  # positions past max_len grow the table
    x = torch.randn(2, 3, 6, d)
    positions = [0, 1, 5, 9, 100, 4097]
    got = rope(x, torch.tensor(positions))
    torch.testing.assert_close(got.double(), rope64(x, positions), atol=2e-5, rtol=0)
    # An int offset is positions offset .. offset + N - 1.
    torch.testing.assert_close(
        rope(x, 7).double(), rope64(x, list(range(7, 13))), atol=2e-5, rtol=0
    )


def test_rope_per_row_positions() -> None:
    rope = RotaryEmbedding(8)
    x = torch.randn(2, 3, 4, 8)  # (B, H, N, D)
    positions = torch.tensor([[0, 1, 2, 3], [5, 6, 7, 8]])
    got = rope(x, positions)
    for row in range(2):
        want = rope64(x[row], positions[row].tolist())
        torch.testing.assert_close(got[row].double(), want, atol=1e-5, rtol=0)


def test_half_split_is_the_paper_rotation_up_to_a_feature_permutation() -> None:
    d = 8
    # perm[j] = the paper's (interleaved) feature that sits at half-split feature j
    perm = torch.tensor([2 * i for i in range(d // 2)] + [2 * i + 1 for i in range(d // 2)])
    x = torch.randn(5, d)
    positions = [0, 3, 7, 11, 20]
    ours = rope64(x[:, perm], positions)
    theirs = rope_interleaved64(x, positions)[:, perm]
    torch.testing.assert_close(ours, theirs, atol=1e-12, rtol=0)


@given(
    p=st.integers(0, 2000),
    s=st.integers(0, 2000),
    shift=st.integers(0, 2000),
    seed=st.integers(0, 2**16),
)
def test_rope_scores_depend_only_on_relative_position(p: int, s: int, shift: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    q, k = torch.randn(2, 1, 16, generator=g, dtype=torch.float64)
    rope = RotaryEmbedding(16)
    q, k = q.float(), k.float()

    def score(pq: int, pk: int) -> float:
        return float((rope(q, pq).double() * rope(k, pk).double()).sum())

    assert score(p, s) == pytest.approx(score(p + shift, s + shift), abs=2e-4)


def test_rope_keeps_norms_and_position_zero_is_identity() -> None:
    rope = RotaryEmbedding(12)
    x = torch.randn(3, 10, 12)
    torch.testing.assert_close(rope(x, 0)[:, 0], x[:, 0])
    torch.testing.assert_close(rope(x, 123).norm(dim=-1), x.norm(dim=-1), atol=1e-5, rtol=1e-5)


def test_rope_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="dim must be even"):
        RotaryEmbedding(7)
    with pytest.raises(ValueError, match="base"):
        RotaryEmbedding(8, base=1.0)
    rope = RotaryEmbedding(8)
    with pytest.raises(ValueError, match=r"D=8"):
        rope(torch.randn(2, 3, 6))
    with pytest.raises(TypeError, match="integer"):
        rope(torch.randn(2, 3, 8), torch.zeros(3))
    with pytest.raises(ValueError, match=r"positions must be \(N,\)"):
        rope(torch.randn(2, 3, 8), torch.arange(4))
    with pytest.raises(ValueError, match=">= 0"):
        rope(torch.randn(2, 3, 8), torch.tensor([0, -1, 2]))
    with pytest.raises(ValueError, match="even head size"):
        TransformerConfig(vocab_size=10, d_model=12, num_heads=4, positional="rope")
    with pytest.raises(ValueError, match="cannot be combined"):
        MultiHeadAttention(8, 2, rotary=True, alibi=True)


def _projections(mha: MultiHeadAttention, x: torch.Tensor):
    b, n, _ = x.shape

    def proj(linear, heads):
        y = x.double() @ linear.weight.double().T + linear.bias.double()
        return y.view(b, n, heads, -1).transpose(1, 2)  # (B, heads, N, D)

    hkv = mha.num_kv_heads
    return proj(mha.q_proj, mha.num_heads), proj(mha.k_proj, hkv), proj(mha.v_proj, hkv)


def _out(mha: MultiHeadAttention, o: torch.Tensor) -> torch.Tensor:
    o = o.transpose(1, 2).flatten(2)
    return o @ mha.out_proj.weight.double().T + mha.out_proj.bias.double()


@pytest.mark.parametrize("num_kv_heads", [4, 2, 1])
def test_rotary_attention_matches_float64_reference(num_kv_heads: int) -> None:
    mha = MultiHeadAttention(32, 4, num_kv_heads=num_kv_heads, rotary=True, rope_base=500.0)
    x = torch.randn(2, 7, 32)
    got = mha(x, causal=True).output
    q, k, v = _projections(mha, x.double())
    positions = list(range(7))
    q, k = rope64(q, positions, base=500.0), rope64(k, positions, base=500.0)
    out, _ = attention64(q, k, v, causal=True)
    torch.testing.assert_close(got.double(), _out(mha, out), atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------ ALiBi


def test_alibi_slopes_of_the_paper() -> None:
    assert alibi_slopes(8).tolist() == [2.0**-i for i in range(1, 9)]  # 1/2 ... 1/256
    for h in (1, 2, 3, 4, 5, 6, 7, 12, 16, 20, 24):
        torch.testing.assert_close(
            alibi_slopes(h).double(), torch.tensor(paper_slopes(h), dtype=torch.float64)
        )
    # Non-power-of-two: 6 heads = the 4-head slopes and every other 8-head slope.
    assert alibi_slopes(6).tolist() == [1 / 4, 1 / 16, 1 / 64, 1 / 256, 1 / 2, 1 / 8]


def test_alibi_bias_is_the_paper_formula() -> None:
    slopes = alibi_slopes(4)
    q_pos, k_pos = torch.arange(5, 8), torch.arange(0, 8)  # 3 queries at the end of 8 keys
    bias = alibi_bias(slopes, q_pos, k_pos)
    assert bias.shape == (4, 3, 8)
    for h in range(4):
        for a, i in enumerate(q_pos.tolist()):
            for j in k_pos.tolist():
                if j <= i:  # where a causal query looks: -m_h (i - j)
                    assert bias[h, a, j].item() == pytest.approx(-slopes[h].item() * (i - j))


@pytest.mark.parametrize("num_heads", [4, 6])
def test_alibi_attention_matches_float64_reference(num_heads: int) -> None:
    mha = MultiHeadAttention(24, num_heads, alibi=True)
    x = torch.randn(2, 6, 24)
    padding = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    got = mha(x, key_padding_mask=padding, causal=True).output
    q, k, v = _projections(mha, x.double())
    slopes = paper_slopes(num_heads)
    bias = torch.tensor(
        [[[-m * (i - j) if j <= i else 0.0 for j in range(6)] for i in range(6)] for m in slopes],
        dtype=torch.float64,
    )
    bias = bias[None].expand(2, -1, -1, -1).masked_fill(~padding[:, None, None, :], -math.inf)
    out, _ = attention64(q, k, v, bias, causal=True)
    torch.testing.assert_close(got.double(), _out(mha, out), atol=1e-5, rtol=0)


def test_alibi_travels_as_slopes_not_as_a_dense_bias() -> None:
    seen = []
    handle = add_attention_observer(lambda module, spec: seen.append(spec))
    try:
        MultiHeadAttention(16, 4, alibi=True)(torch.randn(5, 9, 16), causal=True)
    finally:
        handle.remove()
    assert seen[0].mask is None
    torch.testing.assert_close(seen[0].alibi_slopes, alibi_slopes(4))


# ------------------------------------------------------------------------------ additive kinds


def test_build_positional_refuses_the_kinds_applied_in_attention() -> None:
    for kind in ("rope", "alibi", "none"):
        with pytest.raises(ValueError, match=f"positional='{kind}'"):
            build_positional(kind, 8, 4)
    with pytest.raises(ValueError, match="positional must be one of"):
        build_positional("xpos", 8, 4)


@pytest.mark.parametrize("cls", [SinusoidalPositionalEncoding, LearnedPositionalEncoding])
def test_explicit_positions_equal_offsets(cls) -> None:
    pe = cls(8, 16)
    x = torch.randn(2, 3, 8)
    torch.testing.assert_close(pe(x, positions=torch.tensor([4, 5, 6])), pe(x, 4))
    rows = pe(x, positions=torch.tensor([[0, 1, 2], [7, 8, 9]]))
    torch.testing.assert_close(rows[1], pe(x[1:], 7)[0])


def test_rope_model_left_padding_with_positions_equals_unpadded_rows() -> None:
    torch.manual_seed(1)
    config = TransformerConfig(
        vocab_size=20, d_model=16, num_heads=2, d_ff=32, dropout=0.0, positional="rope"
    )
    lm = DecoderLM(config).eval()
    short, long = torch.randint(1, 20, (1, 3)), torch.randint(1, 20, (1, 5))
    ids = torch.cat([torch.cat([torch.zeros(1, 2, dtype=torch.long), short], 1), long])
    padding = torch.tensor([[False, False, True, True, True], [True] * 5])
    positions = (padding.long().cumsum(1) - 1).clamp(min=0)  # count from the first real token
    with torch.no_grad():
        logits = lm(ids, padding, positions=positions)
        torch.testing.assert_close(logits[0, 2:], lm(short)[0], atol=1e-5, rtol=0)
        torch.testing.assert_close(logits[1], lm(long)[0], atol=1e-5, rtol=0)
