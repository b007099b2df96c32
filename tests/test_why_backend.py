"""``MultiHeadAttention.why_backend`` names the kernel that ``forward`` actually runs.

Each call is made twice: once through ``why_backend`` and once through ``forward`` with every
backend's function wrapped to record which one ran. A sweep over the options that steer the
choice (weights, masks, windows, dropout in training, ALiBi, caches, long narrow windows).
"""

from __future__ import annotations

import itertools

import pytest
import torch

from multihead import MultiHeadAttention
from multihead.cache import KVCache
from multihead.functional import _REGISTRY, Backend


@pytest.fixture
def ran(monkeypatch):
    names: list[str] = []
    for name, backend in list(_REGISTRY.items()):

        def record(spec, _fn=backend.fn, _name=name):
            names.append(_name)
            return _fn(spec)

        monkeypatch.setitem(
            _REGISTRY,
            name,
            Backend(
                name=backend.name,
                fn=record,
                supports=backend.supports,
                exact=backend.exact,
                priority=backend.priority,
                description=backend.description,
                alibi=backend.alibi,
            ),
        )
    return names


CALLS = list(
    itertools.product(
        [False, True],  # need_weights
        [None, "padding", "float"],  # mask
        [None, 2],  # window
        [False, True],  # causal
        ["plain", "alibi", "rotary"],
        [False, True],  # training with dropout
    )
)


@pytest.mark.parametrize(("need_weights", "mask", "window", "causal", "position", "train"), CALLS)
def test_why_backend_names_the_kernel_forward_runs(
    ran, need_weights, mask, window, causal, position, train
):
    torch.manual_seed(0)
    mha = MultiHeadAttention(
        16, 4, dropout=0.1, alibi=position == "alibi", rotary=position == "rotary"
    ).train(train)
    x = torch.randn(2, 5, 16)
    kwargs = {"need_weights": need_weights, "window": window, "causal": causal}
    if mask == "padding":
        kwargs["key_padding_mask"] = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])
    elif mask == "float":
        kwargs["mask"] = torch.randn(5, 5)
    why = mha.why_backend(x, **kwargs)
    assert ran == []  # why_backend runs no kernel
    mha(x, **kwargs)
    assert ran == [why.split()[0]], why


def test_why_backend_with_a_cache_leaves_it_unchanged_and_agrees(ran):
    mha = MultiHeadAttention(16, 4, alibi=True).eval()
    cache = KVCache()
    mha(torch.randn(1, 3, 16), causal=True, cache=cache)
    ran.clear()
    step = torch.randn(1, 1, 16)
    why = mha.why_backend(step, causal=True, cache=cache)
    assert cache.length == 3 or cache.num_stored == 3
    mha(step, causal=True, cache=cache)
    assert ran == [why.split()[0]]


def test_why_backend_for_a_long_narrow_window_names_the_block_kernel(ran):
    mha = MultiHeadAttention(16, 2).eval()
    x = torch.randn(1, 4096, 16)
    why = mha.why_backend(x, window=8)
    mha(x, window=8)
    assert ran == [why.split()[0]] and why.split()[0] != "sdpa", why
