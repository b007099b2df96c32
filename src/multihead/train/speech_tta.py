"""Inference-time help for voices never heard in training: test-time augmentation and a
speaker-level vocal-tract length normalisation.

* **Test-time augmentation** (``--tta``): each clip is classified under a few fixed
  ``(speed, warp)`` stretches of its features (the same maps that training draws at random,
  :func:`~multihead.train.speech_augment.stretch_features`) and the class probabilities are
  averaged. It needs nothing but the clip.
* **Speaker-level warp** (``--adapt-speaker``): vocal-tract length normalisation with the warp
  factor chosen per speaker by the model's own confidence, in the spirit of Lee & Rose (1996),
  who chose it by maximum likelihood over a grid. Given many clips *of one speaker*, every
  candidate factor is tried on all of them, and the one whose predictions are most confident
  on average (the mean log of each clip's largest probability) is used for every clip. This
  assumes one speaker per batch: a batch mixing voices gets one compromise factor.

Views are ``(speed, warp)`` pairs: ``speed > 1`` plays faster, ``warp < 1`` moves the
spectrum up (a shorter vocal tract). Shape legend: ``N`` clips, ``C`` classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from multihead.tasks.features import MelConfig
from multihead.train.speech import SpeechClassifier, predict_waves

__all__ = [
    "ADAPT_WARPS",
    "RECIPE_TTA",
    "TTA_PRESETS",
    "SpeakerWarp",
    "adapt_by_speaker",
    "adapt_speaker",
    "check_views",
    "tta_views",
]

View = tuple[float, float]  # (speed, warp)

# Named sets of views. "vtlp": five mel-axis stretches inside the training range of the
# new-speakers recipe (0.85-1.15), so every view is a spectrum the model has seen.
TTA_PRESETS: dict[str, tuple[View, ...]] = {
    "none": ((1.0, 1.0),),
    "vtlp": tuple((1.0, w) for w in (0.88, 0.94, 1.0, 1.06, 1.12)),
    "vtlp-speed": tuple((s, w) for s in (0.9, 1.0, 1.1) for w in (0.88, 0.94, 1.0, 1.06, 1.12)),
}

# The test-time augmentation each training recipe defaults to (multihead train speech --tta).
RECIPE_TTA: dict[str, str] = {"standard": "none", "new-speakers": "vtlp"}

# Candidate speaker warps: 0.80 to 1.20 in steps of 0.02, wider than one speaker needs within
# the training range, since a new voice may lie outside the training speakers' span.
ADAPT_WARPS: tuple[float, ...] = tuple(round(0.80 + 0.02 * i, 2) for i in range(21))


def tta_views(name: str) -> tuple[View, ...]:
    """The views of a named test-time augmentation, one of :data:`TTA_PRESETS`.

    Example:
        >>> [w for _, w in tta_views("vtlp")]
        [0.88, 0.94, 1.0, 1.06, 1.12]
    """
    if name not in TTA_PRESETS:
        raise ValueError(f"tta must be one of {', '.join(TTA_PRESETS)}, got {name!r}")
    return TTA_PRESETS[name]


def check_views(views: Sequence[Sequence[float]], name: str = "views") -> tuple[View, ...]:
    """``views`` as a tuple of ``(speed, warp)`` float pairs, each > 0 and finite; a
    ``ValueError`` naming ``name`` otherwise (they also come from checkpoints)."""
    out: list[View] = []
    for i, view in enumerate(views):
        if len(view) != 2:
            raise ValueError(f"{name}[{i}] must be a (speed, warp) pair, got {view!r}")
        speed, warp = (float(v) for v in view)
        if not (0.0 < speed < np.inf and 0.0 < warp < np.inf):
            raise ValueError(f"{name}[{i}]: speed and warp must be finite and > 0, got {view!r}")
        out.append((speed, warp))
    if not out:
        raise ValueError(f"{name} must hold at least one (speed, warp) pair, got none")
    return tuple(out)


@dataclass(frozen=True)
class SpeakerWarp:
    """What :func:`adapt_speaker` chose: ``warp``, the factor used for every clip, and
    ``scores``, each candidate's mean log largest probability (higher: more confident)."""

    warp: float
    scores: dict[float, float]


def _confidence(probs: Tensor) -> float:
    """Mean over clips of the log of each clip's largest probability: ``(N, C)`` -> float."""
    return float(probs.max(dim=-1).values.clamp(min=1e-12).log().mean())


def adapt_speaker(
    model: SpeechClassifier,
    waves: Sequence[np.ndarray],
    mel: MelConfig,
    *,
    views: Sequence[View] = ((1.0, 1.0),),
    candidates: Sequence[float] = ADAPT_WARPS,
) -> tuple[Tensor, SpeakerWarp]:
    """Classify clips of one speaker with the single warp factor that makes the model most
    confident on them (speaker-level VTLN, Lee & Rose, 1996, with confidence for likelihood).

    Each candidate ``a`` scales every view's warp, ``(speed, warp * a)``, so test-time
    augmentation spreads around the speaker's factor. Ties go to the factor nearest 1.

    Args:
        model: a trained classifier.
        waves: ``N`` mono waveforms at ``mel.sample_rate``, all of the same speaker.
        mel: the front end the model was trained with.
        views: the test-time views, as for :func:`~multihead.train.speech.predict_waves`.
        candidates: warp factors to try, each > 0.

    Returns:
        ``(probabilities (N, C) under the chosen factor, SpeakerWarp)``.
    """
    views = check_views(views)
    factors = [float(a) for a in candidates]
    if not factors:
        raise ValueError("candidates must hold at least one warp factor, got none")
    bad = [a for a in factors if not 0.0 < a < np.inf]
    if bad:
        raise ValueError(f"candidates must be finite warp factors > 0, got {bad}")
    if not waves:
        raise ValueError("waves must hold at least one clip of the speaker, got none")
    best: tuple[float, float] | None = None  # (score, -distance from 1)
    chosen, chosen_probs = 1.0, torch.empty(0)
    scores: dict[float, float] = {}
    for a in factors:
        probs = predict_waves(model, waves, mel, views=[(s, w * a) for s, w in views])
        scores[a] = _confidence(probs)
        key = (scores[a], -abs(a - 1.0))
        if best is None or key > best:
            best, chosen, chosen_probs = key, a, probs
    return chosen_probs, SpeakerWarp(chosen, scores)


def adapt_by_speaker(
    model: SpeechClassifier,
    waves: Sequence[np.ndarray],
    speakers: Sequence[str | None],
    mel: MelConfig,
    *,
    views: Sequence[View] = ((1.0, 1.0),),
    candidates: Sequence[float] = ADAPT_WARPS,
) -> tuple[Tensor, dict[str | None, float]]:
    """:func:`adapt_speaker` on each speaker's clips separately (``speakers[i]`` names clip
    ``i``'s speaker; clips with ``None`` form one group). Returns ``(probabilities (N, C),
    {speaker: chosen warp})``."""
    if len(speakers) != len(waves):
        raise ValueError(
            f"speakers must name one speaker per clip: {len(speakers)} for {len(waves)} clips"
        )
    probs = torch.zeros(len(waves), model.head.out_features)
    chosen: dict[str | None, float] = {}
    for speaker in dict.fromkeys(speakers):
        idx = [i for i, s in enumerate(speakers) if s == speaker]
        probs[idx], warp = adapt_speaker(
            model, [waves[i] for i in idx], mel, views=views, candidates=candidates
        )
        chosen[speaker] = warp.warp
    return probs, chosen
