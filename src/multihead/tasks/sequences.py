"""Copy, reverse and sort digit strings: the smallest tasks that need attention to work.

* ``copy``: ``"3141"`` -> ``"3141"``; attention must look at the same position.
* ``reverse``: ``"3141"`` -> ``"1413"``; attention must look at the mirrored position.
* ``sort``: ``"3141"`` -> ``"1134"``; attention must find the next-smallest digit anywhere.

Held-out data is a different random stream, not a disjoint set: ``train``, ``valid`` and
``test`` draw from the same distribution with seeds that differ by split. Short sequences
therefore repeat across splits (there are only 10**L strings of length L), so held-out scores
measure fit to the distribution, not memorisation-free generalisation; with the default lengths
most held-out strings are longer than 6 digits and almost never seen in training.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from multihead.tasks._seq2seq import Seq2SeqTaskBase, Split
from multihead.tasks.vocab import (
    CharVocab,
    _check_choice,
    _check_int,
    _config_or_default,
)

__all__ = ["DIGITS", "SEQUENCE_KINDS", "SequenceTask", "SequenceTaskConfig"]

DIGITS = "0123456789"
SEQUENCE_KINDS: tuple[str, ...] = ("copy", "reverse", "sort")


@dataclass(frozen=True, kw_only=True)
class SequenceTaskConfig:
    """Settings of :class:`SequenceTask`.

    Example:
        >>> SequenceTaskConfig(kind="sort", max_len=8)
        SequenceTaskConfig(kind='sort', min_len=1, max_len=8, seed=0)
    """

    # Which mapping from source to target; see the module docstring.
    kind: Literal["copy", "reverse", "sort"] = "copy"
    # Shortest source length; 1 keeps the trivial case in so a model learns to stop early.
    min_len: int = 1
    # Longest source length; 16 is long enough that position must be attended to, yet trains
    # in about a minute on a CPU.
    max_len: int = 16
    # Base of every sample stream (together with the split name and the call's rng_seed).
    seed: int = 0

    def __post_init__(self) -> None:
        _check_choice("kind", self.kind, SEQUENCE_KINDS)
        _check_int("min_len", self.min_len, 1)
        _check_int("max_len", self.max_len, 1)
        _check_int("seed", self.seed, 0)
        if self.min_len > self.max_len:
            raise ValueError(
                f"min_len must be <= max_len, got min_len={self.min_len}, max_len={self.max_len}"
            )


class SequenceTask(Seq2SeqTaskBase):
    """Sample digit strings and their copy, reversal or sorted form, batched like the dates task.

    Shapes: ``B`` batch, ``Ns <= max_len`` source length, ``Nt <= max_len + 2`` target length
    (BOS and EOS included).

    Example:
        >>> task = SequenceTask(SequenceTaskConfig(kind="reverse", min_len=3, max_len=5))
        >>> src, tgt = task.sample(1, "train")[0]
        >>> tgt == src[::-1]
        True
        >>> batch = task.make_dataset(4)
        >>> batch.src.shape[0], int(batch.src_lengths.max()) <= 5
        (4, True)
    """

    def __init__(self, config: SequenceTaskConfig | None = None) -> None:
        self.config = config = _config_or_default(config, SequenceTaskConfig)
        self.vocab = CharVocab(DIGITS)

    def target(self, source: str) -> str:
        """The answer for ``source`` under this task's kind.

        Example:
            >>> SequenceTask(SequenceTaskConfig(kind="sort")).target("3141")
            '1134'
        """
        if self.config.kind == "copy":
            return source
        if self.config.kind == "reverse":
            return source[::-1]
        return "".join(sorted(source))

    def _draw(self, rng: np.random.Generator, n: int, split: Split) -> list[tuple[str, str]]:
        cfg = self.config
        lengths = rng.integers(cfg.min_len, cfg.max_len + 1, size=n)
        digits = rng.integers(len(DIGITS), size=(n, cfg.max_len))
        pairs = []
        for row, length in zip(digits, lengths, strict=True):
            source = "".join(DIGITS[d] for d in row[:length])
            pairs.append((source, self.target(source)))
        return pairs

    def sample(self, n: int, split: Split = "train", rng_seed: int = 0) -> list[tuple[str, str]]:
        """``n`` pairs ``(source digits, target digits)`` from ``split``'s stream.

        Example:
            >>> task = SequenceTask()
            >>> task.sample(3, "valid", rng_seed=1) == task.sample(3, "valid", rng_seed=1)
            True
        """
        _check_int("n", n, 1)
        return self._draw(self._rng(split, rng_seed), int(n), split)
