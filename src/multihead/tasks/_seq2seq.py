"""What the sequence-to-sequence tasks share: reproducible sample streams, padded batches.

A task draws ``(source, target)`` string pairs from one random stream per
``(config.seed, split, rng_seed)`` and pads them into a :class:`Seq2SeqBatch`; it only says how
one group of pairs is drawn (``_draw``) and how ``n`` samples are taken (``sample``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal

import numpy as np

from multihead.tasks.vocab import CharVocab, Seq2SeqBatch, _check_choice, _check_int, encode_pairs

Split = Literal["train", "valid", "test"]
SPLITS: tuple[str, ...] = ("train", "valid", "test")


class Seq2SeqTaskBase:
    """Streams and batches of a task with ``config.seed`` and a ``vocab``.

    Shapes: ``B`` batch, ``Ns`` source length, ``Nt`` target length (BOS and EOS included).
    """

    config: Any  # a frozen config with a ``seed``
    vocab: CharVocab

    def _rng(self, split: str, rng_seed: int) -> np.random.Generator:
        split_index = _check_choice("split", split, SPLITS)
        _check_int("rng_seed", rng_seed, 0)
        # One stream per (seed, split, rng_seed); this is the only thing that separates splits.
        return np.random.default_rng([self.config.seed, split_index + 1, int(rng_seed)])

    def _draw(self, rng: np.random.Generator, n: int, split: Split) -> list[tuple[str, str]]:
        """``n`` fresh pairs of ``split`` from ``rng`` (one batch of :meth:`batches`)."""
        raise NotImplementedError

    def sample(self, n: int, split: Split = "train", rng_seed: int = 0) -> list[tuple[str, str]]:
        """``n`` pairs ``(source, target)`` of ``split``."""
        raise NotImplementedError

    def encode(self, pairs: list[tuple[str, str]]) -> Seq2SeqBatch:
        """Pad ``(source, target)`` strings into a :class:`Seq2SeqBatch`: ``src (B, Ns)``,
        ``src_lengths (B,)``, ``tgt (B, Nt)``.

        Example:
            >>> from multihead.tasks import SequenceTask
            >>> SequenceTask().encode([("12", "12")]).tgt.tolist()
            [[1, 5, 6, 2]]
        """
        return encode_pairs(self.vocab, pairs)

    def make_dataset(self, n: int, split: Split = "train", rng_seed: int = 0) -> Seq2SeqBatch:
        """``n`` sampled pairs as one padded batch.

        Example:
            >>> from multihead.tasks import SequenceTask
            >>> src, src_lengths, tgt = SequenceTask().make_dataset(8)
            >>> src.shape[0], tgt.shape[0]
            (8, 8)
        """
        return self.encode(self.sample(n, split, rng_seed))

    def batches(
        self,
        batch_size: int,
        split: Split = "train",
        *,
        num_batches: int | None = None,
        rng_seed: int = 0,
    ) -> Iterator[Seq2SeqBatch]:
        """Fresh padded batches from one reproducible stream; endless when ``num_batches`` is None.

        Example:
            >>> from multihead.tasks import DatesTask
            >>> [b.src.shape[0] for b in DatesTask().batches(3, num_batches=2)]
            [3, 3]
        """
        _check_int("batch_size", batch_size, 1)
        if num_batches is not None:
            _check_int("num_batches", num_batches, 0)
        return self._stream(self._rng(split, rng_seed), int(batch_size), split, num_batches)

    def _stream(
        self, rng: np.random.Generator, batch_size: int, split: Split, num_batches: int | None
    ) -> Iterator[Seq2SeqBatch]:
        produced = 0
        while num_batches is None or produced < num_batches:
            yield self.encode(self._draw(rng, batch_size, split))
            produced += 1
