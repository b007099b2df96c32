"""The position-wise feed-forward network of the Transformer (Vaswani et al., 2017, Eq. 2).

Two forms, chosen by ``kind``:

* ``"mlp"``: ``linear2(act(linear1(x)))``, the paper's (and BERT's, GPT-2's);
* ``"gated"``: ``linear2(act(gate(x)) * linear1(x))``, the gated linear unit of Shazeer (2020,
  "GLU Variants Improve Transformer", Eq. 6); with ``activation="silu"`` it is SwiGLU, LLaMA's
  MLP (``gate_proj`` -> ``gate``, ``up_proj`` -> ``linear1``, ``down_proj`` -> ``linear2``).

``state_dict`` keys: ``linear1.weight``/``linear1.bias`` ``(d_ff, E)``/``(d_ff,)``,
``linear2.weight``/``linear2.bias`` ``(E, d_ff)``/``(E,)``, and for ``"gated"`` also
``gate.weight``/``gate.bias`` ``(d_ff, E)``/``(d_ff,)``; no ``*.bias`` keys when ``bias=False``.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch.nn.functional as F
from torch import Tensor, nn

from .._validation import check_choice, check_int, check_probability
from ..config import ACTIVATIONS, FFN_KINDS

__all__ = ["ACTIVATIONS", "FFN_KINDS", "FeedForward", "activation_fn"]

# "gelu_tanh" is the tanh approximation of GELU (Hendrycks & Gimpel, 2016, Sec. 2) that GPT-2
# was trained with ("gelu_new" in Hugging Face); "silu" (x * sigmoid(x)) is LLaMA's, in "gated".

_ACTIVATION_FNS: dict[str, Callable[[Tensor], Tensor]] = {
    "gelu": F.gelu,
    "relu": F.relu,
    "gelu_tanh": partial(F.gelu, approximate="tanh"),
    "silu": F.silu,
}


def activation_fn(name: str) -> Callable[[Tensor], Tensor]:
    """The elementwise function called ``name`` (one of :data:`ACTIVATIONS`).

    Example:
        >>> import torch
        >>> activation_fn("relu")(torch.tensor([-1.0, 2.0])).tolist()
        [0.0, 2.0]
    """
    check_choice(name, "activation", ACTIVATIONS)
    return _ACTIVATION_FNS[name]


class FeedForward(nn.Module):
    r"""Two linear maps with an activation between, applied to each position alike.

    .. math::
        \mathrm{FFN}(x) = \mathrm{act}(x W_1 + b_1) W_2 + b_2
        \qquad\text{or, gated,}\qquad
        (\mathrm{act}(x W_g + b_g) \odot (x W_1 + b_1)) W_2 + b_2

    The paper uses ReLU (Eq. 2); GELU is the default here, as in BERT, GPT-2 and ViT.

    Args:
        d_model: ``E``, input and output size.
        d_ff: hidden size (the paper's ``d_ff``, typically ``4 * E``).
        dropout: dropout on the hidden activations while training. The residual dropout on the
            output belongs to the layer that adds the residual, not here.
        activation: one of :data:`ACTIVATIONS` (``"gelu"``, ``"relu"``, ``"gelu_tanh"``,
            ``"silu"``).
        kind: ``"mlp"`` or ``"gated"`` (see the module docstring).
        bias: add biases to the linear maps (LLaMA has none).

    Shapes: ``x (..., E)`` -> ``(..., E)``.

    Example:
        >>> import torch
        >>> ff = FeedForward(16, 64, activation="relu")
        >>> ff(torch.randn(2, 5, 16)).shape
        torch.Size([2, 5, 16])
        >>> FeedForward(16, 40, activation="silu", kind="gated", bias=False)(
        ...     torch.randn(3, 16)).shape
        torch.Size([3, 16])
    """

    def __init__(
        self,
        d_model: int,
        d_ff: int,
        dropout: float = 0.0,
        activation: str = "gelu",
        *,
        kind: str = "mlp",
        bias: bool = True,
    ) -> None:
        super().__init__()
        d_model = check_int(d_model, "d_model")
        d_ff = check_int(d_ff, "d_ff")
        check_probability(dropout, "dropout")
        check_choice(activation, "activation", ACTIVATIONS)
        check_choice(kind, "kind", FFN_KINDS)
        if not isinstance(bias, bool):
            raise TypeError(f"bias must be a bool, got {type(bias).__name__}")
        self.activation = activation
        self.kind = kind
        self._act = _ACTIVATION_FNS[activation]
        self.linear1 = nn.Linear(d_model, d_ff, bias=bias)
        self.gate = nn.Linear(d_model, d_ff, bias=bias) if kind == "gated" else None
        self.linear2 = nn.Linear(d_ff, d_model, bias=bias)
        self.dropout = nn.Dropout(dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier-uniform weights and zero biases, the same scheme as the attention projections."""
        for linear in (self.linear1, self.gate, self.linear2):
            if linear is None:
                continue
            nn.init.xavier_uniform_(linear.weight)
            if linear.bias is not None:
                nn.init.zeros_(linear.bias)

    def forward(self, x: Tensor) -> Tensor:
        h = self.linear1(x)  # (..., d_ff)
        h = self._act(h) if self.gate is None else self._act(self.gate(x)) * h
        if self.training and self.dropout.p > 0:
            h = self.dropout(h)
        return self.linear2(h)

    def extra_repr(self) -> str:
        extra = f", kind={self.kind!r}" if self.kind != "mlp" else ""
        return f"activation={self.activation!r}{extra}"
