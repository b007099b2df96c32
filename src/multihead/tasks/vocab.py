"""Character vocabulary shared by every built-in text task, and the padding that batches use.

Ids 0-3 are reserved for the special tokens in every vocabulary, so a model, a loss
(``ignore_index=PAD``) and a decoder can rely on them without looking at the vocabulary.
Characters follow from id 4 in the order of the alphabet.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from itertools import chain
from typing import Any, NamedTuple, TypeVar

import numpy as np
import torch

__all__ = [
    "BOS",
    "EOS",
    "PAD",
    "SPECIAL_TOKENS",
    "UNK",
    "CharVocab",
    "Seq2SeqBatch",
    "encode_pairs",
]

PAD = 0
BOS = 1
EOS = 2
UNK = 3
SPECIAL_TOKENS: tuple[str, ...] = ("<pad>", "<bos>", "<eos>", "<unk>")
NUM_SPECIAL = len(SPECIAL_TOKENS)

# Shown by ``decode`` for an UNK id; U+FFFD is Unicode's own "a character was lost here".
_UNK_CHAR = "\ufffd"


class Seq2SeqBatch(NamedTuple):
    """A padded source/target batch; unpacks as ``src, src_lengths, tgt``.

    Shapes: ``B`` batch, ``Ns`` longest source, ``Nt`` longest target (BOS and EOS included).

    * ``src`` ``(B, Ns)`` long: source ids, no BOS/EOS, right-padded with ``PAD``.
    * ``src_lengths`` ``(B,)`` long: true source lengths (key padding mask is
      ``arange(Ns) >= src_lengths[:, None]``).
    * ``tgt`` ``(B, Nt)`` long: ``BOS, ..., EOS`` right-padded with ``PAD``; teacher forcing
      feeds ``tgt[:, :-1]`` and predicts ``tgt[:, 1:]`` with ``ignore_index=PAD``.
    """

    src: torch.Tensor
    src_lengths: torch.Tensor
    tgt: torch.Tensor


class CharVocab:
    """Maps characters to ids and back, with fixed special ids ``PAD=0, BOS=1, EOS=2, UNK=3``.

    Args:
        alphabet: the characters, each exactly once; character ``alphabet[i]`` gets id ``4 + i``.
            Use :meth:`from_texts` to build a sorted alphabet from example strings.

    Example:
        >>> vocab = CharVocab.from_texts(["abc", "cab!"])
        >>> vocab.alphabet, len(vocab)
        ('!abc', 8)
        >>> ids = vocab.encode("cab", add_bos=True, add_eos=True)
        >>> ids
        [1, 7, 5, 6, 2]
        >>> vocab.decode(ids)
        'cab'
        >>> CharVocab.from_dict(vocab.to_dict()) == vocab
        True
    """

    def __init__(self, alphabet: Iterable[str]) -> None:
        if isinstance(alphabet, (bytes, bytearray)):
            raise TypeError(
                f"alphabet must be str or an iterable of str, got {type(alphabet).__name__}"
            )
        chars = list(alphabet)
        for i, ch in enumerate(chars):
            if not isinstance(ch, str) or len(ch) != 1:
                raise ValueError(
                    f"alphabet must contain single characters, got {ch!r} at position {i}"
                )
        dupes = sorted(ch for ch, count in Counter(chars).items() if count > 1)
        if dupes:
            raise ValueError(f"alphabet must not repeat characters, got repeats {dupes!r}")
        self._itos: tuple[str, ...] = tuple(chars)
        self._stoi: dict[str, int] = {ch: NUM_SPECIAL + i for i, ch in enumerate(chars)}

    @classmethod
    def from_texts(cls, texts: Iterable[str]) -> CharVocab:
        """Build a vocabulary of every character in ``texts``, sorted by code point.

        Sorting makes the ids independent of the order the texts arrive in.

        Example:
            >>> CharVocab.from_texts(["ba", "c"]).alphabet
            'abc'
        """
        if isinstance(texts, str):
            # A lone string would iterate as characters and silently work; say what is meant.
            raise TypeError(
                "texts must be an iterable of strings, got a single str; wrap it in a list"
            )
        chars: set[str] = set()
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(
                    f"texts must contain str, got {type(text).__name__} at position {i}"
                )
            chars.update(text)
        return cls(sorted(chars))

    @property
    def alphabet(self) -> str:
        """The characters in id order (ids ``4 ..``), as one string."""
        return "".join(self._itos)

    def __len__(self) -> int:
        return NUM_SPECIAL + len(self._itos)

    def __contains__(self, char: object) -> bool:
        return char in self._stoi

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CharVocab):
            return NotImplemented
        return self._itos == other._itos

    def __hash__(self) -> int:
        return hash(self._itos)

    def __repr__(self) -> str:
        return f"CharVocab(size={len(self)}, alphabet={self.alphabet!r})"

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        """Ids of ``text``; characters outside the alphabet become ``UNK``.

        Example:
            >>> CharVocab("ab").encode("abz", add_eos=True)
            [4, 5, 3, 2]
        """
        if not isinstance(text, str):
            raise TypeError(f"text must be str, got {type(text).__name__}")
        ids = [self._stoi.get(ch, UNK) for ch in text]
        if add_bos:
            ids.insert(0, BOS)
        if add_eos:
            ids.append(EOS)
        return ids

    def decode(self, ids: Sequence[int] | torch.Tensor, strip_special: bool = True) -> str:
        """Text of ``ids``.

        With ``strip_special=True`` (for reading model output) PAD and BOS are dropped,
        decoding stops at the first EOS and UNK shows as U+FFFD. With ``strip_special=False``
        (for debugging) every id is shown, specials as ``<pad>``, ``<bos>``, ``<eos>``, ``<unk>``.

        Example:
            >>> vocab = CharVocab("ab")
            >>> vocab.decode([1, 4, 5, 2, 4, 0])
            'ab'
            >>> vocab.decode([1, 4, 5, 2, 0], strip_special=False)
            '<bos>ab<eos><pad>'
        """
        if isinstance(ids, torch.Tensor):
            if ids.dim() != 1:
                raise ValueError(f"ids must be 1-D, got a tensor of shape {tuple(ids.shape)}")
            ids = ids.tolist()
        size = len(self)
        out: list[str] = []
        for pos, raw in enumerate(ids):
            i = int(raw)
            if not 0 <= i < size:
                raise ValueError(f"ids must be in [0, {size}), got {i} at position {pos}")
            if i >= NUM_SPECIAL:
                out.append(self._itos[i - NUM_SPECIAL])
            elif not strip_special:
                out.append(SPECIAL_TOKENS[i])
            elif i == EOS:
                break
            elif i == UNK:
                out.append(_UNK_CHAR)
        return "".join(out)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable description, for storing next to a checkpoint.

        Example:
            >>> import json
            >>> data = CharVocab("ab").to_dict()
            >>> data["alphabet"], json.loads(json.dumps(data)) == data
            ('ab', True)
        """
        return {
            "type": "CharVocab",
            "alphabet": self.alphabet,
            "special_tokens": list(SPECIAL_TOKENS),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CharVocab:
        """Inverse of :meth:`to_dict`.

        Example:
            >>> CharVocab.from_dict({"alphabet": "ab"}).encode("ba")
            [5, 4]
        """
        if not isinstance(data, Mapping):
            raise TypeError(f"data must be a mapping, got {type(data).__name__}")
        if "alphabet" not in data or not isinstance(data["alphabet"], str):
            raise ValueError(f"data must have a str 'alphabet' entry, got keys {sorted(data)}")
        specials = data.get("special_tokens", list(SPECIAL_TOKENS))
        if list(specials) != list(SPECIAL_TOKENS):
            # Ids were assigned under other special tokens; silently remapping would corrupt them.
            raise ValueError(
                f"data['special_tokens'] must be {list(SPECIAL_TOKENS)}, got {list(specials)}"
            )
        return cls(data["alphabet"])

    def pad_batch(self, seqs: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-pad id lists with ``PAD`` into a ``(B, N)`` long tensor, plus lengths ``(B,)``.

        ``N`` is the longest sequence. Empty sequences are allowed (length 0).

        Example:
            >>> ids, lengths = CharVocab("ab").pad_batch([[4, 5, 4], [5]])
            >>> ids.tolist(), lengths.tolist()
            ([[4, 5, 4], [5, 0, 0]], [3, 1])
        """
        if isinstance(seqs, torch.Tensor) or not isinstance(seqs, Sequence):
            raise TypeError(f"seqs must be a list of id lists, got {type(seqs).__name__}")
        if len(seqs) == 0:
            raise ValueError("seqs must hold at least one sequence, got an empty list")
        lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
        flat = np.fromiter(chain.from_iterable(seqs), dtype=np.int64, count=int(lengths.sum()))
        if flat.size and (flat.min() < 0 or flat.max() >= len(self)):
            bad = int(flat[(flat < 0) | (flat >= len(self))][0])
            raise ValueError(f"seqs must hold ids in [0, {len(self)}), got {bad}")
        out = np.full((len(seqs), int(lengths.max())), PAD, dtype=np.int64)  # (B, N)
        # A boolean mask fills row-major, i.e. in the order chain() yields the ids; one numpy
        # call instead of one tensor per row keeps 10k-example datasets well under a second.
        filled = np.arange(out.shape[1]) < lengths[:, None]  # (B, N)
        out[filled] = flat
        return torch.from_numpy(out), torch.from_numpy(lengths)


def _check_int(name: str, value: object, minimum: int) -> int:
    """Return ``value`` as int, or raise naming ``name``; shared by the task modules."""
    # bool is an int subclass, but True as a count or a seed is always a mistake.
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


ConfigT = TypeVar("ConfigT")


def _config_or_default(config: ConfigT | None, config_type: type[ConfigT]) -> ConfigT:
    """``config``, or ``config_type()`` for None; a TypeError naming the type for anything else."""
    if config is None:
        return config_type()
    if not isinstance(config, config_type):
        raise TypeError(f"config must be a {config_type.__name__}, got {type(config).__name__}")
    return config


def _check_batch_request(batch_size: object, generator: object) -> int:
    """``batch_size`` as an int >= 1, once ``generator`` is known to be a torch.Generator or None;
    shared by the tasks' ``get_batch``."""
    size = _check_int("batch_size", batch_size, 1)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(
            f"generator must be a torch.Generator or None, got {type(generator).__name__}"
        )
    return size


def _check_choice(name: str, value: object, allowed: tuple[str, ...]) -> int:
    """Index of ``value`` in ``allowed``, or a ValueError naming ``name`` and the choices."""
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    return allowed.index(value)


def encode_pairs(vocab: CharVocab, pairs: Sequence[tuple[str, str]]) -> Seq2SeqBatch:
    """Encode ``(source, target)`` strings into a padded :class:`Seq2SeqBatch`.

    Sources carry no BOS/EOS (the encoder does not need them); targets are ``BOS .. EOS``.

    Example:
        >>> batch = encode_pairs(CharVocab("ab"), [("ab", "b"), ("a", "ab")])
        >>> batch.src.tolist(), batch.src_lengths.tolist(), batch.tgt.tolist()
        ([[4, 5], [4, 0]], [2, 1], [[1, 5, 2, 0], [1, 4, 5, 2]])
    """
    if len(pairs) == 0:
        raise ValueError("pairs must hold at least one (source, target) pair, got none")
    src, src_lengths = vocab.pad_batch([vocab.encode(s) for s, _ in pairs])
    tgt, _ = vocab.pad_batch([vocab.encode(t, add_bos=True, add_eos=True) for _, t in pairs])
    return Seq2SeqBatch(src, src_lengths, tgt)
