"""Recognize spoken words in WAV files with a checkpoint from ``multihead train speech``.

Prints one label per file, in order. A file that cannot be used (missing, empty, not a WAV,
truncated, 0 seconds, longer than the checkpoint allows) gets an empty line, and its reason goes
to stderr; with --json each file gets one JSON object, with an "error" field for a refused one.
Exit status: 0 when every file was recognized, 1 when any was refused, 2 for usage errors.

Each clip is classified under the test-time views stored in the checkpoint (``--tta`` of
``train speech``; ``--tta NAME`` here overrides them). ``--adapt-speaker`` treats all the files
as clips of ONE speaker saying a variety of words: it picks the single vocal-tract warp factor
whose predictions over all of them are most confident and most varied, and, for a checkpoint
of the ``new-speakers`` recipe, subtracts their common mean log-mel (all files are then read
before the first result; a batch that mixes voices gets one compromise). Without it, each file
stands for its own speaker.

Example:
    multihead recognize --checkpoint runs/speech/checkpoint.pt 7_george_0.wav 3_lucas_1.wav
    multihead recognize --checkpoint runs/speech/checkpoint.pt --json clips/*.wav
    multihead recognize --checkpoint runs/speech/checkpoint.pt --adapt-speaker anna/*.wav
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from multihead.commands._common import add_threads_option, in_blocks, set_threads
from multihead.tasks.speech import WavError, read_wav
from multihead.train.speech import load_speech_checkpoint, predict_waves
from multihead.train.speech_tta import TTA_PRESETS, predict_by_speaker, tta_views

__all__ = ["configure", "run"]

_CHUNK = 32  # files read and recognized together: bounded memory, batched compute


def configure(parser: argparse.ArgumentParser) -> None:
    """Declare the options of ``multihead recognize``."""
    parser.add_argument("files", nargs="+", metavar="FILE.wav", help="recordings to recognize")
    parser.add_argument(
        "--checkpoint",
        default="runs/speech/checkpoint.pt",
        help="a speech checkpoint (default: runs/speech/checkpoint.pt)",
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per file")
    parser.add_argument(
        "--tta",
        choices=tuple(TTA_PRESETS),
        help="test-time augmentation: average over these stretches (default: the checkpoint's)",
    )
    parser.add_argument(
        "--adapt-speaker",
        action="store_true",
        help="all FILEs are one speaker saying varied words: one vocal-tract warp (and, for a "
        "new-speakers checkpoint, the speaker's mean) chosen for them together",
    )
    add_threads_option(parser, "CPU threads for torch (default: torch's own choice)")


def run(args: argparse.Namespace) -> int:
    """Run ``multihead recognize``; returns the exit status."""
    set_threads(args.threads)
    model, mel, labels, max_seconds, views, speaker_mean = load_speech_checkpoint(args.checkpoint)
    if args.tta is not None:
        views = tta_views(args.tta)
    # One speaker's clips are classified together, so they are all read first.
    size = max(len(args.files), 1) if args.adapt_speaker else _CHUNK
    refused = 0
    for chunk in in_blocks(enumerate(args.files, 1), size):
        waves: dict[int, np.ndarray] = {}
        errors: dict[int, str] = {}
        for number, path in chunk:
            try:
                waves[number], _ = read_wav(path, mel.sample_rate, max_seconds=max_seconds)
            except WavError as exc:
                errors[number] = str(exc)
        clips = list(waves.values())
        probs, warp = None, None
        if args.adapt_speaker and len(clips) == 1:
            # One clip says nothing about its speaker's mean or warp (its own mean scored
            # below the training speakers' average on the validation speakers).
            print(
                "multihead recognize: --adapt-speaker needs several files of the speaker; the "
                "one readable file is recognized on its own",
                file=sys.stderr,
            )
        if len(clips) > 1 and args.adapt_speaker:
            probs, warps = predict_by_speaker(model, clips, [None] * len(clips), mel, views=views)
            warp = warps[None]
            print(
                f"multihead recognize: speaker warp {warp:g} over {len(clips)} file(s)",
                file=sys.stderr,
            )
        elif clips:
            # Without the speaker's clips, a speaker_norm model subtracts the training speakers'
            # average mean (better than one clip's own on the validation speakers).
            offsets = None
            if mel.speaker_norm and speaker_mean is not None:
                offsets = speaker_mean.expand(len(clips), -1).contiguous()  # (N, M)
            probs = predict_waves(model, clips, mel, views=views, offsets=offsets)
        row = dict(zip(waves, range(len(waves)), strict=True))
        for number, path in chunk:
            if number in errors:
                refused += 1
                print(f"multihead recognize: file {number}: {errors[number]}", file=sys.stderr)
                print(json.dumps({"file": path, "error": errors[number]}) if args.json else "")
                continue
            assert probs is not None
            p = probs[row[number]]
            label = labels[int(p.argmax())]
            if args.json:
                scores = {lab: round(float(q), 4) for lab, q in zip(labels, p, strict=True)}
                result = {"file": path, "label": label, "probabilities": scores}
                if warp is not None:
                    result["speaker_warp"] = warp
                print(json.dumps(result))
            else:
                print(label)
        sys.stdout.flush()
    return 1 if refused else 0
