"""Log-mel features in plain torch: a mel filterbank and a short-time Fourier transform.

``torchaudio`` would need a torch build of its own, so the filterbank is written out here. It
follows the HTK mel scale (Young et al., *The HTK Book*, Sec. 5.4):
``mel(f) = 2595 * log10(1 + f / 700)``. ``n_mels`` triangular filters have their peaks at
points evenly spaced in mel between ``f_min`` and ``f_max``; each triangle rises from the
previous point to its peak and falls to the next, with height 1 (as HTK and
``librosa.filters.mel(htk=True, norm=None)``). Power spectra come from :func:`torch.stft`
(periodic Hann window, frames centred with reflect padding), and the features are
``log(mel_power + 1e-6)``.

:func:`normalise` then scales each utterance over its real frames: by default to zero mean and
unit variance over all its bands together (``MelConfig.norm="utterance"``), which removes the
recording's gain and keeps the spectral envelope; or per mel band (:func:`cmvn`, cepstral mean
and variance normalisation, ``norm="band"``), which also removes the fixed colouring of the
microphone and channel, and with it the envelope of the word.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "NORMS",
    "MelConfig",
    "batch_features",
    "cmvn",
    "floor_db",
    "frames_for",
    "hz_to_mel",
    "lifter_matrix",
    "log_mel",
    "mel_filterbank",
    "mel_to_hz",
    "normalise",
    "pad_waves",
    "speaker_offsets",
    "trim_silence",
]

NORMS = ("band", "utterance")
_LOG_FLOOR = 1e-6  # keeps log() finite in digital silence, far below any real signal's power


@dataclass(frozen=True, kw_only=True)
class MelConfig:
    """Front-end settings, saved in checkpoints so recognition computes the same features."""

    sample_rate: int = 8000  # telephone band: enough for words, and the FSDD's own rate
    n_fft: int = 256  # 32 ms at 8 kHz
    hop_length: int = 80  # 10 ms, the usual speech frame rate
    n_mels: int = 40
    f_min: float = 20.0
    f_max: float | None = None  # None: sample_rate / 2
    # "utterance": one mean and one variance over all bands of a clip, which removes the gain
    # but keeps the spectral envelope (which bands are loud says much about a short word);
    # "band": per-band mean and variance (cmvn), which also removes that envelope. On the
    # FSDD's index split the validation accuracy was 99.4% with "utterance", 98.3% with "band".
    norm: str = "utterance"
    # Keep this many cepstral coefficients of each frame (DCT-II of the log-mels) and map back
    # to the mel bands, smoothing away the pitch harmonics; 0 keeps the bands as they are.
    lifter: int = 0
    # Floor every log-mel value at this many dB below the clip's loudest one (librosa's
    # ``power_to_db(top_db=...)``), so that recordings with a deep or a high noise floor have
    # the same silence; None keeps the full range.
    top_db: float | None = None
    # Cut the frames at both ends whose power is this many dB below the clip's loudest frame
    # (leading and trailing silence, whose length differs from one recording set-up to the
    # next); None keeps the whole clip.
    trim_db: float | None = None
    # Subtract the speaker's mean log-mel of each band, over all of that speaker's clips,
    # before the per-clip normalisation (speaker-level cepstral mean normalisation): needs
    # the speaker of every training clip, and several clips of one speaker at test time.
    speaker_norm: bool = False

    def __post_init__(self) -> None:
        for name in ("sample_rate", "n_fft", "hop_length", "n_mels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"MelConfig.{name} must be an int >= 1, got {value!r}")
        if isinstance(self.lifter, bool) or not isinstance(self.lifter, int) or self.lifter < 0:
            raise ValueError(f"MelConfig.lifter must be an int >= 0, got {self.lifter!r}")
        for name in ("top_db", "trim_db"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"MelConfig.{name} must be > 0 or None, got {value!r}")
        if self.norm not in NORMS:
            raise ValueError(f"MelConfig.norm must be one of {NORMS}, got {self.norm!r}")
        top = self.sample_rate / 2 if self.f_max is None else self.f_max
        if not 0.0 <= self.f_min < top <= self.sample_rate / 2:
            raise ValueError(
                f"MelConfig needs 0 <= f_min < f_max <= sample_rate / 2, got f_min={self.f_min}, "
                f"f_max={self.f_max}, sample_rate={self.sample_rate}"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MelConfig:
        # Checkpoints written before an option existed were trained without it: per-band
        # CMVN before ``norm``, the full dynamic range before ``top_db``.
        old = {"norm": "band", "lifter": 0, "top_db": None, "trim_db": None, "speaker_norm": False}
        return cls(**{**old, **d})


def hz_to_mel(f: Tensor | float) -> Tensor:
    """HTK mel scale: ``2595 * log10(1 + f / 700)``."""
    return 2595.0 * torch.log10(1.0 + torch.as_tensor(f, dtype=torch.float64) / 700.0)


def mel_to_hz(m: Tensor | float) -> Tensor:
    """Inverse of :func:`hz_to_mel`."""
    return 700.0 * (10.0 ** (torch.as_tensor(m, dtype=torch.float64) / 2595.0) - 1.0)


def mel_filterbank(config: MelConfig) -> Tensor:
    """Triangular mel filters over the ``n_fft // 2 + 1`` FFT bins.

    Shapes: -> ``(n_mels, n_fft // 2 + 1)``, float32.

    Example:
        >>> fb = mel_filterbank(MelConfig(n_mels=10))
        >>> fb.shape, bool((fb >= 0).all()), round(float(fb.max()), 2)
        (torch.Size([10, 129]), True, 1.0)
    """
    top = config.sample_rate / 2 if config.f_max is None else config.f_max
    edges = torch.linspace(
        float(hz_to_mel(config.f_min)),
        float(hz_to_mel(top)),
        config.n_mels + 2,
        dtype=torch.float64,
    )
    hz = mel_to_hz(edges)  # (n_mels + 2,) left edge, peaks, right edge
    bins = torch.linspace(0, config.sample_rate / 2, config.n_fft // 2 + 1, dtype=torch.float64)
    left, peak, right = hz[:-2, None], hz[1:-1, None], hz[2:, None]  # (n_mels, 1) each
    rising = (bins - left) / (peak - left)
    falling = (right - bins) / (right - peak)
    return torch.clamp(torch.minimum(rising, falling), min=0.0).float()


def log_mel(waves: Tensor, config: MelConfig, filterbank: Tensor | None = None) -> Tensor:
    """Log-mel features of a batch of waveforms.

    Args:
        waves: ``(B, T)`` samples at ``config.sample_rate`` (or ``(T,)`` for one).
        config: the front end.
        filterbank: a precomputed :func:`mel_filterbank` (computed when ``None``).

    Returns:
        ``features (B, F, n_mels)`` with ``F = T // hop_length + 1`` frames.

    Example:
        >>> feats = log_mel(torch.randn(2, 8000), MelConfig())
        >>> feats.shape
        torch.Size([2, 101, 40])
    """
    if waves.ndim == 1:
        waves = waves.unsqueeze(0)
    if waves.ndim != 2:
        raise ValueError(f"waves must be (B, T) or (T,), got shape {tuple(waves.shape)}")
    fb = mel_filterbank(config) if filterbank is None else filterbank
    window = torch.hann_window(config.n_fft, periodic=True, dtype=waves.dtype, device=waves.device)
    spec = torch.stft(
        waves,
        n_fft=config.n_fft,
        hop_length=config.hop_length,
        window=window,
        center=True,
        pad_mode="reflect",
        return_complex=True,
    )  # (B, n_fft // 2 + 1, F)
    power = spec.real**2 + spec.imag**2
    mel = torch.matmul(fb.to(power), power)  # (B, n_mels, F)
    return torch.log(mel + _LOG_FLOOR).transpose(1, 2)


def floor_db(features: Tensor, top_db: float) -> Tensor:
    """Raise every log-mel value (natural log of power) to at least ``top_db`` dB below the
    utterance's largest: ``max(x, max(x) - top_db * ln(10) / 10)``.

    Shapes: ``(B, F, M)`` -> ``(B, F, M)``.
    """
    peak = features.amax(dim=(1, 2), keepdim=True)  # (B, 1, 1)
    return torch.maximum(features, peak - top_db * math.log(10.0) / 10.0)


def trim_silence(wave: Tensor, config: MelConfig) -> Tensor:
    """``wave (T,)`` without the hops (``config.hop_length`` samples) at either end whose
    power is more than ``config.trim_db`` dB below the loudest hop's (unchanged when
    ``trim_db`` is None). One hop either side of the kept run is kept as well, so onsets
    and releases stay whole.
    """
    if config.trim_db is None or len(wave) < 2 * config.hop_length:
        return wave
    hop = config.hop_length
    power = wave[: len(wave) // hop * hop].reshape(-1, hop).pow(2).mean(1)  # (T // hop,)
    loud = torch.nonzero(power >= power.max() * 10 ** (-config.trim_db / 10)).flatten()
    first, last = max(int(loud[0]) - 1, 0), int(loud[-1]) + 2
    return wave[first * hop : min(last * hop, len(wave))]


def lifter_matrix(n_mels: int, keep: int) -> Tensor:
    """``(M, M)`` map that keeps the first ``keep`` coefficients of the orthonormal DCT-II
    over the mel axis (the cepstrum, Davis & Mermelstein, 1980) and transforms back:
    ``features @ matrix`` is the log-mel envelope without its fine structure (pitch
    harmonics). ``keep >= n_mels`` gives the identity.
    """
    m = torch.arange(n_mels, dtype=torch.float64)
    dct = torch.cos(math.pi / n_mels * (m[None, :] + 0.5) * m[:, None])  # (K=M, M) rows: k
    dct[0] /= math.sqrt(2.0)
    dct *= math.sqrt(2.0 / n_mels)  # orthonormal: dct @ dct.T = I
    kept = dct[: min(keep, n_mels)]  # (keep, M)
    return (kept.T @ kept).float()


def frames_for(num_samples: Tensor | int, config: MelConfig) -> Tensor:
    """Frames :func:`log_mel` gives ``num_samples`` samples (centred framing)."""
    return torch.as_tensor(num_samples) // config.hop_length + 1


def cmvn(features: Tensor, lengths: Tensor | None = None, eps: float = 1e-5) -> Tensor:
    """Per-utterance, per-band mean and variance normalisation over the real frames.

    Shapes: ``features (B, F, M)``, ``lengths (B,)`` real frames -> ``(B, F, M)`` with the
    padded frames set to 0.

    Example:
        >>> x = torch.randn(2, 50, 4) * 3 + 7
        >>> y = cmvn(x, torch.tensor([50, 20]))
        >>> abs(float(y[1, :20].mean())) < 1e-5, round(float(y[1, :20].std(unbiased=False)), 2)
        (True, 1.0)
    """
    b, f, _ = features.shape
    if lengths is None:
        lengths = torch.full((b,), f, dtype=torch.long, device=features.device)
    real = (torch.arange(f, device=features.device)[None, :] < lengths[:, None]).unsqueeze(-1)
    count = real.sum(dim=1, keepdim=True).clamp(min=1).to(features.dtype)  # (B, 1, 1)
    mean = features.masked_fill(~real, 0.0).sum(dim=1, keepdim=True) / count
    centred = (features - mean).masked_fill(~real, 0.0)
    var = (centred**2).sum(dim=1, keepdim=True) / count
    return centred / torch.sqrt(var + eps)


def normalise(features: Tensor, lengths: Tensor | None, mode: str, eps: float = 1e-5) -> Tensor:
    """Per-utterance normalisation by ``mode``: ``"band"`` is :func:`cmvn`; ``"utterance"``
    uses one mean and one variance over the real frames and all bands, so the relative level
    of the bands (the spectral envelope) survives while the recording's gain does not.

    Shapes: ``features (B, F, M)``, ``lengths (B,)`` -> ``(B, F, M)``, padded frames 0.
    """
    if mode == "band":
        return cmvn(features, lengths, eps)
    if mode != "utterance":
        raise ValueError(f"mode must be one of {NORMS}, got {mode!r}")
    b, f, m = features.shape
    flat = cmvn(features.reshape(b, f * m, 1), None if lengths is None else lengths * m, eps)
    return flat.reshape(b, f, m)


def pad_waves(waves: Sequence[np.ndarray], mel: MelConfig | None = None) -> tuple[Tensor, Tensor]:
    """Stack 1-D waveforms, zero-padded at the end -> ``(waves (B, T), lengths (B,))``; with
    ``mel``, each is first trimmed of silence as ``mel.trim_db`` asks (:func:`trim_silence`)."""
    clips = [torch.from_numpy(np.asarray(w, dtype=np.float32)) for w in waves]
    if mel is not None:
        clips = [trim_silence(c, mel) for c in clips]
    lengths = torch.tensor([len(c) for c in clips], dtype=torch.long)
    out = torch.zeros(len(clips), int(lengths.max()))
    for i, c in enumerate(clips):
        out[i, : len(c)] = c
    return out, lengths


def _raw_features(
    waves: Tensor, lengths: Tensor, mel: MelConfig, filterbank: Tensor | None
) -> tuple[Tensor, Tensor]:
    """Log-mels of padded waveforms with ``mel``'s floor and lifter, before normalisation:
    ``(B, T)``, ``(B,)`` -> ``(B, F, M)``, ``(B,)`` real frames."""
    feats = log_mel(waves, mel, filterbank)
    if mel.top_db is not None:
        feats = floor_db(feats, mel.top_db)
    if mel.lifter:
        feats = feats @ lifter_matrix(mel.n_mels, mel.lifter)
    return feats, frames_for(lengths, mel).clamp(max=feats.shape[1])


def batch_features(
    waves: Tensor,
    lengths: Tensor,
    mel: MelConfig,
    filterbank: Tensor | None = None,
    offsets: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Normalised log-mel features of padded waveforms; ``offsets (B, M)``, when given, are
    subtracted from each clip's log-mels first (a speaker's mean, :func:`speaker_offsets`).

    Shapes: ``waves (B, T)``, ``lengths (B,)`` samples -> ``(features (B, F, M), frames (B,))``.
    """
    feats, frames = _raw_features(waves, lengths, mel, filterbank)
    if offsets is not None:
        feats = feats - offsets[:, None, :].to(feats)
    return normalise(feats, frames, mel.norm), frames


