"""Speech at inference time: the deterministic stretch against a float64 numpy interpolation,
test-time augmentation against per-clip predictions computed by hand, the speaker-level warp
against a brute-force loop over the factors, and the options' errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from multihead.cli import main
from multihead.tasks.features import MelConfig, log_mel, speaker_offsets
from multihead.tasks.synth_digits import espeak_available, synthesize_digits
from multihead.train.speech import (
    SpeechClassifier,
    SpeechEnsemble,
    SpeechModelConfig,
    SpeechTrainConfig,
    batch_features,
    load_speech_checkpoint,
    pad_waves,
    predict_waves,
    stretch_features,
    train_speech,
)
from multihead.train.speech_tta import (
    TTA_PRESETS,
    adapt_speaker,
    check_views,
    predict_by_speaker,
    score_predictions,
    tta_views,
)


def _stretch_reference(x: np.ndarray, n: int, speed: float, warp: float) -> np.ndarray:
    """One utterance ``x (n, M)``: output frame i, band j = the input linearly interpolated at
    frame ``i * speed`` (zero past the last frame) and band ``min(j * warp, M - 1)``."""
    m = x.shape[1]
    bands = np.minimum(np.arange(m) * warp, m - 1)
    along_mel = np.stack([np.interp(bands, np.arange(m), row) for row in x])  # (n, M)
    padded = np.vstack([along_mel, np.zeros((1, m))])  # the frame past the end reads as 0
    n_out = int(np.ceil(n / speed))
    times = np.arange(n_out) * speed
    return np.stack([np.interp(times, np.arange(n + 1), col) for col in padded.T], axis=1)


@pytest.mark.parametrize(
    "speed,warp", [(1.0, 1.0), (1.0, 0.88), (1.0, 1.12), (0.9, 1.06), (1.1, 1.0)]
)
def test_stretch_against_numpy(speed: float, warp: float) -> None:
    gen = torch.Generator().manual_seed(1)
    frames = torch.tensor([30, 17])
    feats = torch.randn(2, 30, 40, generator=gen)
    feats[1, 17:] = 0.0  # padding
    out, new = stretch_features(feats, frames, speed=speed, warp=warp)
    for i, n in enumerate(frames.tolist()):
        ref = _stretch_reference(feats[i, :n].double().numpy(), n, speed, warp)
        assert new[i] == len(ref)
        np.testing.assert_allclose(out[i, : len(ref)].numpy(), ref, atol=5e-5)  # float32 grid
        assert not out[i, len(ref) :].any()
    if speed == warp == 1.0:
        assert torch.equal(out, feats)  # the identity, exactly


def _model(classes: int = 4) -> SpeechClassifier:
    torch.manual_seed(0)
    config = SpeechModelConfig(d_model=32, num_heads=2, d_ff=64, dropout=0.0)
    return SpeechClassifier(config, classes).eval()


def _waves(count: int = 5) -> list[np.ndarray]:
    """Tones of random pitch and length in a little noise (the model need not be trained)."""
    rng = np.random.default_rng(0)
    waves = []
    for _ in range(count):
        t = np.arange(rng.integers(1500, 8000)) / 8000
        tone = 0.3 * np.sin(2 * np.pi * rng.uniform(150, 900) * t) + rng.normal(0, 0.02, len(t))
        waves.append(tone.astype(np.float32))
    return waves


@torch.no_grad()
def _by_hand(model: SpeechClassifier, wave: np.ndarray, mel: MelConfig, views) -> torch.Tensor:
    """One clip alone, each view stretched and classified, probabilities averaged: ``(C,)``."""
    feats, frames = batch_features(*pad_waves([wave], mel), mel)
    probs = [
        torch.softmax(model(*stretch_features(feats, frames, speed=s, warp=w)), -1)[0]
        for s, w in views
    ]
    return torch.stack(probs).mean(0)


def test_tta_against_per_clip_predictions() -> None:
    model, mel, waves = _model(), MelConfig(trim_db=25.0, top_db=45.0), _waves()
    plain = predict_waves(model, waves, mel)
    single = predict_waves(model, waves, mel, views=tta_views("none"))
    assert torch.equal(plain, single)  # TTA with the one view (1, 1) is the plain prediction
    views = (*TTA_PRESETS["speed"], *TTA_PRESETS["vtlp"])
    got = predict_waves(model, waves, mel, views=views, batch_size=2)
    for i, w in enumerate(waves):
        torch.testing.assert_close(plain[i], _by_hand(model, w, mel, [(1.0, 1.0)]))
        torch.testing.assert_close(got[i], _by_hand(model, w, mel, views), atol=1e-5, rtol=1e-4)


def _score_by_hand(probs: np.ndarray, criterion: str) -> float:
    """float64 numpy: mutual information of clip and class, or mean log largest probability."""
    if criterion == "confidence":
        return float(np.mean(np.log(probs.max(axis=1))))
    mean = probs.mean(axis=0)
    entropy_of_mean = -np.sum(mean * np.log(mean))
    mean_entropy = -np.mean(np.sum(probs * np.log(probs), axis=1))
    return float(entropy_of_mean - mean_entropy)


@pytest.mark.parametrize("criterion", ["information", "confidence"])
def test_speaker_warp_matches_brute_force(criterion: str) -> None:
    model, mel, waves = _model(), MelConfig(), _waves(6)
    candidates = (0.85, 0.95, 1.0, 1.1, 1.2)
    views = ((1.0, 0.94), (1.0, 1.06))
    scores, by_factor = {}, {}
    for a in candidates:
        by_factor[a] = torch.stack(
            [_by_hand(model, w, mel, [(s, v * a) for s, v in views]) for w in waves]
        )
        scores[a] = _score_by_hand(by_factor[a].double().numpy(), criterion)
    best = max(scores, key=scores.__getitem__)
    probs, chosen = adapt_speaker(
        model, waves, mel, views=views, candidates=candidates, criterion=criterion
    )
    assert chosen.warp == best
    assert chosen.scores == pytest.approx(scores, abs=1e-4)
    torch.testing.assert_close(probs, by_factor[best], atol=1e-5, rtol=1e-4)
    if criterion == "confidence":
        return
    # Per speaker: each group gets its own choice, the same as adapting it alone.
    speakers = ["a", "b", "a", "b", "a", "b"]
    grouped, warps = predict_by_speaker(model, waves, speakers, mel, candidates=candidates)
    alone, b_warp = adapt_speaker(model, waves[1::2], mel, candidates=candidates)
    assert warps["b"] == b_warp.warp and set(warps) == {"a", "b"}
    torch.testing.assert_close(grouped[1::2], alone)
    assert score_predictions(torch.eye(4)) == pytest.approx(np.log(4))


def test_bad_values_name_the_option() -> None:
    model, mel, waves = _model(), MelConfig(), _waves(2)
    with pytest.raises(ValueError, match=r"tta must be one of none, speed, vtlp, got 'loud'"):
        tta_views("loud")
    with pytest.raises(ValueError, match="warp must be a number > 0, got 0"):
        stretch_features(torch.zeros(1, 5, 40), torch.tensor([5]), warp=0)
    with pytest.raises(ValueError, match="speed must be a number > 0"):
        stretch_features(torch.zeros(1, 5, 40), torch.tensor([5]), speed=-1.0)
    with pytest.raises(ValueError, match="views must hold at least one"):
        predict_waves(model, waves, mel, views=())
    with pytest.raises(ValueError, match=r"views\[1\]: speed and warp must be finite and > 0"):
        check_views([(1.0, 1.0), (1.0, float("nan"))])
    with pytest.raises(ValueError, match="candidates must be finite warp factors > 0, got"):
        adapt_speaker(model, waves, mel, candidates=(1.0, -0.9))
    with pytest.raises(ValueError, match="candidates must hold at least one"):
        adapt_speaker(model, waves, mel, candidates=())
    with pytest.raises(ValueError, match="waves must hold at least one clip"):
        adapt_speaker(model, [], mel)
    with pytest.raises(ValueError, match="criterion must be one of information, confidence"):
        adapt_speaker(model, waves, mel, criterion="likely")
    with pytest.raises(ValueError, match="speakers must name one speaker per clip: 1 for 2"):
        predict_by_speaker(model, waves, ["a"], mel)


@pytest.mark.skipif(not espeak_available(), reason="espeak-ng is not installed")
def test_tta_and_adapt_speaker_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    digits = tmp_path / "digits"
    synthesize_digits(digits, per_digit=1, digits=[0, 1, 2])
    out = tmp_path / "run"
    argv = ["train", "speech", "--data", str(digits), "--split", "speaker", "--adapt-speaker"]
    argv += ["--steps", "1", "--batch-size", "8", "--out", str(out), "--threads", "1", "--json"]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["tta"] == "speed" and summary["adapt_speaker"]  # new-speakers' default
    assert set(summary["speaker_warps"]) == {"dora"}
    assert summary["ensemble"] == 3 and [m["seed"] for m in summary["members"]] == [0, 1, 2]
    loaded = load_speech_checkpoint(out / "checkpoint.pt")
    assert isinstance(loaded.model, SpeechEnsemble) and len(loaded.model.members) == 3
    assert loaded.mel.speaker_norm and loaded.speaker_mean is not None
    ckpt = str(out / "checkpoint.pt")
    files = sorted(str(p) for p in digits.glob("*_dora_*.wav"))
    assert main(["recognize", "--checkpoint", ckpt, "--json", "--adapt-speaker", *files]) == 0
    captured = capsys.readouterr()
    rows = [json.loads(r) for r in captured.out.splitlines()]
    assert len(rows) == 3 and len({r["speaker_warp"] for r in rows}) == 1
    assert "speaker warp" in captured.err
    assert main(["recognize", "--checkpoint", ckpt, "--tta", "none", *files]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 3
    assert main(["recognize", "--checkpoint", ckpt, "--tta", "loud", *files]) == 2
    assert "--tta: invalid choice: 'loud'" in capsys.readouterr().err
    assert main([*argv[:-1], "--ensemble", "0"]) == 2
    assert "--ensemble" in capsys.readouterr().err
    # One readable file among bad ones: the results stay one per file, in order, and the one
    # clip is recognized on its own (it says nothing about its speaker's mean or warp).
    bad = tmp_path / "empty.wav"
    bad.write_bytes(b"")
    assert main(["recognize", "--checkpoint", ckpt, "--adapt-speaker", str(bad), files[0]]) == 1
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert len(lines) == 2 and lines[0] == "" and lines[1] in {"0", "1", "2"}
    assert "needs several files" in captured.err and "file 1:" in captured.err


def test_speaker_offsets_and_speaker_norm() -> None:
    mel, waves = MelConfig(speaker_norm=True), _waves(4)
    speakers = ["a", "b", "a", None]
    offsets = speaker_offsets(waves, speakers, mel)
    for i, who in enumerate(speakers):
        frames = [
            log_mel(torch.from_numpy(w), mel)[0].double().numpy()
            for w, s in zip(waves, speakers, strict=True)
            if s == who
        ]
        np.testing.assert_allclose(offsets[i].numpy(), np.concatenate(frames).mean(0), atol=1e-4)
    # A speaker-normalised model: the speaker's mean comes off before the clip's normalisation.
    model = _model()
    by_speaker, _ = predict_by_speaker(model, waves, speakers, mel, adapt=False)
    feats, frames = batch_features(*pad_waves([waves[1]], mel), mel, offsets=offsets[1:2])
    alone = torch.softmax(model(feats, frames), -1)[0]
    torch.testing.assert_close(by_speaker[1], alone, atol=1e-5, rtol=1e-4)
    # Training keeps the training speakers' means averaged, each speaker weighted alike.
    config = SpeechTrainConfig(batch_size=4, valid_fraction=0.0)
    result = train_speech(
        waves,
        [0, 1, 0, 1],
        2,
        mel=mel,
        model_config=SpeechModelConfig(d_model=32, num_heads=2, d_ff=64),
        config=config,
        max_steps=1,
        speakers=speakers,
    )
    expected = np.mean([offsets[0].numpy(), offsets[1].numpy(), offsets[3].numpy()], axis=0)
    assert result.speaker_mean is not None
    np.testing.assert_allclose(result.speaker_mean.numpy(), expected, atol=1e-5)
    with pytest.raises(ValueError, match="speakers must name the speaker of each of waves"):
        train_speech(
            waves,
            [0, 1, 0, 1],
            2,
            mel=mel,
            model_config=SpeechModelConfig(),
            config=SpeechTrainConfig(),
            max_steps=1,
        )


def test_ensemble_members_must_share_a_config_and_speaker_norm_needs_offsets() -> None:
    other = SpeechClassifier(SpeechModelConfig(d_model=48, num_heads=2, d_ff=64), 4)
    with pytest.raises(ValueError, match="share one SpeechModelConfig"):
        SpeechEnsemble([_model(), other])
    with pytest.raises(ValueError, match="offsets must give each clip's speaker mean"):
        predict_waves(_model(), _waves(2), MelConfig(speaker_norm=True))
