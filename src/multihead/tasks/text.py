"""Character-level language modelling on a text file, or on English text that ships with Python.

With no file named, the corpus is Python's own topic documentation (``pydoc_data.topics``,
about 465k characters of English prose and code that ``help("topics")`` shows), so the task
works offline on any CPython install.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import torch

from multihead.tasks.vocab import CharVocab, _check_batch_request, _check_choice, _check_int

__all__ = ["CharTextTask", "python_docs_text"]

TEXT_SPLITS: tuple[str, ...] = ("train", "valid")


def python_docs_text() -> str:
    """The English text of Python's topic documentation, topics in sorted order.

    Example:
        >>> "lambda" in python_docs_text()
        True
    """
    try:
        from pydoc_data.topics import topics
    except ImportError as exc:  # some distributions strip pydoc_data from a minimal Python
        raise ImportError(
            "the default text corpus needs the standard library's pydoc_data package, which "
            "this Python lacks; pass path= to a UTF-8 text file instead"
        ) from exc
    # Sorted keys, so the corpus (and the train/valid cut) is the same whatever the dict order.
    return "\n\n".join(topics[key] for key in sorted(topics))


def _read_text(path: str | os.PathLike[str], encoding: str) -> str:
    file = Path(path)
    if not file.exists():
        raise FileNotFoundError(f"path {str(path)!r} does not exist")
    if not file.is_file():
        raise ValueError(f"path must be a text file, got {str(path)!r}, which is not a file")
    try:
        text = file.read_text(encoding=encoding)
    except UnicodeDecodeError as exc:
        raise ValueError(f"path {str(path)!r} is not valid {encoding} text: {exc}") from exc
    if not text:
        raise ValueError(f"path must name a non-empty text file, got {str(path)!r} (0 characters)")
    return text


class CharTextTask:
    """Next-character prediction on one text, split by position into train and valid.

    The vocabulary is every character of the whole text, so valid has no unknown characters.
    The last ``valid_fraction`` of the text is valid; a positional cut keeps valid passages
    unseen, which a random cut of overlapping windows would not.

    Args:
        path: a UTF-8 text file, or ``None`` for :func:`python_docs_text`.
        block_size: ``T``, the context length of a batch row.
        valid_fraction: share of the text, taken from its end, kept for validation.
        encoding: the file's text encoding.

    Shapes: ``B`` batch, ``T`` block size. ``get_batch`` returns ``x`` and ``y``, both ``(B, T)``
    long, with ``y[:, t] == x[:, t + 1]`` (the next character).

    Example:
        >>> task = CharTextTask(block_size=16)
        >>> x, y = task.get_batch("train", 4, torch.Generator().manual_seed(0))
        >>> x.shape, bool((x[:, 1:] == y[:, :-1]).all())
        (torch.Size([4, 16]), True)
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        block_size: int = 128,
        *,
        valid_fraction: float = 0.1,
        encoding: str = "utf-8",
    ) -> None:
        if path is not None and not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path must be str, os.PathLike or None, got {type(path).__name__}")
        _check_int("block_size", block_size, 1)
        if not isinstance(valid_fraction, (int, float)) or isinstance(valid_fraction, bool):
            raise TypeError(f"valid_fraction must be a float, got {type(valid_fraction).__name__}")
        if not 0.0 < valid_fraction < 1.0:
            raise ValueError(f"valid_fraction must be in (0, 1), got {valid_fraction}")

        text = python_docs_text() if path is None else _read_text(path, encoding)
        self.path: str | None = None if path is None else str(path)
        self.block_size = int(block_size)
        self.valid_fraction = float(valid_fraction)
        self.vocab = CharVocab.from_texts([text])
        data = torch.tensor(self.vocab.encode(text), dtype=torch.long)  # (L,)
        cut = len(text) - int(len(text) * valid_fraction)
        self._data = {"train": data[:cut], "valid": data[cut:]}
        for split, part in self._data.items():
            # One (x, y) row needs T + 1 characters.
            if len(part) <= self.block_size:
                source = "the default corpus" if path is None else f"path {self.path!r}"
                raise ValueError(
                    f"block_size must be < {len(part)}, the {split} split's length in "
                    f"characters ({source}, {len(text)} characters, valid_fraction="
                    f"{valid_fraction}), got {self.block_size}"
                )

    def split_data(self, split: Literal["train", "valid"]) -> torch.Tensor:
        """The ids of ``split`` as one ``(L,)`` long tensor, in text order.

        Example:
            >>> task = CharTextTask(block_size=8)
            >>> task.vocab.decode(task.split_data("train")[:3])
            'The'
        """
        _check_choice("split", split, TEXT_SPLITS)
        return self._data[split]

    def get_batch(
        self,
        split: Literal["train", "valid"],
        batch_size: int,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``batch_size`` random windows of ``split``: inputs ``x`` and next characters ``y``.

        Pass a seeded ``generator`` for reproducible batches; ``None`` uses torch's global RNG.

        Example:
            >>> task = CharTextTask(block_size=8)
            >>> x, y = task.get_batch("valid", 2, torch.Generator().manual_seed(1))
            >>> x.shape == y.shape == (2, 8)
            True
        """
        batch_size = _check_batch_request(batch_size, generator)
        data = self.split_data(split)
        T = self.block_size
        starts = torch.randint(0, len(data) - T, (int(batch_size),), generator=generator)  # (B,)
        idx = starts[:, None] + torch.arange(T + 1)  # (B, T + 1)
        window = data[idx]  # (B, T + 1)
        # Contiguous copies, so callers can .view(-1) them for the loss.
        return window[:, :-1].contiguous(), window[:, 1:].contiguous()
