"""The position-wise feed-forward network of the Transformer (Vaswani et al., 2017, Eq. 2)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ..functional._checks import check_choice, check_dropout

__all__ = ["ACTIVATIONS", "FeedForward"]

ACTIVATIONS = ("gelu", "relu")


def _positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


class FeedForward(nn.Module):
    r"""Two linear maps with an activation between, applied to each position alike.

    .. math::
        \mathrm{FFN}(x) = \mathrm{act}(x W_1 + b_1) W_2 + b_2

    The paper uses ReLU (Eq. 2); GELU is the default here, as in BERT, GPT-2 and ViT.

    Args:
        d_model: ``E``, input and output size.
        d_ff: hidden size (the paper's ``d_ff``, typically ``4 * E``).
        dropout: dropout on the hidden activations while training. The residual dropout on the
            output belongs to the layer that adds the residual, not here.
        activation: ``"gelu"`` or ``"relu"``.

    Shapes: ``x (..., E)`` -> ``(..., E)``.

    Example:
        >>> import torch
        >>> ff = FeedForward(16, 64, activation="relu")
        >>> ff(torch.randn(2, 5, 16)).shape
        torch.Size([2, 5, 16])
    """

    def __init__(
        self, d_model: int, d_ff: int, dropout: float = 0.0, activation: str = "gelu"
    ) -> None:
        super().__init__()
        d_model = _positive_int(d_model, "d_model")
        d_ff = _positive_int(d_ff, "d_ff")
        check_dropout(dropout, "dropout")
        check_choice(activation, "activation", ACTIVATIONS)
        self.activation = activation
        self.linear1 = nn.Linear(d_model, d_ff)
        self.linear2 = nn.Linear(d_ff, d_model)
        self.dropout = nn.Dropout(dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier-uniform weights and zero biases, the same scheme as the attention projections."""
        for linear in (self.linear1, self.linear2):
            nn.init.xavier_uniform_(linear.weight)
            nn.init.zeros_(linear.bias)

    def forward(self, x: Tensor) -> Tensor:
        h = self.linear1(x)
        h = F.gelu(h) if self.activation == "gelu" else F.relu(h)
        return self.linear2(self.dropout(h))

    def extra_repr(self) -> str:
        return f"activation={self.activation!r}"
