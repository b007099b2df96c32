"""Inference-time help for voices never heard in training: test-time augmentation and a
speaker-level vocal-tract length normalisation.

* **Test-time augmentation** (``--tta``): each clip is classified under a few fixed
  ``(speed, warp)`` stretches of its features (the same maps that training draws at random,
  :func:`~multihead.train.speech_augment.stretch_features`) and the class probabilities are
  averaged. It needs nothing but the clip.
* **Speaker-level warp** (``--adapt-speaker``): vocal-tract length normalisation with one warp
  factor per speaker, chosen over a grid as Lee & Rose (1996) did, but scored by the model's
  predictions instead of a likelihood. Given many clips *of one speaker*, every candidate
  factor is tried on all of them and the best-scoring one is used for every clip. The default
  score, ``"information"``, is the mutual information between clip and predicted class,
  ``H(mean of p) - mean of H(p)`` (as in discriminative clustering, Krause et al., 2010): the
  predictions should be confident *and* spread over the classes. Plain confidence (the mean
  log largest probability, ``"confidence"``) picked factors that made many clips confidently
  the same word, and lost accuracy on the validation speakers (docs/speech.md). So this
  assumes one speaker per batch (a batch mixing voices gets one compromise factor) saying a
  variety of the words (a batch of one word said over and over is pushed towards others).

Views are ``(speed, warp)`` pairs: ``speed > 1`` plays faster, ``warp < 1`` moves the
spectrum up (a shorter vocal tract). Shape legend: ``N`` clips, ``C`` classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from multihead.tasks.features import MelConfig, speaker_offsets
from multihead.train.speech import SpeechModel, predict_waves

__all__ = [
    "ADAPT_WARPS",
    "CRITERIA",
    "RECIPE_ENSEMBLE",
    "RECIPE_TTA",
    "TTA_PRESETS",
    "SpeakerWarp",
    "adapt_speaker",
    "check_views",
    "predict_by_speaker",
    "score_predictions",
    "tta_views",
]

View = tuple[float, float]  # (speed, warp)

# Named sets of views, chosen among on two validation speakers (docs/speech.md): "speed"
# helped a little, "vtlp" (mel-axis stretches inside the new-speakers training range) did not.
TTA_PRESETS: dict[str, tuple[View, ...]] = {
    "none": ((1.0, 1.0),),
    "speed": ((0.9, 1.0), (1.0, 1.0), (1.1, 1.0)),
    "vtlp": tuple((1.0, w) for w in (0.88, 0.94, 1.0, 1.06, 1.12)),
}

# The test-time augmentation each training recipe defaults to (multihead train speech --tta).
RECIPE_TTA: dict[str, str] = {"standard": "none", "new-speakers": "speed"}

# Models each recipe trains and averages (multihead train speech --ensemble): three seeds
# share the time limit for new voices, where they gained about 3 points on the validation
# speakers; one for the standard recipe, which is at 99-100% already.
RECIPE_ENSEMBLE: dict[str, int] = {"standard": 1, "new-speakers": 3}

# Candidate speaker warps: 0.90 to 1.10 in steps of 0.02. On the validation speakers a grid
# from 0.80 to 1.20 chose the same factors at twice the cost.
ADAPT_WARPS: tuple[float, ...] = tuple(round(0.90 + 0.02 * i, 2) for i in range(11))

CRITERIA = ("information", "confidence")


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
    ``ValueError`` naming ``name`` otherwise."""
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
    ``scores``, each candidate's score under the criterion (higher is better)."""

    warp: float
    scores: dict[float, float]


def score_predictions(probs: Tensor, criterion: str = "information") -> float:
    """How good a speaker's predictions ``probs (N, C)`` look without labels (higher: better).

    ``"information"``: ``H(mean over clips of p) - mean over clips of H(p)``, in nats;
    ``"confidence"``: the mean over clips of the log of the largest probability.

    Example:
        >>> sure_and_varied = torch.eye(3)
        >>> sure_and_same = torch.tensor([[1.0, 0, 0]] * 3)
        >>> round(score_predictions(sure_and_varied), 4), round(score_predictions(sure_and_same), 4)
        (1.0986, 0.0)
    """
    p = probs.double().clamp(min=1e-12)
    if criterion == "confidence":
        return float(p.max(dim=-1).values.log().mean())
    if criterion != "information":
        raise ValueError(f"criterion must be one of {', '.join(CRITERIA)}, got {criterion!r}")
    mean = p.mean(0)
    return float(-(mean * mean.log()).sum() + (p * p.log()).sum(-1).mean())


