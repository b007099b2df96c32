"""Spoken words synthesized offline with ``espeak-ng``: test samples and extra training voices.

Each voice (an espeak-ng English accent with a voice variant) is one "speaker"; every word is
said at several speeds and pitches, with white noise added at a random signal-to-noise ratio.

* :func:`synthesize_digits` writes the test samples as ``{digit}_{speaker}_{index}.wav`` -- the
  Free Spoken Digit Dataset's naming, so the ``index`` and ``speaker`` splits work on it. The
  files vary on purpose: 8 or 16 kHz, mono or stereo, 16-bit PCM, to exercise reading and
  resampling.
* :func:`synthetic_voices` returns clips of any labels (espeak-ng says the label's text, and
  reads ``7`` as "seven") in many voices, for training: a few real speakers are all most users
  have, and synthetic voices add variety of pitch, formants and pace that augmentation of those
  few cannot (``multihead train speech --synthetic-voices N``).

``espeak-ng`` is a Debian package (``scripts/ensure-espeak.sh`` installs it where missing);
:func:`espeak_available` tells callers whether to skip.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tempfile
import wave
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from multihead._files import write_atomic
from multihead.tasks.speech import read_wav

__all__ = [
    "ACCENTS",
    "DIGIT_WORDS",
    "VARIANTS",
    "VOICES",
    "espeak_available",
    "speak",
    "synthesize_digits",
    "synthetic_voices",
    "voice_variety",
    "write_wav",
]

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# (speaker name, espeak-ng voice): male and female variants of two accents.
VOICES = (
    ("alan", "en+m3"),
    ("bea", "en-us+f2"),
    ("carl", "en-us+m1"),
    ("dora", "en+f4"),
)
# espeak-ng's English accents and voice variants (``espeak-ng --voices=en``,
# ``espeak-ng --voices=variant``); a voice is ``accent+variant``.
ACCENTS = (
    "en",
    "en-us",
    "en-gb-scotland",
    "en-gb-x-rp",
    "en-gb-x-gbclan",
    "en-gb-x-gbcwmd",
    "en-029",
    "en-us-nyc",
)
VARIANTS = (
    *(f"m{i}" for i in range(1, 8)),
    *(f"f{i}" for i in range(1, 6)),
    "klatt",
    "klatt2",
    "klatt3",
    "klatt4",
)


def espeak_available() -> bool:
    """Whether the ``espeak-ng`` program is on the PATH."""
    return shutil.which("espeak-ng") is not None


def write_wav(path: str | os.PathLike[str], samples: np.ndarray, rate: int) -> Path:
    """Write float samples in [-1, 1] as 16-bit PCM, atomically.

    Shapes: ``samples (T,)`` mono or ``(T, channels)``.
    """
    data = np.asarray(samples, dtype=np.float64)
    if data.ndim == 1:
        data = data[:, None]
    pcm = np.clip(np.round(data * 32767), -32768, 32767).astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as w:
        w.setnchannels(data.shape[1])
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    return write_atomic(path, buffer.getvalue())


def voice_variety(count: int, *, seed: int = 0) -> list[tuple[str, str]]:
    """``count`` distinct ``(speaker name, espeak-ng voice)`` pairs drawn from
    :data:`ACCENTS` x :data:`VARIANTS` (seeded), named ``synth0``, ``synth1``, ..."""
    grid = [f"{a}+{v}" for a in ACCENTS for v in VARIANTS]
    if not 0 <= count <= len(grid):
        raise ValueError(f"count must be in [0, {len(grid)}], got {count}")
    picks = np.random.default_rng(seed).permutation(len(grid))[:count]
    return [(f"synth{i}", grid[j]) for i, j in enumerate(picks)]


def speak(
    text: str,
    voice: str,
    *,
    speed: int,
    pitch: int,
    sample_rate: int,
    scratch: str | os.PathLike[str],
) -> np.ndarray:
    """``text`` said by espeak-ng (``-v voice -s speed -p pitch``) as mono float32 samples
    ``(T,)`` at ``sample_rate``, with the silence espeak-ng leaves at both ends trimmed (real
    isolated-word recordings are cut close to the word). ``scratch`` is a folder for the
    temporary WAV.

    Raises:
        RuntimeError: ``espeak-ng`` is missing or fails.
    """
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise RuntimeError("espeak-ng is not installed; run scripts/ensure-espeak.sh")
    raw = Path(scratch) / "say.wav"
    cmd = [exe, "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(raw), text]
    done = subprocess.run(cmd, capture_output=True, timeout=30, check=False)
    if done.returncode != 0:
        message = done.stderr.decode(errors="replace").strip()
        raise RuntimeError(f"espeak-ng failed ({done.returncode}): {message}")
    x, _ = read_wav(raw, sample_rate)
    loud = np.flatnonzero(np.abs(x) > 0.02 * max(float(np.abs(x).max()), 1e-8))
    if len(loud):
        margin = sample_rate // 50  # 20 ms, so onsets and releases stay whole
        x = x[max(0, loud[0] - margin) : loud[-1] + margin]
    return x


def _take(
    text: str, voice: str, rng: np.random.Generator, sample_rate: int, scratch: str
) -> np.ndarray:
    """One noisy take of ``text``: a random speed (120-220 words/min) and pitch (20-80), white
    noise at 10-40 dB SNR, then a peak of 0.9 (a recording's level is arbitrary)."""
    speed, pitch = int(rng.integers(120, 221)), int(rng.integers(20, 81))
    x = speak(text, voice, speed=speed, pitch=pitch, sample_rate=sample_rate, scratch=scratch)
    power = float(np.mean(x**2)) or 1e-8
    snr = rng.uniform(10.0, 40.0)
    x = x + rng.standard_normal(len(x)) * np.sqrt(power / 10 ** (snr / 10))
    return (0.9 * x / max(float(np.abs(x).max()), 1e-8)).astype(np.float32)


def synthetic_voices(
    labels: Sequence[str],
    *,
    voices: int,
    per_label: int = 2,
    sample_rate: int = 8000,
    seed: int = 0,
) -> tuple[list[np.ndarray], list[str]]:
    """Clips of every label said by ``voices`` synthetic speakers (:func:`voice_variety`),
    ``per_label`` times each at random speeds (120-220 words/min) and pitches (20-80), with
    noise at 10-40 dB SNR.

    Returns:
        ``(waves, labels)``: mono float32 arrays ``(T_i,)`` at ``sample_rate`` and the label
        of each.

    Raises:
        RuntimeError: ``espeak-ng`` is missing or fails.
    """
    rng = np.random.default_rng(seed)
    waves: list[np.ndarray] = []
    said: list[str] = []
    with tempfile.TemporaryDirectory() as scratch:
        for _, voice in voice_variety(voices, seed=seed):
            for label in labels:
                for _ in range(per_label):
                    waves.append(_take(label.replace("_", " "), voice, rng, sample_rate, scratch))
                    said.append(label)
    return waves, said


def synthesize_digits(
    out_dir: str | os.PathLike[str],
    *,
    per_digit: int = 6,
    voices: Sequence[tuple[str, str]] = VOICES,
    digits: Sequence[int] = tuple(range(10)),
    seed: int = 0,
) -> list[Path]:
    """Write ``per_digit`` recordings of every digit for every voice into ``out_dir``.

    Speeds (words per minute, espeak-ng ``-s``) are drawn from 120-220 and pitches (``-p``)
    from 20-80; noise is added at 10-40 dB SNR. Returns the paths written.

    Raises:
        RuntimeError: ``espeak-ng`` is missing or fails.

    Example:
        >>> import tempfile
        >>> paths = synthesize_digits(tempfile.mkdtemp(), per_digit=1, digits=[7])  # doctest: +SKIP
        >>> sorted(p.name for p in paths)[0]  # doctest: +SKIP
        '7_alan_0.wav'
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths: list[Path] = []
    with tempfile.TemporaryDirectory() as scratch:
        for speaker, voice in voices:
            for digit in digits:
                for index in range(per_digit):
                    rate = 16000 if index % 2 else 8000
                    x = _take(DIGIT_WORDS[digit], voice, rng, rate, scratch)
                    if index % 3 == 2:  # stereo, with the channels at slightly different gains
                        x = np.stack([x, 0.8 * x], axis=1)
                    paths.append(write_wav(out / f"{digit}_{speaker}_{index}.wav", x, rate))
    return paths
