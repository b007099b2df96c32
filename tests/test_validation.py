"""Bad input is refused with a TypeError/ValueError that names the argument and shows values."""

from __future__ import annotations

import pytest
import torch

from multihead import MultiHeadAttention, masks
from multihead.functional import attention

q4 = torch.randn(2, 4, 5, 8)
kv4 = torch.randn(2, 2, 6, 8)


@pytest.mark.parametrize(
    "call, exc, fragments",
    [
        (
            lambda: attention(torch.randn(2, 5, 8), kv4, kv4),
            ValueError,
            ["query", "4-D", "(2, 5, 8)"],
        ),
        (lambda: attention(q4, torch.randn(2, 6, 8), kv4), ValueError, ["key", "4-D", "(2, 6, 8)"]),
        (
            lambda: attention(q4, torch.randn(3, 2, 6, 8), torch.randn(3, 2, 6, 8)),
            ValueError,
            ["batch", "(3, 2, 6, 8)"],
        ),
        (
            lambda: attention(q4, torch.randn(2, 3, 6, 8), torch.randn(2, 3, 6, 8)),
            ValueError,
            ["H=4", "Hkv=3"],
        ),
        (lambda: attention(q4, kv4, torch.randn(2, 1, 6, 8)), ValueError, ["Hkv", "value"]),
        (lambda: attention(q4, torch.randn(2, 2, 6, 7), kv4), ValueError, ["Dk", "(2, 2, 6, 7)"]),
        (lambda: attention(q4, kv4, torch.randn(2, 2, 5, 8)), ValueError, ["Nk", "(2, 2, 5, 8)"]),
        (
            lambda: attention(q4, kv4.double(), kv4.double()),
            TypeError,
            ["dtype", "float32", "float64"],
        ),
        (lambda: attention(q4.long(), kv4, kv4), TypeError, ["query", "floating", "int64"]),
        (
            lambda: attention(q4, kv4, kv4, mask=torch.ones(5, 6, dtype=torch.int64)),
            TypeError,
            ["mask", "int64"],
        ),
        (
            lambda: attention(q4, kv4, kv4, mask=torch.ones(5, 6, dtype=torch.uint8)),
            TypeError,
            ["mask", "uint8"],
        ),
        (
            lambda: attention(q4, kv4, kv4, mask=torch.ones(5, 7, dtype=torch.bool)),
            ValueError,
            ["mask", "(5, 7)", "Nk"],
        ),
        (
            lambda: attention(q4, kv4, kv4, mask=torch.ones(2, 6, dtype=torch.bool)),
            ValueError,
            ["mask", "(2, 6)"],
        ),
        (
            lambda: attention(q4, kv4, kv4, mask=torch.ones(2, 6, dtype=torch.bool)[:, None]),
            ValueError,
            ["mask", "2-D", "4-D"],
        ),
        (
            lambda: attention(q4, kv4, kv4, mask=torch.ones(3, 1, 5, 6, dtype=torch.bool)),
            ValueError,
            ["mask", "B axis is 3"],
        ),
        (
            lambda: attention(q4, kv4, kv4, dropout_p=1.0),
            ValueError,
            ["dropout_p", "[0, 1)", "1.0"],
        ),
        (lambda: attention(q4, kv4, kv4, dropout_p=-0.1), ValueError, ["dropout_p", "-0.1"]),
        (lambda: attention(q4, kv4, kv4, window=-1), ValueError, ["window", "-1"]),
        (lambda: attention(q4, kv4, kv4, window=1.5), TypeError, ["window", "float"]),
        (lambda: attention(q4, kv4, kv4, score="l2"), ValueError, ["score", "'l2'"]),
        (lambda: attention(q4, kv4, kv4, scale=float("nan")), ValueError, ["scale", "nan"]),
        (
            lambda: attention(q4, kv4, kv4, backend="flash9"),
            ValueError,
            ["backend", "'flash9'", "math"],
        ),
        (lambda: attention(q4, kv4, kv4, causal=1), TypeError, ["causal", "int"]),
        (lambda: attention(q4, kv4, [1.0]), TypeError, ["value", "list"]),
    ],
)
def test_functional_errors(call, exc, fragments):
    with pytest.raises(exc) as info:
        call()
    for fragment in fragments:
        assert fragment in str(info.value), (fragment, str(info.value))