def adapt_speaker(
    model: SpeechModel,
    waves: Sequence[np.ndarray],
    mel: MelConfig,
    *,
    views: Sequence[View] = ((1.0, 1.0),),
    candidates: Sequence[float] = ADAPT_WARPS,
    criterion: str = "information",
    offsets: Tensor | None = None,
) -> tuple[Tensor, SpeakerWarp]:
    """Classify clips of one speaker with the single warp factor whose predictions score best
    (speaker-level VTLN, after Lee & Rose, 1996; :func:`score_predictions`).

    Each candidate ``a`` scales every view's warp, ``(speed, warp * a)``, so test-time
    augmentation spreads around the speaker's factor. Ties go to the factor nearest 1.

    Args:
        model: a trained classifier.
        waves: ``N`` mono waveforms at ``mel.sample_rate``, all of the same speaker.
        mel: the front end the model was trained with.
        views: the test-time views, as for :func:`~multihead.train.speech.predict_waves`.
        candidates: warp factors to try, each > 0.
        criterion: one of :data:`CRITERIA`.
        offsets: ``(N, M)`` speaker means, for a model trained with ``mel.speaker_norm``.

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
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {', '.join(CRITERIA)}, got {criterion!r}")
    if not waves:
        raise ValueError("waves must hold at least one clip of the speaker, got none")
    best: tuple[float, float] | None = None  # (score, -distance from 1)
    chosen, chosen_probs = 1.0, torch.empty(0)
    scores: dict[float, float] = {}
    for a in factors:
        scaled = [(s, w * a) for s, w in views]
        probs = predict_waves(model, waves, mel, views=scaled, offsets=offsets)
        scores[a] = score_predictions(probs, criterion)
        key = (scores[a], -abs(a - 1.0))
        if best is None or key > best:
            best, chosen, chosen_probs = key, a, probs
    return chosen_probs, SpeakerWarp(chosen, scores)


def predict_by_speaker(
    model: SpeechModel,
    waves: Sequence[np.ndarray],
    speakers: Sequence[str | None],
    mel: MelConfig,
    *,
    views: Sequence[View] = ((1.0, 1.0),),
    adapt: bool = True,
    candidates: Sequence[float] = ADAPT_WARPS,
    criterion: str = "information",
) -> tuple[Tensor, dict[str | None, float]]:
    """Classify each speaker's clips together (``speakers[i]`` names clip ``i``'s speaker;
    clips with ``None`` form one group): with the speaker's own warp (``adapt``,
    :func:`adapt_speaker`) and, for a model trained with ``mel.speaker_norm``, the speaker's
    mean log-mel (:func:`~multihead.tasks.features.speaker_offsets`).

    Returns ``(probabilities (N, C), {speaker: warp used}})``.
    """
    if len(speakers) != len(waves):
        raise ValueError(
            f"speakers must name one speaker per clip: {len(speakers)} for {len(waves)} clips"
        )
    probs = torch.zeros(len(waves), model.head.out_features)
    chosen: dict[str | None, float] = {}
    for speaker in dict.fromkeys(speakers):
        idx = [i for i, s in enumerate(speakers) if s == speaker]
        group = [waves[i] for i in idx]
        offsets = speaker_offsets(group, [speaker] * len(group), mel) if mel.speaker_norm else None
        if adapt:
            probs[idx], warp = adapt_speaker(
                model,
                group,
                mel,
                views=views,
                candidates=candidates,
                criterion=criterion,
                offsets=offsets,
            )
            chosen[speaker] = warp.warp
        else:
            probs[idx] = predict_waves(model, group, mel, views=views, offsets=offsets)
            chosen[speaker] = 1.0
    return probs, chosen
