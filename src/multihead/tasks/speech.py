"""Folders of WAV recordings for speech classification: reading, resampling, labels, splits.

Reading uses the standard library's :mod:`wave` and numpy only. Accepted: uncompressed PCM
WAV, 8/16/24/32-bit, one or more channels (mixed down to mono by averaging), any sample rate
(resampled to the model's rate by :func:`resample`). Each file is checked on its own and a bad
one raises :class:`WavError` with the reason (empty, not a WAV, truncated, 0 seconds, longer
than ``max_seconds``), so that a folder with a few broken files still loads.

Labels come from sub-folders (``DIR/seven/a.wav`` -> ``seven``) when the folder has any,
otherwise from a regular expression on the file name whose first group is the label, by
default ``^(\\w+?)_`` (``7_george_12.wav`` -> ``7``). The speaker is the second ``_``-separated
field of the file stem and the recording index the last one, as in the Free Spoken Digit
Dataset's ``{digit}_{speaker}_{index}.wav``.

Splits (:func:`split_examples`):

* ``index``: recordings 0-4 of every label and speaker are the test set (the FSDD convention);
* ``speaker``: one whole speaker is the test set (the harder question: a new voice);
* ``random``: a seeded fraction of the files.
"""

from __future__ import annotations

import math
import os
import re
import wave
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "DEFAULT_LABEL_REGEX",
    "MAX_SECONDS",
    "SPLITS",
    "SpeechExample",
    "WavError",
    "load_examples",
    "read_wav",
    "resample",
    "scan_folder",
    "speakers_of",
    "split_examples",
]

DEFAULT_LABEL_REGEX = r"^(\w+?)_"
# Isolated words last about a second; a clip this long is almost surely the wrong file (a whole
# recording session), and reading hours of audio into memory would be the real failure.
MAX_SECONDS = 30.0
SPLITS = ("index", "speaker", "random")
_WIDTH_DTYPES: dict[int, np.dtype] = {1: np.dtype(np.uint8), 2: np.dtype("<i2"), 4: np.dtype("<i4")}


class WavError(ValueError):
    """One audio file cannot be used; the message names the file and the reason."""


def _pcm_to_float(raw: bytes, width: int, channels: int) -> np.ndarray:
    """Little-endian PCM bytes -> float32 ``(frames, channels)`` in [-1, 1)."""
    if width == 3:
        # 24-bit: widen each 3-byte sample to 4 bytes, sign taken from the top byte.
        b = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3)
        wide = np.zeros((b.shape[0], 4), dtype=np.uint8)
        wide[:, 1:] = b  # shifted up one byte, so the int32 value is sample * 256
        ints = wide.view("<i4").reshape(-1).astype(np.float64) / 2.0**31
    else:
        ints = np.frombuffer(raw, dtype=_WIDTH_DTYPES[width]).astype(np.float64)
        # 8-bit WAV is unsigned with 128 as silence; wider widths are signed.
        ints = (ints - 128.0) / 128.0 if width == 1 else ints / 2.0 ** (8 * width - 1)
    return ints.reshape(-1, channels).astype(np.float32)


def read_wav(
    path: str | os.PathLike[str],
    sample_rate: int | None = None,
    *,
    max_seconds: float = MAX_SECONDS,
) -> tuple[np.ndarray, int]:
    """Read a PCM WAV file as mono float32 samples in [-1, 1).

    Args:
        path: the file.
        sample_rate: resample to this rate (Hz); ``None`` keeps the file's rate.
        max_seconds: refuse longer files.

    Returns:
        ``(samples (T,), rate)``.

    Raises:
        WavError: the file is empty, not a PCM WAV, truncated, 0 seconds or too long.

    Example:
        >>> import tempfile, wave
        >>> p = tempfile.mktemp(suffix=".wav")
        >>> with wave.open(p, "wb") as w:
        ...     w.setnchannels(2); w.setsampwidth(2); w.setframerate(8000)
        ...     w.writeframes(b"\\x00\\x40\\x00\\x00" * 8000)
        >>> x, rate = read_wav(p, 16000)
        >>> x.shape, rate, round(float(x[8000]), 3)
        ((16000,), 16000, 0.25)
    """
    p = Path(path)
    name = str(p)
    try:
        size = p.stat().st_size
    except OSError as exc:
        raise WavError(f"{name}: cannot be read ({exc.strerror or exc})") from exc
    if size == 0:
        raise WavError(f"{name}: empty file (0 bytes)")
    try:
        with wave.open(name, "rb") as w:
            channels, width, rate = w.getnchannels(), w.getsampwidth(), w.getframerate()
            frames = w.getnframes()
            if width not in (1, 2, 3, 4):
                raise WavError(f"{name}: {8 * width}-bit samples; expected 8, 16, 24 or 32-bit PCM")
            if rate <= 0:
                raise WavError(f"{name}: sample rate {rate} Hz in the header")
            if frames == 0:
                raise WavError(f"{name}: 0 seconds of audio")
            if frames / rate > max_seconds:
                raise WavError(
                    f"{name}: {frames / rate:.1f} s long; at most {max_seconds:g} s is accepted"
                )
            raw = w.readframes(frames)
    except WavError:
        raise
    except (wave.Error, EOFError, OSError) as exc:
        with open(name, "rb") as f:
            head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            raise WavError(f"{name}: not a WAV file (no RIFF/WAVE header)") from exc
        raise WavError(f"{name}: unreadable WAV ({exc or type(exc).__name__})") from exc
    if len(raw) < frames * channels * width:
        got = len(raw) // (channels * width)
        raise WavError(
            f"{name}: truncated: the header promises {frames} frames, the file holds {got}"
        )
    samples = _pcm_to_float(raw, width, channels).mean(axis=1)
    if sample_rate is not None and sample_rate != rate:
        samples = resample(samples, rate, sample_rate)
        rate = sample_rate
    return samples.astype(np.float32), rate


