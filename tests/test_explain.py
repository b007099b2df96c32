"""The worked example against arithmetic written out by hand."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from multihead.cli import main
from multihead.explain import ExplainConfig, worked_example


def sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


def test_one_head_by_hand():
    (ex,) = worked_example(ExplainConfig(num_heads=(1,)))
    h = ex.heads[0]
    # Q = K = X, V = X W_V = [[2, 1], [4, 3]]
    np.testing.assert_array_equal(h.v, [[2, 1], [4, 3]])
    np.testing.assert_array_equal(h.scores, [[5, 11], [11, 25]])
    np.testing.assert_allclose(h.scaled, np.array([[5, 11], [11, 25]]) / math.sqrt(2))
    # two-way softmax: weight on key 2 = sigmoid(difference of scaled scores)
    w12 = sigmoid((11 - 5) / math.sqrt(2))
    w22 = sigmoid((25 - 11) / math.sqrt(2))
    np.testing.assert_allclose(h.weights, [[1 - w12, w12], [1 - w22, w22]], rtol=1e-12)
    np.testing.assert_allclose(h.weights.sum(1), [1, 1])
    out = [[2 + 2 * w12, 1 + 2 * w12], [2 + 2 * w22, 1 + 2 * w22]]
    np.testing.assert_allclose(h.output, out, rtol=1e-12)
    np.testing.assert_allclose(ex.output, out, rtol=1e-12)
    assert round(out[0][0], 4) == 3.9717 and round(out[0][1], 4) == 2.9717


def test_two_heads_by_hand():
    (ex,) = worked_example(ExplainConfig(num_heads=(2,)))
    assert ex.d_k == 1
    # head 1 sees column 0: q = k = [1, 3], v = [2, 4]; head 2 column 1: q = k = [2, 4], v = [1, 3]
    a1, b1 = sigmoid(3 - 1), sigmoid(9 - 3)
    a2, b2 = sigmoid(8 - 4), sigmoid(16 - 8)
    np.testing.assert_allclose(ex.heads[0].weights, [[1 - a1, a1], [1 - b1, b1]], rtol=1e-12)
    np.testing.assert_allclose(ex.heads[1].weights, [[1 - a2, a2], [1 - b2, b2]], rtol=1e-12)
    out = [[2 + 2 * a1, 1 + 2 * a2], [2 + 2 * b1, 1 + 2 * b2]]
    np.testing.assert_allclose(ex.concat, out, rtol=1e-12)
    np.testing.assert_allclose(ex.output, out, rtol=1e-12)


def test_causal_first_token_sees_only_itself():
    (ex,) = worked_example(ExplainConfig(num_heads=(1,), causal=True))
    np.testing.assert_allclose(
        ex.heads[0].weights, [[1, 0], [1 - sigmoid(14 / math.sqrt(2)), sigmoid(14 / math.sqrt(2))]]
    )
    np.testing.assert_allclose(ex.output[0], [2, 1])


def test_custom_matrices_and_output_projection():
    x = ((1.0, 0.0, 2.0), (0.0, 1.0, 1.0), (2.0, 1.0, 0.0))
    w_o = ((0.0, 0.0, 1.0), (0.0, 2.0, 0.0), (1.0, 0.0, 0.0))
    (ex,) = worked_example(ExplainConfig(x=x, w_o=w_o, num_heads=(3,)))
    xa = np.array(x)
    heads = []
    for c in range(3):
        s = np.outer(xa[:, c], xa[:, c])
        e = np.exp(s - s.max(1, keepdims=True))
        heads.append((e / e.sum(1, keepdims=True)) @ xa[:, c])
    np.testing.assert_allclose(ex.output, np.stack(heads, 1) @ np.array(w_o), rtol=1e-12)


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"x": ((1.0, 2.0),), "w_q": ((1.0,),)}, "w_q must be (2, 2)"),
        ({"num_heads": (3,)}, "num_heads"),
        ({"x": ()}, "x must be"),
    ],
)
def test_bad_config(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        worked_example(ExplainConfig(**kwargs))


def test_cli_json(capsys):
    assert main(["explain", "--json", "--heads", "1"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["results"][0]["heads"][0]["QK^T"] == [[5.0, 11.0], [11.0, 25.0]]


def test_cli_bad_matrix_is_one_line_error():
    proc = subprocess.run(
        [sys.executable, "-m", "multihead.cli", "explain", "--x", "1,2;3"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "different lengths" in proc.stderr and "Traceback" not in proc.stderr


def test_cli_text_output(capsys):
    assert main(["explain"]) == 0
    out = capsys.readouterr().out
    assert "3.9717" in out and "3.7616" in out and "row sums: 1.0000, 1.0000" in out
