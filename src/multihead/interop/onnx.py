"""Export multihead modules and models to ONNX.

:func:`export_onnx` uses PyTorch's ``torch.export``-based exporter (``torch.onnx.export(...,
dynamo=True)``, which needs ``onnxscript``) with symbolic batch and sequence sizes, so one file
serves every batch size and length. Attention is exported with the ``"math"`` backend by
default: plain matrix products and a softmax that every ONNX runtime has, with the same
treatment of rows that have no key to attend to (zeros, not NaN) as in PyTorch.

``onnx``/``onnxscript`` are optional extras (``pip install multihead[onnx]``), imported only
when :func:`export_onnx` runs.

Example:
    >>> from multihead import MultiHeadAttention
    >>> mha = MultiHeadAttention(32, 4).eval()
    >>> x = torch.randn(2, 5, 32)
    >>> padding = torch.ones(2, 5, dtype=torch.bool)
    >>> path = export_onnx(mha, "mha.onnx",  # doctest: +SKIP
    ...                    example_inputs={"query": x, "key_padding_mask": padding,
    ...                                    "causal": True})
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..functional import get_backend
from ..modules.attention import MultiHeadAttention

__all__ = ["export_onnx"]


def _flatten_outputs(out: Any) -> tuple[Tensor, ...]:
    """Model outputs as a flat tuple of tensors: ``None`` (weights not asked for) and empty
    tuples (no per-layer weights) are dropped, as ONNX graphs only return tensors."""
    if isinstance(out, Tensor):
        return (out,)
    if out is None:
        return ()
    if isinstance(out, (tuple, list)):
        flat: list[Tensor] = []
        for item in out:
            flat.extend(_flatten_outputs(item))
        return tuple(flat)
    raise TypeError(f"cannot export an output of type {type(out).__name__}")


class _Adapter(nn.Module):
    """Calls ``module`` with tensors by position (the graph inputs, in ``names`` order) plus the
    fixed non-tensor keyword arguments, and returns a flat tuple of tensors."""

    def __init__(self, module: nn.Module, names: list[str], constants: dict[str, Any]) -> None:
        super().__init__()
        self.module = module
        self.names = names
        self.constants = constants

    def forward(self, *tensors: Tensor) -> tuple[Tensor, ...]:
        kwargs = dict(zip(self.names, tensors, strict=True)) | self.constants
        return _flatten_outputs(self.module(**kwargs))


def _dynamic_axes(
    name: str, value: Tensor, dynamic_batch: bool, dynamic_sequence: bool
) -> dict[int, str]:
    """Which axes of an input are symbolic: axis 0 is the batch; the sequence axes are every
    other axis of an integer/bool input (ids ``(B, N)``, masks ``(B, Nq, Nk)``) and every axis
    but the last (features) of a floating one (``(B, N, E)``)."""
    axes: dict[int, str] = {}
    if value.dim() == 0:
        return axes
    if dynamic_batch:
        axes[0] = "batch"
    if dynamic_sequence:
        last = value.dim() if not value.is_floating_point() else value.dim() - 1
        for axis in range(1, last):
            axes[axis] = f"{name}_len_{axis}" if last - 1 > 1 else f"{name}_len"
    return axes


@contextlib.contextmanager
def _attention_backend(module: nn.Module, backend: str | None) -> Iterator[None]:
    """Temporarily run every :class:`MultiHeadAttention` inside ``module`` on ``backend``."""
    if backend is None:
        yield
        return
    layers = [m for m in module.modules() if isinstance(m, MultiHeadAttention)]
    saved = [m.backend for m in layers]
    try:
        for m in layers:
            m.backend = backend
        yield
    finally:
        for m, b in zip(layers, saved, strict=True):
            m.backend = b


def _check_example_inputs(
    example_inputs: Any, dynamic_batch: bool, dynamic_sequence: bool
) -> tuple[list[str], list[Tensor], dict[str, Any]]:
    if not isinstance(example_inputs, Mapping) or not example_inputs:
        raise TypeError(
            "example_inputs must be a non-empty dict of forward() keyword arguments, e.g. "
            "{'query': x, 'key_padding_mask': mask, 'causal': True}, got "
            f"{type(example_inputs).__name__}"
        )
    names, tensors, constants = [], [], {}
    for name, value in example_inputs.items():
        if not isinstance(name, str):
            raise TypeError(f"example_inputs keys must be argument names, got {name!r}")
        if isinstance(value, Tensor):
            # Size 0 or 1 lets torch.export specialize the axis to a constant; say so up front.
            small = [
                axis
                for axis in _dynamic_axes(name, value, dynamic_batch, dynamic_sequence)
                if value.shape[axis] < 2
            ]
            if small:
                raise ValueError(
                    f"example_inputs[{name!r}] has shape {tuple(value.shape)}: dynamic axes "
                    f"{small} need an example size >= 2 (1 would be baked into the graph)"
                )
            names.append(name)
            tensors.append(value)
        else:
            constants[name] = value
    if not tensors:
        raise ValueError("example_inputs must contain at least one tensor")
    return names, tensors, constants


def _capture(
    adapter: nn.Module, tensors: tuple[Tensor, ...], axes: tuple[dict[int, str], ...] | None
) -> torch.export.ExportedProgram:
    """``torch.export`` the adapter: strict (TorchDynamo) first, as it evaluates Python-level
    shape logic (``causal and n > 1``) the way eager mode does, then non-strict."""
    dims = None
    if axes is not None:
        dims = (tuple({axis: torch.export.Dim.DYNAMIC for axis in a} for a in axes),)
    try:
        return torch.export.export(adapter, tensors, dynamic_shapes=dims, strict=True)
    except Exception as strict_error:
        try:
            return torch.export.export(adapter, tensors, dynamic_shapes=dims, strict=False)
        except Exception:
            raise strict_error from None


def _run_exporter(
    adapter: nn.Module,
    module: nn.Module,
    tensors: tuple[Tensor, ...],
    staged: Path,
    names: list[str],
    output_names: list[str],
    axes: tuple[dict[int, str], ...] | None,
    opset_version: int | None,
) -> None:
    try:
        program = _capture(adapter, tensors, axes)
    except Exception as error:  # torch.export raises many types; keep the cause chained
        text = str(error).strip()
        hint = (
            "forward() branches on a tensor's value (bool(t), int(t), t.item()), which "
            "torch.export cannot trace"
            if "data-dependent" in text
            else "torch.export could not trace forward()"
        )
        first = text.splitlines()[0][:300] if text else type(error).__name__
        raise RuntimeError(
            f"ONNX export of {type(module).__name__} failed: {hint}. {first}"
        ) from error
    with warnings.catch_warnings():
        # Axes we name separately but the exporter proves equal (a query and its padding
        # mask) keep one name; that is the intended outcome, not something to warn about.
        warnings.filterwarnings("ignore", message=".*axis name.*will not be used")
        torch.onnx.export(
            program,
            tensors,
            str(staged),
            dynamo=True,
            input_names=names,
            output_names=output_names,
            # Only names the symbolic axes of the graph (the program fixed which are symbolic).
            dynamic_shapes=None if axes is None else (axes,),
            opset_version=opset_version,
            external_data=False,
            verbose=False,
        )


def export_onnx(
    module: nn.Module,
    path: str | os.PathLike[str],
    *,
    example_inputs: Mapping[str, Any],
    dynamic_batch: bool = True,
    dynamic_sequence: bool = True,
    output_names: list[str] | None = None,
    backend: str | None = "math",
    opset_version: int | None = None,
) -> Path:
    """Export ``module`` (in evaluation mode) to an ONNX file at ``path``, atomically.

    Args:
        module: a :class:`~multihead.MultiHeadAttention` or a model
            (:class:`~multihead.modules.models.DecoderLM`, ``Encoder``, ``EncoderClassifier``,
            ...), or any module whose outputs are tensors, tuples of tensors or ``None``.
        path: the ``.onnx`` file to write. It appears only once complete: the export goes
            to a temporary directory beside it and is then moved in place.
        example_inputs: ``forward`` keyword arguments by name. Tensors become the graph's
            inputs (named by their keys, in this order); anything else (``causal=True``,
            ``need_weights=True``) is fixed into the graph.
        dynamic_batch: axis 0 of every tensor input is symbolic (``"batch"``).
        dynamic_sequence: the length axes are symbolic: for integer/bool inputs every axis
            after the batch (``ids (B, N)``, ``key_padding_mask (B, Nk)``), for floating ones
            every axis between the batch and the feature axis (``query (B, Nq, E)``). Lengths
            that must agree (a query and its padding mask) are tied by the exporter.
        output_names: names of the graph outputs (default ``output``, ``output_1``, ...).
        backend: the attention kernel used in the graph for every ``MultiHeadAttention``
            (default ``"math"``: portable ONNX operators); ``None`` keeps each module's own.
        opset_version: ONNX opset (default: the exporter's).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        TypeError/ValueError: bad arguments (e.g. an example size 1 on a dynamic axis, which
            the exporter would turn into a constant).
        RuntimeError: the exporter failed; the message says which part of the model could not
            be traced.

    Example:
        >>> from multihead import MultiHeadAttention
        >>> mha = MultiHeadAttention(32, 4).eval()
        >>> inputs = {"query": torch.randn(2, 5, 32),
        ...           "key_padding_mask": torch.ones(2, 5, dtype=torch.bool), "causal": True}
        >>> export_onnx(mha, "mha.onnx", example_inputs=inputs)  # doctest: +SKIP
        PosixPath('mha.onnx')
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    for flag, value in (("dynamic_batch", dynamic_batch), ("dynamic_sequence", dynamic_sequence)):
        if not isinstance(value, bool):
            raise TypeError(f"{flag} must be a bool, got {type(value).__name__}")
    if backend is not None:
        get_backend(backend)
    names, tensors, constants = _check_example_inputs(
        example_inputs, dynamic_batch, dynamic_sequence
    )
    target = Path(path)
    if target.suffix != ".onnx":
        raise ValueError(f"path must end in .onnx, got {str(target)!r}")
    if not target.parent.is_dir():
        raise ValueError(f"the directory of path does not exist: {str(target.parent)!r}")

    was_training = module.training
    adapter = _Adapter(module, names, constants).eval()  # also puts module in eval mode
    dynamic_shapes = tuple(
        _dynamic_axes(n, t, dynamic_batch, dynamic_sequence)
        for n, t in zip(names, tensors, strict=True)
    )
    # Export into a private directory next to the target, then rename: a reader never sees a
    # half-written file, and a failed export leaves any previous file untouched.
    workdir = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        with _attention_backend(module, backend):
            with torch.no_grad():
                outputs = adapter(*tensors)
            if output_names is None:
                output_names = ["output"] + [f"output_{i}" for i in range(1, len(outputs))]
            elif len(output_names) != len(outputs):
                raise ValueError(
                    f"output_names has {len(output_names)} names but the module returns "
                    f"{len(outputs)} tensors"
                )
            staged = workdir / target.name
            _run_exporter(adapter, module, tuple(tensors), staged, names, output_names,
                          dynamic_shapes if dynamic_batch or dynamic_sequence else None,
                          opset_version)  # fmt: skip
        os.replace(staged, target)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        module.train(was_training)
    return target
