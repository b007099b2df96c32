"""Spoken digits synthesized offline with ``espeak-ng``, so speech runs on a fresh machine.

Each voice (an espeak-ng English voice with a variant) is one "speaker"; every digit is said at
several speeds and pitches, with white noise added at a random signal-to-noise ratio, and
written as ``{digit}_{speaker}_{index}.wav`` -- the Free Spoken Digit Dataset's naming, so the
``index`` and ``speaker`` splits work on it. The files vary on purpose: 8 or 16 kHz, mono or
stereo, 16-bit PCM, to exercise reading and resampling.

``espeak-ng`` is a Debian package (``scripts/ensure-espeak.sh`` installs it where missing);
:func:`espeak_available` tells callers (tests) whether to skip.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import wave
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from multihead.tasks.speech import read_wav

__all__ = ["DIGIT_WORDS", "VOICES", "espeak_available", "synthesize_digits", "write_wav"]

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# (speaker name, espeak-ng voice): male and female variants of two accents.
VOICES = (
    ("alan", "en+m3"),
    ("bea", "en-us+f2"),
    ("carl", "en-us+m1"),
    ("dora", "en+f4"),
)


def espeak_available() -> bool:
    """Whether the ``espeak-ng`` program is on the PATH."""
    return shutil.which("espeak-ng") is not None


def write_wav(path: str | os.PathLike[str], samples: np.ndarray, rate: int) -> Path:
    """Write float samples in [-1, 1] as 16-bit PCM, atomically.

    Shapes: ``samples (T,)`` mono or ``(T, channels)``.
    """
    target = Path(path)
    data = np.asarray(samples, dtype=np.float64)
    if data.ndim == 1:
        data = data[:, None]
    pcm = np.clip(np.round(data * 32767), -32768, 32767).astype("<i2")
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        with wave.open(tmp, "wb") as w:
            w.setnchannels(data.shape[1])
            w.setsampwidth(2)
            w.setframerate(rate)
            w.writeframes(pcm.tobytes())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


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
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise RuntimeError("espeak-ng is not installed; run scripts/ensure-espeak.sh")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths: list[Path] = []
    with tempfile.TemporaryDirectory() as scratch:
        raw = Path(scratch) / "say.wav"
        for speaker, voice in voices:
            for digit in digits:
                for index in range(per_digit):
                    speed, pitch = int(rng.integers(120, 221)), int(rng.integers(20, 81))
                    cmd = [exe, "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(raw)]
                    done = subprocess.run(
                        [*cmd, DIGIT_WORDS[digit]], capture_output=True, timeout=30, check=False
                    )
                    if done.returncode != 0:
                        message = done.stderr.decode(errors="replace").strip()
                        raise RuntimeError(f"espeak-ng failed ({done.returncode}): {message}")
                    rate = 16000 if index % 2 else 8000
                    x, _ = read_wav(raw, rate)
                    power = float(np.mean(x**2)) or 1e-8
                    snr = rng.uniform(10.0, 40.0)
                    x = x + rng.standard_normal(len(x)) * np.sqrt(power / 10 ** (snr / 10))
                    x = 0.9 * x / max(float(np.abs(x).max()), 1e-8)
                    if index % 3 == 2:  # stereo, with the channels at slightly different gains
                        x = np.stack([x, 0.8 * x], axis=1)
                    paths.append(write_wav(out / f"{digit}_{speaker}_{index}.wav", x, rate))
    return paths
