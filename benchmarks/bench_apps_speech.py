"""Spoken digits: our Transformer classifier vs MFCC statistics + logistic regression.

Both are trained and tested in the same run on ``../shared/data/spoken_digits`` (the Free
Spoken Digit Dataset's four speakers; not part of the repository), on the ``index`` split and on
the ``speaker`` split rotated over every held-out speaker. Reports accuracy and training time.
Ours runs ``multihead train speech``'s default recipe for each split: ``standard`` on ``index``,
``new-speakers`` on ``speaker`` (:func:`multihead.train.speech.speech_recipe`). One trained
model is then measured three ways: plain; with the recipe's test-time augmentation (``--tta``,
default :data:`multihead.train.speech_tta.RECIPE_TTA`); and, on the speaker split, with that and
one vocal-tract warp chosen over all of the test speaker's clips (``--adapt-speaker``).

The baseline: 13 MFCCs (DCT-II of the same log-mel frames as ours, Davis & Mermelstein, 1980)
and their first differences, summarised per recording by mean and standard deviation
(52 numbers), standardised, then scikit-learn's ``LogisticRegression``.

Usage: ``python benchmarks/bench_apps_speech.py [--data DIR] [--splits index,speaker]
[--speakers a,b] [--threads N] [--tta NAME]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence

import numpy as np
import torch

from multihead.tasks.features import MelConfig, log_mel, mel_filterbank
from multihead.tasks.speech import load_examples, scan_folder, speakers_of, split_examples
from multihead.train.speech import (
    SpeechEnsemble,
    SpeechModelConfig,
    SpeechTrainConfig,
    predict_waves,
    speech_recipe,
    train_speech,
)
from multihead.train.speech_tta import (
    RECIPE_ENSEMBLE,
    RECIPE_TTA,
    TTA_PRESETS,
    predict_by_speaker,
    tta_views,
)

_HERE = os.path.dirname(os.path.abspath(__file__))
# ../shared next to the repository (a checkout in /work/main), or next to a worktree's parent.
_CANDIDATES = [
    os.path.join(_HERE, *([".."] * up), "shared", "data", "spoken_digits") for up in (2, 3)
]
DEFAULT_DATA = next((c for c in _CANDIDATES if os.path.isdir(c)), _CANDIDATES[0])


def mfcc_stats(waves: Sequence[np.ndarray], mel: MelConfig, n_mfcc: int = 13) -> np.ndarray:
    """``(N, 4 * n_mfcc)``: mean and std over frames of the MFCCs and of their differences."""
    from scipy.fft import dct

    fb = mel_filterbank(mel)
    rows = []
    for w in waves:
        feats = log_mel(torch.from_numpy(w), mel, fb)[0].numpy()  # (F, M)
        c = dct(feats, type=2, norm="ortho", axis=1)[:, :n_mfcc]
        d = np.diff(c, axis=0) if len(c) > 1 else np.zeros_like(c)
        rows.append(np.concatenate([c.mean(0), c.std(0), d.mean(0), d.std(0)]))
    return np.stack(rows)


def baseline(train_w, train_y, test_w, test_y, mel: MelConfig) -> tuple[float, float]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    start = time.perf_counter()
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000))
    clf.fit(mfcc_stats(train_w, mel), train_y)
    seconds = time.perf_counter() - start
    return float((clf.predict(mfcc_stats(test_w, mel)) == np.asarray(test_y)).mean()), seconds


def ours(
    train_w,
    train_y,
    test_w,
    test_y,
    recipe: str,
    classes: int,
    tta: str,
    adapt: bool,
    train_speakers,
    speakers,
) -> tuple[list[float], float, str]:
    """``multihead train speech``'s default for the split: the recipe, its ensemble of
    :data:`RECIPE_ENSEMBLE` models sharing the time limit, the rest as is. Accuracies of the
    first model: plain (with the speaker mean where the recipe has it), with ``tta``, and
    (``adapt``) with ``tta`` and one warp per speaker; then of the ensemble, as the command
    does (``tta``, and the warp with ``adapt``)."""
    mel, augment = speech_recipe(recipe)
    members = RECIPE_ENSEMBLE[recipe]
    results = [
        train_speech(
            train_w,
            train_y,
            classes,
            mel=mel,
            model_config=SpeechModelConfig(n_mels=mel.n_mels),
            config=SpeechTrainConfig(
                augment=augment, seed=k, time_limit_s=SpeechTrainConfig().time_limit_s / members
            ),
            speakers=train_speakers,
        )
        for k in range(members)
    ]
    first = results[0].model
    y = torch.tensor(test_y)

    def probs(model, views: str, adapt: bool):
        return predict_by_speaker(model, test_w, speakers, mel, views=tta_views(views), adapt=adapt)

    runs = [probs(first, "none", False), probs(first, tta, False)]
    if adapt:
        runs.append(probs(first, tta, True))
    final = SpeechEnsemble([r.model for r in results]) if members > 1 else first
    if members > 1:
        runs.append(probs(final, tta, adapt))
    how = " + ".join(f"{r.epochs} ep {r.stopped_by}" for r in results)
    if adapt:
        how += ", warp " + "/".join(f"{w:g}" for w in runs[-1][1].values())
    # As `recognize` without --adapt-speaker: each file alone, its speaker unknown (the
    # training speakers' average mean stands in for the speaker's own), no warp.
    stand_in = results[0].speaker_mean
    offsets = None if stand_in is None else stand_in.expand(len(test_w), -1).contiguous()
    alone = predict_waves(final, test_w, mel, views=tta_views(tta), offsets=offsets)
    runs.append((alone, {}))
    accs = [float((p.argmax(-1) == y).float().mean()) for p, _ in runs]
    return accs, sum(r.seconds for r in results), how


def main(argv: Sequence[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=DEFAULT_DATA)
    parser.add_argument("--splits", default="index,speaker")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--speakers", default=None, help="test speakers to rotate (default all)")
    parser.add_argument("--tta", choices=tuple(TTA_PRESETS), help="default: the recipe's")
    args, _ = parser.parse_known_args(argv)
    if not os.path.isdir(args.data):
        return f"skipped: no data folder {args.data!r} (the shared data is not in the repository)\n"
    if args.threads:
        torch.set_num_threads(args.threads)
    mel = MelConfig()
    examples, _ = scan_folder(args.data)
    labels = sorted({e.label for e in examples})
    index = {label: i for i, label in enumerate(labels)}
    cases: list[tuple[str, str | None]] = []
    for split in args.splits.split(","):
        if split == "speaker":
            chosen = args.speakers.split(",") if args.speakers else speakers_of(examples)
            cases += [("speaker", s) for s in chosen]
        else:
            cases.append((split, None))
    lines = [
        f"load at start: {os.getloadavg()[0]:.1f} (1-min average, 2 cores), "
        f"torch threads {torch.get_num_threads()}\n",
        "| split | test | MFCC+LR acc | MFCC+LR s | ours: 1 model | + TTA | + TTA + speaker warp "
        "| ensemble, as trained | ensemble, one file at a time | ours s | ours runs | time ratio |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for split, speaker in cases:
        train_ex, test_ex = split_examples(examples, split, test_speaker=speaker)
        train_w, train_ex, _ = load_examples(train_ex, mel.sample_rate)
        test_w, test_ex, _ = load_examples(test_ex, mel.sample_rate)
        train_y = [index[e.label] for e in train_ex]
        test_y = [index[e.label] for e in test_ex]
        b_acc, b_s = baseline(train_w, train_y, test_w, test_y, mel)
        recipe = "new-speakers" if split == "speaker" else "standard"
        tta = args.tta or RECIPE_TTA[recipe]
        accs, o_s, how = ours(
            train_w,
            train_y,
            test_w,
            test_y,
            recipe,
            len(labels),
            tta,
            split == "speaker",
            [e.speaker for e in train_ex],
            [e.speaker for e in test_ex],
        )
        alone = f"{accs.pop():.1%}"
        shown = [f"{a:.1%}" for a in accs[:3]] + [""] * (3 - len(accs[:3]))
        ensemble = f"{accs[3]:.1%}" if len(accs) > 3 else ""
        row = (
            f"| {split} | {speaker or 'index 0-4'} | {b_acc:.1%} | {b_s:.1f} | {shown[0]} | "
            f"{shown[1]} ({tta}) | {shown[2]} | {ensemble} | {alone} | {o_s:.0f} | {how} | "
            f"{o_s / b_s:.0f}x |"
        )
        print(row, file=sys.stderr, flush=True)
        lines.append(row)
    lines.append(f"\nload at end: {os.getloadavg()[0]:.1f}\n")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(main(sys.argv[1:]))