def resample(
    x: np.ndarray, orig_rate: int, new_rate: int, *, zero_crossings: int = 16
) -> np.ndarray:
    """Band-limited resampling by windowed-sinc interpolation (Smith, "Digital Audio
    Resampling", https://ccrma.stanford.edu/~jos/resample/).

    Each output sample at input time ``t = n * orig_rate / new_rate`` is
    ``sum_j x[j] * c * sinc(c * (t - j)) * w(t - j)`` with cut-off ``c = min(1, new/orig)``
    (times 0.95, a small guard band against aliasing on downsampling), ``w`` a Kaiser window
    (beta 8.6, about 80 dB side lobes) spanning ``zero_crossings`` zeros of the sinc on each
    side. Works for any ratio of rates; samples beyond the ends count as zero.

    Shapes: ``x (T,)`` -> ``(ceil(T * new_rate / orig_rate),)``, float32.

    Example:
        >>> t = np.arange(800) / 8000
        >>> y = resample(np.sin(2 * np.pi * 440 * t), 8000, 16000)
        >>> y.shape, round(float(y[801]), 3)  # sin(2 pi 440 t) at t = 400.5 / 8000 s is 0.172
        ((1600,), 0.172)
    """
    if orig_rate <= 0 or new_rate <= 0:
        raise ValueError(f"rates must be > 0, got orig_rate={orig_rate}, new_rate={new_rate}")
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"x must be 1-D (T,), got shape {tuple(x.shape)}")
    if orig_rate == new_rate:
        return x.astype(np.float32)
    ratio = new_rate / orig_rate
    cutoff = min(1.0, ratio) * 0.95
    half = int(np.ceil(zero_crossings / cutoff))  # kernel half-width, in input samples
    g = math.gcd(orig_rate, new_rate)
    up, down = new_rate // g, orig_rate // g  # output n sits at input time n * down / up
    n_out = int(np.ceil(len(x) * ratio))
    padded = np.concatenate([np.zeros(half + 1), x, np.zeros(half + 1)])
    offsets = np.arange(-half, half + 1)  # (K,)
    out = np.empty(n_out)
    # Chunks keep the (chunk, K) tap matrix small for long files. The taps depend only on the
    # output's phase (n * down) % up, so each distinct phase's taps are computed once.
    for start in range(0, n_out, 8192):
        n = np.arange(start, min(start + 8192, n_out), dtype=np.int64)
        j = (n * down) // up  # (C,) the input sample at or before each output
        phases, which = np.unique((n * down) % up, return_inverse=True)
        d = (phases / up)[:, None] - offsets  # (P, K) distances from the taps' inputs
        window = np.i0(8.6 * np.sqrt(np.clip(1 - (d / (half + 1)) ** 2, 0, None))) / np.i0(8.6)
        taps = cutoff * np.sinc(cutoff * d) * window  # (P, K)
        out[n] = (taps[which] * padded[j[:, None] + offsets + half + 1]).sum(axis=1)
    return out.astype(np.float32)


@dataclass(frozen=True)
class SpeechExample:
    """One labelled recording: its path, label, speaker and index (``None`` when the name
    has no such field)."""

    path: str
    label: str
    speaker: str | None
    index: int | None


def _fields(stem: str) -> tuple[str | None, int | None]:
    parts = stem.split("_")
    speaker = parts[1] if len(parts) >= 3 else None
    index = int(parts[-1]) if len(parts) >= 2 and parts[-1].isdigit() else None
    return speaker, index


