"""A WordPiece tokenizer learned from the training texts, kept as a JSON string.

Built on Hugging Face ``tokenizers`` (Rust; the ``apps`` extra), trained offline with
BERT's normalizer (lower-casing, accent stripping) and pre-tokenizer (split on white space
and punctuation) (Devlin et al., 2019). The whole tokenizer serialises to one JSON string,
which goes into the checkpoint, so a trained classifier needs no side files.

Example:
    >>> tok = WordPieceTokenizer.train(["a good film", "a bad film"] * 5, vocab_size=60)
    >>> ids, mask = tok.encode_batch(["a good film"], max_len=8)
    >>> ids.shape, mask.tolist()
    (torch.Size([1, 3]), [[True, True, True]])
    >>> WordPieceTokenizer.from_json(tok.to_json()).vocab_size == tok.vocab_size
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "SPECIALS",
    "WordPieceTokenizer",
    "pad_rows",
    "require_tokenizers",
    "suggest_vocab_size",
]

PAD, UNK = "[PAD]", "[UNK]"
SPECIALS: tuple[str, ...] = (PAD, UNK)  # PAD gets id 0, UNK id 1


def require_tokenizers() -> Any:
    """The ``tokenizers`` module, or an ImportError that names the extra to install."""
    try:
        import tokenizers
    except ImportError as exc:
        raise ImportError(
            "text classification needs the 'tokenizers' package (Hugging Face); install the "
            "apps extra: pip install 'multihead[apps]'"
        ) from exc
    return tokenizers


def suggest_vocab_size(texts: Sequence[str]) -> int:
    """A vocabulary size for ``texts``: about the number of words seen at least twice.

    Whole frequent words get their own id; rare words fall back to word pieces, which is what
    keeps a small data set from spending most parameters on words seen once. Clamped to
    ``[200, 30000]``.

    Example:
        >>> suggest_vocab_size(["a b", "a c"])
        200
    """
    counts: dict[str, int] = {}
    for text in texts:
        for word in text.lower().split():
            counts[word] = counts.get(word, 0) + 1
    frequent = sum(1 for c in counts.values() if c >= 2)
    return int(min(30000, max(200, round(frequent * 1.1, -2))))


def pad_rows(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """Rows of ids -> ``ids (B, N)`` int64 filled up with ``pad_id`` and ``padding_mask (B, N)``
    bool (True = real), ``N`` the longest row (1 when there are no rows).

    Example:
        >>> ids, mask = pad_rows([[5, 6], [7]], pad_id=0)
        >>> ids.tolist(), mask.tolist()
        ([[5, 6], [7, 0]], [[True, True], [True, False]])
    """
    n = max((len(r) for r in rows), default=1)
    ids = torch.full((len(rows), n), pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), n, dtype=torch.bool)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = True
    return ids, mask


class WordPieceTokenizer:
    """Texts -> padded id tensors, with the words each id came from (for attention plots)."""

    def __init__(self, tokenizer: Any) -> None:
        self._tok = tokenizer
        self.pad_id = int(tokenizer.token_to_id(PAD))
        self.unk_id = int(tokenizer.token_to_id(UNK))
        self.vocab_size = int(tokenizer.get_vocab_size())

    @classmethod
    def train(
        cls, texts: Sequence[str], *, vocab_size: int, min_frequency: int = 2
    ) -> WordPieceTokenizer:
        """Learn a WordPiece vocabulary of at most ``vocab_size`` entries from ``texts``."""
        if not isinstance(vocab_size, int) or vocab_size < len(SPECIALS) + 1:
            raise ValueError(f"vocab_size must be an int > {len(SPECIALS)}, got {vocab_size!r}")
        tk = require_tokenizers()
        tok = tk.Tokenizer(tk.models.WordPiece(unk_token=UNK))
        tok.normalizer = tk.normalizers.BertNormalizer(lowercase=True)
        tok.pre_tokenizer = tk.pre_tokenizers.BertPreTokenizer()
        tok.decoder = tk.decoders.WordPiece()
        trainer = tk.trainers.WordPieceTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=list(SPECIALS),
            show_progress=False,
        )
        tok.train_from_iterator(list(texts), trainer=trainer)
        # The trainer breaks frequency ties in hash order, which changes from run to run: the
        # ids of tied pieces, and a few pieces tying at the vocabulary cutoff, differ. Sorted ids
        # remove the first source; the second remains, so two trainings on the same data are
        # not bit-identical (a handful of pieces in thousands differ).
        learned = sorted(t for t in tok.get_vocab() if t not in SPECIALS)
        vocab = {t: i for i, t in enumerate([*SPECIALS, *learned])}
        tok.model = tk.models.WordPiece(vocab=vocab, unk_token=UNK)
        return cls(tok)

    def to_json(self) -> str:
        """The whole tokenizer as a JSON string (what checkpoints store)."""
        return str(self._tok.to_str())

    @classmethod
    def from_json(cls, data: str) -> WordPieceTokenizer:
        """Inverse of :meth:`to_json`."""
        if not isinstance(data, str):
            raise TypeError(f"data must be a JSON str, got {type(data).__name__}")
        return cls(require_tokenizers().Tokenizer.from_str(data))

    def tokens(self, text: str) -> list[str]:
        """The word pieces of ``text`` (``##`` marks a piece that continues a word)."""
        return list(self._tok.encode(text).tokens)

    def encode_batch(self, texts: Sequence[str], *, max_len: int) -> tuple[Tensor, Tensor]:
        """``texts`` -> ``ids (B, N)`` int64 and ``padding_mask (B, N)`` bool (True = real).

        Each text is cut to ``max_len`` pieces; ``N`` is the longest kept, at least 1 (an empty
        text gives a single UNK so that its row still has a real position).
        """
        if max_len < 1:
            raise ValueError(f"max_len must be >= 1, got {max_len}")
        rows = [enc.ids[:max_len] or [self._tok.token_to_id(UNK)] for enc in self._encode(texts)]
        return pad_rows(rows, self.pad_id)

    def word_index(self, text: str, *, max_len: int) -> tuple[list[str], list[int]]:
        """The words of ``text`` as the pre-tokenizer splits them, and for each of the first
        ``max_len`` pieces the index of its word (to sum piece attention into word attention)."""
        enc = self._encode([text])[0]
        spans: list[list[int]] = []  # [start, end) of each word in ``text``
        piece_word: list[int] = []
        last: int | None = None
        for wid, (start, end) in zip(enc.word_ids[:max_len], enc.offsets[:max_len], strict=True):
            if wid != last or not spans:
                spans.append([start, end])
                last = wid
            spans[-1][1] = end
            piece_word.append(len(spans) - 1)
        return [text[a:b] for a, b in spans], piece_word

    def _encode(self, texts: Sequence[str]) -> list[Any]:
        return list(self._tok.encode_batch(list(texts), add_special_tokens=False))
