"""Training-time augmentation of spoken words, and the named recipes that set it.

Every batch is augmented afresh, because a few speakers are all most users have and a new
voice is the real test:

* additive white noise at a random signal-to-noise ratio (:func:`add_noise`);
* speed perturbation (Ko et al., 2015) as a random stretch of the time axis of the features;
* vocal-tract length perturbation (Jaitly & Hinton, 2013) as a random stretch of the mel axis,
  which moves formants and pitch harmonics the way a shorter or longer vocal tract does;
* optionally a random smooth colouring of the spectrum (another microphone or room);
* SpecAugment (Park et al., 2019): random bands of frequencies and runs of frames set to the
  utterance mean (:func:`augment_features`);
* mixup (Zhang et al., 2018) of utterances and their labels (:func:`mixup_loss`).

Shape legend: ``B`` batch, ``T`` samples, ``F`` frames, ``M`` mel bands.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from multihead.tasks.features import MelConfig

__all__ = [
    "RECIPES",
    "AugmentConfig",
    "add_noise",
    "augment_features",
    "mixup_loss",
    "speech_recipe",
    "stretch_features",
]


@dataclass(frozen=True, kw_only=True)
class AugmentConfig:
    """Training-time augmentation; ranges are drawn uniformly per utterance."""

    # Ranges from the papers rather than from any one data set: speed 0.9-1.1 as Ko et al.
    # (2015), warp 0.9-1.1 as Jaitly & Hinton (2013); noise mild enough to keep fricatives.
    noise_prob: float = 0.3
    snr_db: tuple[float, float] = (15.0, 40.0)
    speed: tuple[float, float] = (0.9, 1.1)  # time stretch: > 1 plays faster
    warp: tuple[float, float] = (0.9, 1.1)  # mel-axis stretch: vocal tract length
    time_masks: int = 2
    time_mask_frames: int = 8  # widest run of masked frames (10 ms each)
    freq_masks: int = 2
    freq_mask_bands: int = 6  # widest band of masked mel bands
    # A random smooth curve over the mel axis (cosines of 1-3 periods, each amplitude drawn
    # from +-channel, in normalised units), as a different microphone or room would colour
    # the spectrum; 0 turns it off.
    channel: float = 0.0
    # mixup (Zhang et al., 2018): each batch is blended with a shuffled copy of itself, weight
    # drawn from Beta(mixup, mixup), and so are the targets; 0 turns it off.
    mixup: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


RECIPES = ("standard", "new-speakers")


def speech_recipe(name: str) -> tuple[MelConfig, AugmentConfig]:
    """The front end and augmentation of a named recipe, one of :data:`RECIPES`.

    ``standard`` suits a test set of the training speakers' voices (``--split index``).
    ``new-speakers`` is for voices never heard in training (``--split speaker``): leading and
    trailing silence is cut (``trim_db``) and the remaining floor levelled (``top_db``), as
    recording set-ups differ most in their silence; speed and vocal-tract ranges are wider,
    noise stronger and more frequent, and utterances are blended (mixup); each speaker's mean
    log-mel is subtracted (``MelConfig.speaker_norm``: training needs each clip's speaker, and
    testing several clips of one speaker). It was chosen on validation speakers held out from
    the training speakers (docs/speech.md).

    Example:
        >>> mel, augment = speech_recipe("new-speakers")
        >>> mel.trim_db, mel.speaker_norm, augment.mixup
        (25.0, True, 0.4)
    """
    if name == "standard":
        return MelConfig(), AugmentConfig()
    if name == "new-speakers":
        return MelConfig(top_db=45.0, trim_db=25.0, speaker_norm=True), AugmentConfig(
            speed=(0.8, 1.25), warp=(0.85, 1.15), noise_prob=0.5, snr_db=(5.0, 30.0), mixup=0.4
        )
    raise ValueError(f"recipe must be one of {', '.join(RECIPES)}, got {name!r}")


def add_noise(waves: Tensor, lengths: Tensor, aug: AugmentConfig, gen: torch.Generator) -> Tensor:
    """White noise at a random SNR (dB) relative to each utterance's power, on a random
    ``noise_prob`` share of the batch. Shapes: ``(B, T)`` -> ``(B, T)``."""
    b, t = waves.shape
    real = torch.arange(t)[None, :] < lengths[:, None]
    power = (waves**2).sum(1) / lengths.clamp(min=1)  # (B,)
    lo, hi = aug.snr_db
    snr = lo + (hi - lo) * torch.rand(b, generator=gen)
    scale = torch.sqrt(power / 10 ** (snr / 10))  # (B,)
    scale = scale * (torch.rand(b, generator=gen) < aug.noise_prob)
    noise = torch.randn(b, t, generator=gen) * scale[:, None]
    return waves + noise * real


def _stretch(
    feats: Tensor, frames: Tensor, speed: Tensor, warp: Tensor, f_out: int
) -> tuple[Tensor, Tensor]:
    """Stretch each utterance's time axis by ``speed (B,)`` and mel axis by ``warp (B,)``.

    Output frame i reads input frame ``i * speed`` and output band j reads band ``j * warp``
    (clamped to the top band, so a stretched spectrum keeps its highest band rather than
    zeros), linearly interpolated. ``warp < 1`` moves the spectrum up, as a shorter vocal
    tract does. Shapes: ``feats (B, F, M)``, ``frames (B,)`` -> ``(B, F'', M)``, ``(B,)``
    with ``F''`` the longest stretched utterance (at most ``f_out``); padded frames are 0.
    """
    b, f, m = feats.shape
    src_t = torch.arange(f_out)[None, :] * speed[:, None]  # (B, F')
    src_m = (torch.arange(m)[None, :] * warp[:, None]).clamp(max=m - 1)  # (B, M)
    grid = torch.stack(
        torch.broadcast_tensors(
            (2 * src_m / max(m - 1, 1) - 1)[:, None, :],  # x: the mel axis
            (2 * src_t / max(f - 1, 1) - 1)[:, :, None],  # y: the time axis
        ),
        dim=-1,
    ).to(feats.dtype)  # (B, F', M, 2)
    out = F.grid_sample(
        feats.unsqueeze(1), grid, mode="bilinear", padding_mode="zeros", align_corners=True
    ).squeeze(1)  # (B, F', M)
    new_frames = torch.ceil(frames / speed).long().clamp(1, f_out)
    out = out[:, : int(new_frames.max())]  # frames past every utterance's end are padding
    real = torch.arange(out.shape[1])[None, :] < new_frames[:, None]
    return out.masked_fill(~real.unsqueeze(-1), 0.0), new_frames


def stretch_features(
    feats: Tensor, frames: Tensor, *, speed: float = 1.0, warp: float = 1.0
) -> tuple[Tensor, Tensor]:
    """One deterministic speed (time axis) and vocal-tract (mel axis) stretch of every
    utterance, the same map :func:`augment_features` draws at random: test-time augmentation
    and speaker adaptation use it. ``speed == warp == 1`` returns the input unchanged.

    Shapes: ``feats (B, F, M)``, ``frames (B,)`` -> ``(B, F', M)``, ``(B,)``,
    ``F' = ceil(F / speed)`` at most.

    Example:
        >>> x = torch.randn(2, 30, 40)
        >>> y, n = stretch_features(x, torch.tensor([30, 20]), speed=1.25, warp=0.9)
        >>> y.shape, n.tolist()
        (torch.Size([2, 24, 40]), [24, 16])
    """
    for name, value in (("speed", speed), ("warp", warp)):
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            raise ValueError(f"{name} must be a number > 0, got {value!r}")
    if speed == 1.0 and warp == 1.0:
        return feats, frames
    b, f, _ = feats.shape
    return _stretch(
        feats,
        frames,
        torch.full((b,), float(speed)),
        torch.full((b,), float(warp)),
        math.ceil(f / speed),
    )


def augment_features(
    feats: Tensor, frames: Tensor, aug: AugmentConfig, gen: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Speed and vocal-tract stretch, then SpecAugment masks, drawn per utterance.

    Shapes: ``feats (B, F, M)`` normalised, ``frames (B,)`` -> ``(B, F', M)``, ``(B,)`` with
    ``F' = ceil(F / min speed)`` so a slowed-down utterance still fits.
    """
    b, f, m = feats.shape
    speed = aug.speed[0] + (aug.speed[1] - aug.speed[0]) * torch.rand(b, generator=gen)
    warp = aug.warp[0] + (aug.warp[1] - aug.warp[0]) * torch.rand(b, generator=gen)
    out, new_frames = _stretch(feats, frames, speed, warp, math.ceil(f / aug.speed[0]))
    f_out = out.shape[1]
    real = torch.arange(f_out)[None, :] < new_frames[:, None]
    if aug.channel > 0:
        k = torch.arange(1, 4, dtype=out.dtype)[:, None]  # (3, 1) periods
        cosines = torch.cos(math.pi * k * (torch.arange(m, dtype=out.dtype) + 0.5) / m)  # (3, M)
        amp = (2 * torch.rand(b, 3, generator=gen) - 1) * aug.channel  # (B, 3)
        out = out + (amp @ cosines)[:, None, :] * real.unsqueeze(-1)
    # SpecAugment: zero is the utterance's mean after normalisation.
    for _ in range(aug.freq_masks):
        width = torch.randint(0, aug.freq_mask_bands + 1, (b, 1), generator=gen)
        start = (torch.rand(b, 1, generator=gen) * (m - width + 1)).long()
        band = torch.arange(m)[None, :]
        out = out.masked_fill(((band >= start) & (band < start + width)).unsqueeze(1), 0.0)
    for _ in range(aug.time_masks):
        width = torch.randint(0, aug.time_mask_frames + 1, (b, 1), generator=gen)
        width = torch.minimum(width, new_frames[:, None] // 5)  # never hide most of a word
        start = (torch.rand(b, 1, generator=gen) * (new_frames[:, None] - width + 1)).long()
        step = torch.arange(f_out)[None, :]
        out = out.masked_fill(((step >= start) & (step < start + width)).unsqueeze(-1), 0.0)
    return out, new_frames


def mixup_loss(
    model: nn.Module,
    feats: Tensor,
    frames: Tensor,
    y: Tensor,
    alpha: float,
    gen: torch.Generator,
) -> Tensor:
    """Cross-entropy, on a mixup blend of the batch with a shuffled copy when ``alpha > 0``.

    Shapes: ``feats (B, F, M)``, ``frames (B,)``, ``y (B,)`` -> a scalar.
    """
    if alpha <= 0:
        return F.cross_entropy(model(feats, frames), y)
    # Beta has no generator argument: draw it from a NumPy stream seeded by ``gen``, so a
    # seeded run is reproducible and the global RNG is left alone.
    seed = int(torch.randint(2**31 - 1, (1,), generator=gen))
    lam = float(np.random.default_rng(seed).beta(alpha, alpha))
    perm = torch.randperm(len(y), generator=gen)
    mixed = lam * feats + (1 - lam) * feats[perm]  # padding is 0 in both, so stays 0
    logits = model(mixed, torch.maximum(frames, frames[perm]))
    return lam * F.cross_entropy(logits, y) + (1 - lam) * F.cross_entropy(logits, y[perm])
