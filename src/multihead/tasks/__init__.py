"""Built-in data sets: no downloads, deterministic by seed.

======== ================================================ ==============================
name     what                                             object
======== ================================================ ==============================
dates    human-written dates -> ISO ``YYYY-MM-DD``         :class:`DatesTask`
copy     digit string -> the same string                  :class:`SequenceTask`
reverse  digit string -> reversed                         :class:`SequenceTask`
sort     digit string -> digits in ascending order        :class:`SequenceTask`
text     next-character prediction on a text file         :class:`CharTextTask`
digits   8x8 digit images -> class (needs scikit-learn)    :class:`DigitsTask`
======== ================================================ ==============================

The sequence-to-sequence tasks (dates, copy, reverse, sort) share one batch format,
:class:`Seq2SeqBatch`, and the special ids ``PAD=0, BOS=1, EOS=2, UNK=3``.

Example:
    >>> task = get_task("dates", seed=0)
    >>> src, src_lengths, tgt = task.make_dataset(4, "train")
    >>> tgt[:, 0].tolist() == [BOS] * 4
    True
"""

from __future__ import annotations

from typing import Any

from multihead.tasks.dates import (
    FAMILIES,
    MAX_SOURCE_LENGTH,
    MAX_TARGET_LENGTH,
    DateSample,
    DatesConfig,
    DatesTask,
    dates_vocab,
    write_date,
)
from multihead.tasks.digits import DigitsConfig, DigitsTask, load_digits_tensors
from multihead.tasks.sequences import SEQUENCE_KINDS, SequenceTask, SequenceTaskConfig
from multihead.tasks.text import CharTextTask, python_docs_text
from multihead.tasks.vocab import (
    BOS,
    EOS,
    PAD,
    SPECIAL_TOKENS,
    UNK,
    CharVocab,
    Seq2SeqBatch,
    encode_pairs,
)

__all__ = [
    "BOS",
    "EOS",
    "FAMILIES",
    "MAX_SOURCE_LENGTH",
    "MAX_TARGET_LENGTH",
    "PAD",
    "SEQUENCE_KINDS",
    "SPECIAL_TOKENS",
    "TASK_NAMES",
    "UNK",
    "CharTextTask",
    "CharVocab",
    "DateSample",
    "DatesConfig",
    "DatesTask",
    "DigitsConfig",
    "DigitsTask",
    "Seq2SeqBatch",
    "SequenceTask",
    "SequenceTaskConfig",
    "Task",
    "dates_vocab",
    "encode_pairs",
    "get_task",
    "load_digits_tensors",
    "python_docs_text",
    "write_date",
]

TASK_NAMES: tuple[str, ...] = ("dates", "copy", "reverse", "sort", "text", "digits")

Task = DatesTask | SequenceTask | CharTextTask | DigitsTask


def get_task(name: str, **kwargs: Any) -> Task:
    """Build the task called ``name``; ``kwargs`` go to its config (or constructor for ``text``).

    ``dates`` takes :class:`DatesConfig` fields, ``copy``/``reverse``/``sort`` take
    :class:`SequenceTaskConfig` fields except ``kind`` (the name sets it), ``text`` takes
    :class:`CharTextTask` arguments and ``digits`` takes :class:`DigitsConfig` fields.

    Example:
        >>> get_task("sort", max_len=6).config
        SequenceTaskConfig(kind='sort', min_len=1, max_len=6, seed=0)
        >>> get_task("text", block_size=32).block_size
        32
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, one of {TASK_NAMES}, got {type(name).__name__}")
    if name == "dates":
        return DatesTask(DatesConfig(**kwargs))
    if name in SEQUENCE_KINDS:
        if "kind" in kwargs:
            raise ValueError(
                f"kind is set by the task name {name!r}; drop kind={kwargs['kind']!r} "
                f"or call get_task({kwargs['kind']!r}, ...)"
            )
        return SequenceTask(SequenceTaskConfig(kind=name, **kwargs))  # type: ignore[arg-type]
    if name == "text":
        return CharTextTask(**kwargs)
    if name == "digits":
        return DigitsTask(DigitsConfig(**kwargs))
    raise ValueError(f"name must be one of {TASK_NAMES}, got unknown task {name!r}")
