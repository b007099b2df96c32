from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from multihead import masks
from oracle import allowed_matrix


@given(st.integers(1, 9), st.integers(1, 9), st.booleans(), st.one_of(st.none(), st.integers(0, 5)))
def test_structural_mask_matches_loops(nq, nk, causal, window):
    got = masks.structural_mask(nq, nk, causal=causal, window=window)
    if not causal and window is None:
        assert got is None
    else:
        assert torch.equal(got, allowed_matrix(nq, nk, causal=causal, window=window))


def test_causal_is_bottom_right_aligned():
    m = masks.causal_mask(2, 4)
    assert m.tolist() == [[True, True, True, False], [True, True, True, True]]


def test_window_pair_sets_each_side():
    m = masks.window_mask(4, window=(0, 1))
    assert m.int().tolist() == [[1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1], [0, 0, 0, 1]]


def test_padding_mask_from_lengths():
    m = masks.padding_mask(torch.tensor([0, 2, 3]), max_len=4)
    assert m.shape == (3, 1, 1, 4)
    assert m[:, 0, 0].int().tolist() == [[0, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0]]


def test_combine_bool_and_float():
    bias = torch.zeros(2, 2)
    allowed = torch.tensor([[True, False], [True, True]])
    out = masks.combine_masks(bias, allowed, torch.ones(2, 2))
    assert out.tolist() == [[1.0, float("-inf")], [1.0, 1.0]]
    assert masks.combine_masks(None, None) is None
    assert torch.equal(masks.combine_masks(allowed, allowed.T), allowed & allowed.T)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_to_additive(dtype):
    out = masks.to_additive(torch.tensor([True, False]), dtype)
    assert out.dtype == dtype and out.tolist() == [0.0, float("-inf")]
