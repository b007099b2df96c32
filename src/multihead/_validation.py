"""Checks of user input shared by the whole package, with one wording.

Each check raises ``TypeError`` for a value of the wrong type and ``ValueError`` for one out of
range, naming the argument (``name``: ``"num_heads"``, ``"TransformerConfig.d_model"``...),
what was expected and what came in. They return the value, normalised where that helps (a
float for an int given as a probability), so callers can write ``x = check_int(x, "x")``.
Only for input from outside; our own invariants use ``assert``.

This module imports nothing else from the package, so everything may use it.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from numbers import Real
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "check_bool",
    "check_choice",
    "check_float",
    "check_int",
    "check_mask_dtype",
    "check_padding_mask",
    "check_probability",
    "check_token_ids",
]


def _got(value: object) -> str:
    return f"{type(value).__name__} {value!r}"


def check_int(value: Any, name: str, *, minimum: int | None = 1, optional: bool = False) -> Any:
    """An ``int`` (not a ``bool``) ``>= minimum``; ``None`` passes when ``optional``.

    Example:
        >>> check_int(3, "num_heads")
        3
        >>> check_int(0, "num_heads")
        Traceback (most recent call last):
        ...
        ValueError: num_heads must be >= 1, got 0
    """
    if optional and value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        kind = "an int or None" if optional else "an int"
        raise TypeError(f"{name} must be {kind}, got {_got(value)}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_float(
    value: Any,
    name: str,
    *,
    above: float | None = None,
    at_least: float | None = None,
    below: float | None = None,
) -> float:
    """A finite real number (``bool`` refused) in the given open/closed bounds, as ``float``."""
    bounds = []
    if above is not None:
        bounds.append(f"> {above}")
    if at_least is not None:
        bounds.append(f">= {at_least}")
    if below is not None:
        bounds.append(f"< {below}")
    kind = "a finite float" + (" " + " and ".join(bounds) if bounds else "")
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be {kind}, got {_got(value)}")
    x = float(value)
    if (
        not math.isfinite(x)
        or (above is not None and not x > above)
        or (at_least is not None and not x >= at_least)
        or (below is not None and not x < below)
    ):
        raise ValueError(f"{name} must be {kind}, got {value}")
    return x


def check_probability(value: Any, name: str) -> float:
    """A dropout-style probability in ``[0, 1)``, as ``float``."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a float in [0, 1), got {_got(value)}")
    if not 0.0 <= float(value) < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value}")
    return float(value)


def check_options(
    options: Mapping[str, object],
    allowed: Any,
    caller: str,
    *,
    required: Collection[str] = (),
) -> None:
    """Refuse keywords that the TypedDict ``allowed`` does not declare, and missing
    ``required`` ones, naming ``caller``: a function that forwards ``**options`` to another's
    explicit signature would otherwise let that other function's name into the error.

    Example:
        >>> from typing import TypedDict
        >>> class Opts(TypedDict, total=False):
        ...     causal: bool
        >>> check_options({"causl": True}, Opts, "attend")
        Traceback (most recent call last):
        ...
        TypeError: attend() got unexpected keyword argument(s) ['causl']; it takes ['causal']
    """
    names = allowed.__required_keys__ | allowed.__optional_keys__
    unknown = sorted(options.keys() - names)
    if unknown:
        raise TypeError(
            f"{caller}() got unexpected keyword argument(s) {unknown}; it takes {sorted(names)}"
        )
    missing = [name for name in required if name not in options]
    if missing:
        raise TypeError(f"{caller}() missing required keyword argument(s) {missing}")


def check_bool(value: Any, name: str) -> bool:
    """A ``bool`` (``0``/``1`` are refused: a flag is a flag)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {_got(value)}")
    return value


def check_choice(value: Any, name: str, choices: Sequence[Any]) -> Any:
    """One of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")
    return value


def check_mask_dtype(mask: Any, name: str = "mask") -> None:
    """A bool (``True`` = may attend) or floating (additive bias) tensor."""
    if not isinstance(mask, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or None, got {type(mask).__name__}")
    if mask.dtype != torch.bool and not mask.is_floating_point():
        hint = (
            " (for lengths use multihead.masks.padding_mask(lengths))"
            if not mask.is_complex()
            else ""
        )
        raise TypeError(
            f"{name} must be bool (True = may attend) or floating (additive bias), "
            f"got dtype {mask.dtype}{hint}"
        )


def check_token_ids(ids: Any, name: str, vocab_size: int) -> None:
    """A 2-D ``(B, N)`` integer tensor of ids in ``[0, vocab_size)``."""
    if not isinstance(ids, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of token ids, got {type(ids).__name__}")
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor of token ids, got dtype {ids.dtype}")
    if ids.dim() != 2:
        raise ValueError(f"{name} must be 2-D (B, N), got shape {tuple(ids.shape)}")
    if ids.numel() and not torch.compiler.is_compiling():  # range check needs host values
        low, high = (int(v) for v in torch.aminmax(ids))
        if low < 0 or high >= vocab_size:
            raise ValueError(
                f"{name} must hold ids in [0, {vocab_size}), got min {low} and max {high}"
            )


def check_padding_mask(mask: Any, name: str, shape: tuple[int, ...]) -> None:
    """``None`` or a bool ``(B, N)`` tensor, ``True`` = real token."""
    if mask is None:
        return
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
        what = f"dtype {mask.dtype}" if isinstance(mask, Tensor) else type(mask).__name__
        raise TypeError(f"{name} must be a bool tensor (True = real token) or None, got {what}")
    if tuple(mask.shape) != shape:
        raise ValueError(f"{name} must be (B, N) = {shape}, got shape {tuple(mask.shape)}")