def scan_folder(
    folder: str | os.PathLike[str], label_regex: str | None = None, *, name: str = "folder"
) -> tuple[list[SpeechExample], list[str]]:
    """Find the ``.wav`` files under ``folder`` (called ``name`` in errors) and label them.

    With sub-folders holding WAV files (and no ``label_regex`` given) each sub-folder is a
    label; otherwise ``label_regex`` (default :data:`DEFAULT_LABEL_REGEX`) is searched in each
    file name and its first group is the label. Files are not opened here.

    Returns:
        ``(examples, skipped)``: examples sorted by path, and one message per file left out
        (a name the pattern does not match).

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp())
        >>> for n in ("7_george_12.wav", "3_lucas_0.wav", "notes.txt"):
        ...     (d / n).touch()
        >>> ex, skipped = scan_folder(d)
        >>> [(e.label, e.speaker, e.index) for e in ex]
        [('3', 'lucas', 0), ('7', 'george', 12)]
    """
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"{name}: {str(root)!r} is not a folder")
    if label_regex is not None:
        try:
            pattern = re.compile(label_regex)
        except re.error as exc:
            raise ValueError(f"label_regex: {label_regex!r} is not a valid pattern: {exc}") from exc
        if pattern.groups < 1:
            raise ValueError(f"label_regex: {label_regex!r} needs a group ( ) around the label")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() == ".wav")
    nested = [p for p in files if p.parent != root]
    examples: list[SpeechExample] = []
    skipped: list[str] = []
    if nested and label_regex is None:
        for p in files:
            if p.parent == root:
                skipped.append(f"{p}: not in a label sub-folder")
                continue
            speaker, index = _fields(p.stem)
            examples.append(SpeechExample(str(p), p.relative_to(root).parts[0], speaker, index))
        return examples, skipped
    pattern = re.compile(label_regex or DEFAULT_LABEL_REGEX)
    for p in files:
        match = pattern.search(p.name)
        if match is None or not match.group(1):
            skipped.append(f"{p}: the name does not match the label pattern {pattern.pattern!r}")
            continue
        speaker, index = _fields(p.stem)
        examples.append(SpeechExample(str(p), match.group(1), speaker, index))
    return examples, skipped


def speakers_of(examples: Iterable[SpeechExample]) -> list[str]:
    """The distinct speakers, sorted."""
    return sorted({e.speaker for e in examples if e.speaker is not None})


def _require_field(examples: Sequence[SpeechExample], split: str, what: str) -> None:
    """Refuse ``--split index|speaker`` when a file name lacks the field it splits on."""
    missing = [e.path for e in examples if getattr(e, split) is None]
    if missing:
        raise ValueError(
            f"--split {split} needs {what} (as in 7_george_12.wav); "
            f"{len(missing)} file(s) lack it, e.g. {missing[0]!r}"
        )


def split_examples(
    examples: Sequence[SpeechExample],
    split: str,
    *,
    test_speaker: str | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> tuple[list[SpeechExample], list[SpeechExample]]:
    """Split into ``(train, test)`` by ``split``, one of :data:`SPLITS` (see the module doc).

    ``test_speaker`` (``speaker`` split) defaults to the last speaker in alphabetical order.

    Example:
        >>> ex = [SpeechExample(f"{d}_{s}_{i}.wav", str(d), s, i)
        ...       for d in range(2) for s in ("a", "b") for i in range(10)]
        >>> [len(part) for part in split_examples(ex, "index")]
        [20, 20]
        >>> {e.speaker for e in split_examples(ex, "speaker")[1]}
        {'b'}
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if split == "index":
        _require_field(examples, "index", "a numeric last name field")
        test = [e for e in examples if e.index is not None and e.index < 5]
        train = [e for e in examples if e.index is not None and e.index >= 5]
    elif split == "speaker":
        _require_field(examples, "speaker", "the speaker as the second name field")
        speakers = speakers_of(examples)
        if len(speakers) < 2:
            raise ValueError(f"--split speaker needs at least 2 speakers, found {speakers}")
        held = speakers[-1] if test_speaker is None else test_speaker
        if held not in speakers:
            raise ValueError(f"--test-speaker: {held!r} is not one of the speakers {speakers}")
        test = [e for e in examples if e.speaker == held]
        train = [e for e in examples if e.speaker != held]
    else:
        if not 0.0 < test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
        order = np.random.default_rng(seed).permutation(len(examples))
        n_test = max(1, round(len(examples) * test_fraction))
        test = [examples[i] for i in sorted(order[:n_test])]
        train = [examples[i] for i in sorted(order[n_test:])]
    if not train or not test:
        raise ValueError(
            f"--split {split} leaves {len(train)} training and {len(test)} test file(s); "
            "both must be non-empty"
        )
    return train, test


def load_examples(
    examples: Sequence[SpeechExample], sample_rate: int, *, max_seconds: float = MAX_SECONDS
) -> tuple[list[np.ndarray], list[SpeechExample], list[str]]:
    """Read every example's audio at ``sample_rate``, leaving out the files that fail.

    Returns:
        ``(waves, kept, refused)``: mono float32 arrays ``(T_i,)`` and their examples, in
        order, and one :class:`WavError` message per file left out.
    """
    waves: list[np.ndarray] = []
    kept: list[SpeechExample] = []
    refused: list[str] = []
    for example in examples:
        try:
            samples, _ = read_wav(example.path, sample_rate, max_seconds=max_seconds)
        except WavError as exc:
            refused.append(str(exc))
            continue
        waves.append(samples)
        kept.append(example)
    return waves, kept, refused