def speaker_offsets(
    waves: Sequence[np.ndarray], speakers: Sequence[str | None], mel: MelConfig
) -> Tensor:
    """Each clip's speaker mean: the log-mel of every band averaged over all real frames of all
    clips of the same speaker (``None`` is one speaker too), as ``mel`` computes them.

    Subtracting it (``batch_features(offsets=...)``) is cepstral mean normalisation per speaker
    rather than per clip: a speaker's and microphone's fixed colouring goes, while which bands
    are loud in this word compared with that speaker's average stays.

    Shapes: ``N`` waveforms ``(T_i,)`` -> ``(N, M)``.
    """
    if len(speakers) != len(waves):
        raise ValueError(
            f"speakers must name one speaker per clip: {len(speakers)} for {len(waves)} clips"
        )
    fb = mel_filterbank(mel)
    sums: dict[str | None, Tensor] = {}
    counts: dict[str | None, int] = {}
    for wave, speaker in zip(waves, speakers, strict=True):
        feats, frames = _raw_features(*pad_waves([wave], mel), mel, fb)
        n = int(frames[0])
        sums[speaker] = sums.get(speaker, 0) + feats[0, :n].double().sum(0)
        counts[speaker] = counts.get(speaker, 0) + n
    means = {k: (sums[k] / max(counts[k], 1)).float() for k in sums}
    return torch.stack([means[s] for s in speakers]) if speakers else torch.zeros(0, mel.n_mels)