@pytest.mark.parametrize(
    "kwargs, exc, fragments",
    [
        ({"embed_dim": 10, "num_heads": 4}, ValueError, ["embed_dim=10", "num_heads=4"]),
        (
            {"embed_dim": 16, "num_heads": 4, "num_kv_heads": 3},
            ValueError,
            ["num_heads=4", "num_kv_heads=3"],
        ),
        ({"embed_dim": 16, "num_heads": 0}, ValueError, ["num_heads", "0"]),
        ({"embed_dim": 16, "num_heads": 4, "dropout": 1.0}, ValueError, ["dropout", "1.0"]),
        ({"embed_dim": 16, "num_heads": 4, "backend": "nope"}, ValueError, ["backend", "'nope'"]),
        ({"embed_dim": 16, "num_heads": 4, "score": "l1"}, ValueError, ["score", "'l1'"]),
        ({"embed_dim": 16, "num_heads": 4, "head_dim": -1}, ValueError, ["head_dim", "-1"]),
    ],
)
def test_module_construction_errors(kwargs, exc, fragments):
    with pytest.raises(exc) as info:
        MultiHeadAttention(**kwargs)
    for fragment in fragments:
        assert fragment in str(info.value)


mha = MultiHeadAttention(16, 4, kdim=8)
x = torch.randn(2, 5, 16)
k8 = torch.randn(2, 6, 8)
v16 = torch.randn(2, 6, 16)


@pytest.mark.parametrize(
    "call, exc, fragments",
    [
        (lambda: mha(torch.randn(5, 16), k8, v16), ValueError, ["query", "3-D", "(5, 16)"]),
        (
            lambda: mha(torch.randn(2, 5, 12), k8, v16),
            ValueError,
            ["query", "embed_dim=16", "(2, 5, 12)"],
        ),
        (lambda: mha(x, torch.randn(2, 6, 16), v16), ValueError, ["key", "kdim=8", "(2, 6, 16)"]),
        (lambda: mha(x, k8, torch.randn(2, 7, 16)), ValueError, ["(2, 6, 8)", "(2, 7, 16)"]),
        (
            lambda: mha(x, k8, v16, key_padding_mask=torch.ones(2, 5, dtype=torch.bool)),
            ValueError,
            ["key_padding_mask", "(2, 6)", "(2, 5)"],
        ),
        (
            lambda: mha(x, k8, v16, key_padding_mask=torch.ones(2, 6, dtype=torch.long)),
            TypeError,
            ["key_padding_mask", "int64", "padding_mask"],
        ),
        (
            lambda: mha(x, k8, v16, mask=torch.ones(3, 5, 6, dtype=torch.bool)),
            ValueError,
            ["mask", "(2, 5, 6)", "(3, 5, 6)"],
        ),
        (
            lambda: mha(x, k8, v16, mask=torch.ones(5, 6, dtype=torch.int32)),
            TypeError,
            ["mask", "int32"],
        ),
    ],
)
def test_module_forward_errors(call, exc, fragments):
    with pytest.raises(exc) as info:
        call()
    for fragment in fragments:
        assert fragment in str(info.value), (fragment, str(info.value))


def test_mask_helpers_validate():
    with pytest.raises(TypeError, match="lengths"):
        masks.padding_mask(torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match="max_len=2"):
        masks.padding_mask(torch.tensor([3, 1]), max_len=2)
    with pytest.raises(ValueError, match=">= 0"):
        masks.padding_mask(torch.tensor([-1, 1]))
    with pytest.raises(TypeError, match="masks\\[1\\]"):
        masks.combine_masks(None, torch.ones(2, dtype=torch.int64))
