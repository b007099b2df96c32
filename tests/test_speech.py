"""Speech: WAV reading and resampling, the log-mel front end, the classifier, and the
``train speech`` / ``recognize`` commands on digits synthesized with espeak-ng.

References are independent of the code under test: analytic sines, scipy's polyphase
resampler, and a float64 numpy transcription of the STFT and the HTK mel filterbank.
"""

from __future__ import annotations

import json
import wave
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from multihead.cli import main
from multihead.tasks.features import (
    MelConfig,
    cmvn,
    floor_db,
    lifter_matrix,
    log_mel,
    mel_filterbank,
    normalise,
    trim_silence,
)
from multihead.tasks.speech import (
    SpeechExample,
    WavError,
    load_examples,
    read_wav,
    resample,
    scan_folder,
    split_examples,
)
from multihead.tasks.synth_digits import (
    espeak_available,
    synthesize_digits,
    synthetic_voices,
    voice_variety,
)
from multihead.train.speech import (
    AugmentConfig,
    SpeechClassifier,
    SpeechModelConfig,
    SpeechTrainConfig,
    augment_features,
    confusion_matrix,
    train_speech,
)


def _write_pcm(path: Path, x: np.ndarray, rate: int, width: int) -> Path:
    """Float ``(T, channels)`` in [-1, 1) -> PCM WAV, written by hand from the WAV spec."""
    scale = 2.0 ** (8 * width - 1)
    ints = np.round(x * (scale - 1)).astype(np.int64)
    if width == 1:
        raw = (ints + 128).astype(np.uint8).tobytes()
    else:
        as_bytes = (ints.reshape(-1, 1) >> (8 * np.arange(width))) & 0xFF  # little endian
        raw = as_bytes.astype(np.uint8).tobytes()
    with wave.open(str(path), "wb") as w:
        w.setnchannels(x.shape[1])
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(raw)
    return path


def _sine(rate: int, seconds: float, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return 0.5 * np.sin(2 * np.pi * freq * t)


# ----------------------------------------------------------------------------- reading


@pytest.mark.parametrize("width", [1, 2, 3, 4])
@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("rate", [8000, 16000])
def test_read_wav_formats(tmp_path: Path, width: int, channels: int, rate: int) -> None:
    mono = _sine(rate, 0.25)
    # Stereo: opposite halves of the amplitude in each channel, so the mix-down is the sine.
    x = mono[:, None] if channels == 1 else np.stack([1.5 * mono, 0.5 * mono], axis=1)
    got, got_rate = read_wav(_write_pcm(tmp_path / "a.wav", x, rate, width))
    assert got_rate == rate and got.dtype == np.float32 and got.shape == mono.shape
    np.testing.assert_allclose(got, mono, atol=2.5 / 2 ** (8 * width - 1) + 1e-6)


@pytest.mark.parametrize(("orig", "new"), [(8000, 16000), (16000, 8000), (22050, 16000)])
def test_resample_against_analytic_sines(orig: int, new: int) -> None:
    def one_second(rate: int) -> np.ndarray:
        t = np.arange(rate) / rate
        return np.sin(2 * np.pi * 1000 * t) + 0.5 * np.sin(2 * np.pi * 2500 * t + 1.0)

    y = resample(one_second(orig), orig, new)
    assert y.shape == (new,)
    middle = slice(new // 10, -new // 10)  # away from the zero-padded ends
    np.testing.assert_allclose(y[middle], one_second(new)[middle], atol=1e-3)


def test_resample_against_scipy() -> None:
    signal = pytest.importorskip("scipy.signal")
    x = np.random.default_rng(0).standard_normal(4000)
    # Band-limit to the lower half of the band, where both resamplers' filters are flat.
    x = signal.resample_poly(signal.resample_poly(x, 1, 2), 2, 1)
    y = resample(x, 8000, 16000)
    ref = signal.resample_poly(x, 2, 1)
    np.testing.assert_allclose(y[100:-100], ref[100:-100], atol=0.02 * np.abs(ref).max())


def _bad_files(folder: Path) -> dict[str, str]:
    """name -> a word the refusal must contain."""
    (folder / "1_x_0.wav").write_bytes(b"")
    (folder / "2_x_0.wav").write_bytes(b"just some text, not audio\n" * 4)
    good = _write_pcm(folder / "3_x_0.wav", _sine(8000, 1.0)[:, None], 8000, 2)
    (folder / "4_x_0.wav").write_bytes(good.read_bytes()[:3000])
    _write_pcm(folder / "5_x_0.wav", np.zeros((0, 1)), 8000, 2)
    _write_pcm(folder / "6_x_0.wav", _sine(8000, 3.0)[:, None], 8000, 2)
    return {
        "1_x_0.wav": "empty",
        "2_x_0.wav": "not a WAV",
        "4_x_0.wav": "truncated",
        "5_x_0.wav": "0 seconds",
        "6_x_0.wav": "long",
    }


def test_bad_files_refused_one_by_one(tmp_path: Path) -> None:
    expected = _bad_files(tmp_path)
    for name, word in expected.items():
        with pytest.raises(WavError, match=word):
            read_wav(tmp_path / name, max_seconds=2.0)
    examples, skipped = scan_folder(tmp_path)
    assert not skipped and len(examples) == 6
    waves, kept, refused = load_examples(examples, 8000, max_seconds=2.0)
    assert [Path(e.path).name for e in kept] == ["3_x_0.wav"] and len(waves) == 1
    assert len(refused) == 5 and all(any(n in r for n in expected) for r in refused)


# ----------------------------------------------------------------------------- labels, splits


def test_scan_folder_regex_and_subfolders(tmp_path: Path) -> None:
    for name in ("7_george_12.wav", "yes_ann_3.wav", "README.wav"):
        (tmp_path / name).touch()
    examples, skipped = scan_folder(tmp_path)
    assert [(e.label, e.speaker, e.index) for e in examples] == [
        ("7", "george", 12),
        ("yes", "ann", 3),
    ]
    assert len(skipped) == 1 and "README.wav" in skipped[0]
    examples, _ = scan_folder(tmp_path, r"_(\d+)\.wav$")
    assert sorted(e.label for e in examples) == ["12", "3"]
    with pytest.raises(ValueError, match="group"):
        scan_folder(tmp_path, r"\d+")
    nested = tmp_path / "sub"
    for label in ("up", "down"):
        (nested / label).mkdir(parents=True)
        (nested / label / "a_b_1.wav").touch()
    assert sorted(e.label for e in scan_folder(nested)[0]) == ["down", "up"]


def test_splits() -> None:
    ex = [
        SpeechExample(f"{d}_{s}_{i}.wav", str(d), s, i)
        for d in range(3)
        for s in ("ann", "bob", "cy")
        for i in range(8)
    ]
    train, test = split_examples(ex, "index")
    assert {e.index for e in test} == set(range(5)) and {e.index for e in train} == {5, 6, 7}
    train, test = split_examples(ex, "speaker")
    assert {e.speaker for e in test} == {"cy"} and "cy" not in {e.speaker for e in train}
    assert {e.speaker for e in split_examples(ex, "speaker", test_speaker="ann")[1]} == {"ann"}
    with pytest.raises(ValueError, match="test-speaker"):
        split_examples(ex, "speaker", test_speaker="zed")
    train, test = split_examples(ex, "random", seed=1)
    assert len(test) == round(0.2 * len(ex)) and not set(train) & set(test)
    with pytest.raises(ValueError, match="index"):
        split_examples([SpeechExample("a.wav", "a", None, None)] * 2, "index")


# ----------------------------------------------------------------------------- features


def _numpy_log_mel(x: np.ndarray, c: MelConfig) -> np.ndarray:
    """Float64 transcription: reflect-padded centred frames, periodic Hann, |rfft|^2, HTK mel
    triangles built with a loop, log(. + 1e-6)."""
    half = c.n_fft // 2
    padded = np.pad(x.astype(np.float64), half, mode="reflect")
    n_frames = 1 + len(x) // c.hop_length
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(c.n_fft) / c.n_fft)
    frames = np.stack(
        [padded[i * c.hop_length : i * c.hop_length + c.n_fft] for i in range(n_frames)]
    )
    power = np.abs(np.fft.rfft(frames * hann, axis=1)) ** 2  # (F, n_fft/2 + 1)
    top = c.sample_rate / 2 if c.f_max is None else c.f_max
    mel = lambda f: 2595 * np.log10(1 + f / 700)  # noqa: E731
    points = 700 * (10 ** (np.linspace(mel(c.f_min), mel(top), c.n_mels + 2) / 2595) - 1)
    freqs = np.arange(c.n_fft // 2 + 1) * c.sample_rate / c.n_fft
    fb = np.zeros((c.n_mels, len(freqs)))
    for m in range(c.n_mels):
        lo, peak, hi = points[m], points[m + 1], points[m + 2]
        for k, f in enumerate(freqs):
            if lo < f <= peak:
                fb[m, k] = (f - lo) / (peak - lo)
            elif peak < f < hi:
                fb[m, k] = (hi - f) / (hi - peak)
    return np.log(power @ fb.T + 1e-6)


@pytest.mark.parametrize(
    "config",
    [MelConfig(), MelConfig(sample_rate=16000, n_fft=512, hop_length=160, n_mels=64, f_max=7000.0)],
)
def test_log_mel_against_numpy(config: MelConfig) -> None:
    x = np.random.default_rng(0).standard_normal(config.sample_rate // 3) * 0.1
    x += _sine(config.sample_rate, 1 / 3, 700.0)
    got = log_mel(torch.tensor(x, dtype=torch.float64), config)[0].numpy()
    np.testing.assert_allclose(got, _numpy_log_mel(x, config), atol=1e-6, rtol=1e-6)
    assert mel_filterbank(config).shape == (config.n_mels, config.n_fft // 2 + 1)


def test_cmvn_against_numpy() -> None:
    x = torch.randn(3, 20, 5, dtype=torch.float64) * 4 + 2
    lengths = torch.tensor([20, 7, 1])
    y = cmvn(x, lengths, eps=0.0 + 1e-12)
    for i, n in enumerate(lengths.tolist()):
        ref = x[i, :n].numpy()
        ref = (ref - ref.mean(0)) / np.sqrt(ref.var(0) + 1e-12)
        np.testing.assert_allclose(y[i, :n].numpy(), ref, atol=1e-6)
        assert not y[i, n:].any()


def test_utterance_norm_against_numpy() -> None:
    x = torch.randn(3, 20, 5, dtype=torch.float64) * 4 + 2
    x[:, :, 0] += 10.0  # one loud band: its lead over the others must survive
    lengths = torch.tensor([20, 7, 1])
    y = normalise(x, lengths, "utterance", eps=1e-12)
    for i, n in enumerate(lengths.tolist()):
        ref = x[i, :n].numpy()
        ref = (ref - ref.mean()) / np.sqrt(ref.var() + 1e-12)
        np.testing.assert_allclose(y[i, :n].numpy(), ref, atol=1e-6)
        assert not y[i, n:].any()
    torch.testing.assert_close(normalise(x, lengths, "band"), cmvn(x, lengths))
    with pytest.raises(ValueError, match="mode"):
        normalise(x, lengths, "global")
    with pytest.raises(ValueError, match="norm"):
        MelConfig(norm="global")
    old = MelConfig().to_dict()
    for name in ("norm", "lifter", "top_db"):
        del old[name]  # a checkpoint from before these options
    assert MelConfig.from_dict(old) == MelConfig(norm="band", lifter=0, top_db=None)


def test_floor_db_against_numpy() -> None:
    x = np.log(np.random.default_rng(2).uniform(1e-9, 1.0, (2, 30, 8)))
    got = floor_db(torch.tensor(x), 30.0).numpy()
    db = 10 * np.log10(np.exp(x))  # the same values in decibels
    ref_db = np.maximum(db, db.max(axis=(1, 2), keepdims=True) - 30.0)
    np.testing.assert_allclose(10 * np.log10(np.exp(got)), ref_db, atol=1e-9)
    with pytest.raises(ValueError, match="top_db"):
        MelConfig(top_db=0.0)


def test_trim_silence_keeps_the_word() -> None:
    config = MelConfig(trim_db=30.0)
    word = _sine(8000, 0.3)  # 2400 samples, from sample 1600 to 4000
    quiet = np.random.default_rng(3).standard_normal(1600) * 1e-3  # -51 dB below the sine
    x = torch.tensor(np.concatenate([np.zeros(1600), word, quiet]), dtype=torch.float32)
    got = trim_silence(x, config)
    # One hop (80 samples) of margin either side of the word, and nothing more.
    torch.testing.assert_close(got, x[1520:4080])
    assert trim_silence(x, MelConfig()) is x


@pytest.mark.parametrize("keep", [1, 13, 40])
def test_lifter_against_scipy_dct(keep: int) -> None:
    from scipy.fft import dct, idct

    x = np.random.default_rng(1).standard_normal((7, 40))
    c = dct(x, type=2, norm="ortho", axis=1)
    c[:, keep:] = 0.0
    ref = idct(c, type=2, norm="ortho", axis=1)
    got = torch.tensor(x, dtype=torch.float32) @ lifter_matrix(40, keep)
    np.testing.assert_allclose(got.numpy(), ref, atol=1e-5)
    with pytest.raises(ValueError, match="lifter"):
        MelConfig(lifter=-1)


# ----------------------------------------------------------------------------- model


@pytest.mark.parametrize("lengths", [[37, 37], [37, 12], [9, 1]])
def test_padding_never_changes_logits(lengths: list[int]) -> None:
    torch.manual_seed(0)
    model = SpeechClassifier(SpeechModelConfig(d_model=32, num_heads=2, d_ff=64), 4).eval()
    feats = torch.randn(2, max(lengths) + 5, 40)
    for i, n in enumerate(lengths):
        feats[i, n:] = 0.0
    batched = model(feats, torch.tensor(lengths))
    for i, n in enumerate(lengths):
        alone = model(feats[i : i + 1, :n], torch.tensor([n]))
        torch.testing.assert_close(batched[i : i + 1], alone, atol=1e-5, rtol=1e-5)


def test_augment_identity_and_shapes() -> None:
    gen = torch.Generator().manual_seed(0)
    feats, frames = torch.randn(3, 30, 40), torch.tensor([30, 21, 8])
    feats[1, 21:] = 0
    feats[2, 8:] = 0
    plain = AugmentConfig(speed=(1.0, 1.0), warp=(1.0, 1.0), time_masks=0, freq_masks=0)
    out, new = augment_features(feats, frames, plain, gen)
    torch.testing.assert_close(out, feats, atol=1e-5, rtol=1e-5)
    assert new.tolist() == frames.tolist()
    out, new = augment_features(feats, frames, AugmentConfig(speed=(0.8, 0.8)), gen)
    assert new.tolist() == [38, 27, 10] and out.shape == (3, 38, 40)
    # The channel curve is smooth over the bands, the same in every frame, absent in padding.
    channel = replace(plain, channel=0.5)
    out, _ = augment_features(feats, frames, channel, gen)
    curve = out - feats  # (B, F, M)
    torch.testing.assert_close(curve[1, :21], curve[1, :1].expand(21, 40))
    assert not curve[1, 21:].any() and curve[0].abs().max() <= 1.5 + 1e-5
    assert confusion_matrix(torch.tensor([1, 1]), torch.tensor([0, 1]), 3).sum() == 2


# ----------------------------------------------------------------------------- synthesized

needs_espeak = pytest.mark.skipif(not espeak_available(), reason="espeak-ng is not installed")


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    # --threads and the training test set torch's global thread count; give it back.
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("digits")
    synthesize_digits(folder, per_digit=2, digits=[0, 1, 2, 3])
    return folder


@needs_espeak
def test_synthesized_digits_read_back(digits: Path) -> None:
    examples, skipped = scan_folder(digits)
    assert not skipped and len(examples) == 4 * 4 * 2
    waves, kept, refused = load_examples(examples, 8000)
    assert not refused and all(0.1 < len(w) / 8000 < 3.0 for w in waves)
    assert {e.speaker for e in kept} == {"alan", "bea", "carl", "dora"}


@needs_espeak
def test_synthetic_voices_say_any_label() -> None:
    assert len({v for _, v in voice_variety(30)}) == 30
    with pytest.raises(ValueError, match="count"):
        voice_variety(10_000)
    waves, labels = synthetic_voices(["7", "yes"], voices=2, per_label=1, sample_rate=8000)
    assert labels == ["7", "yes", "7", "yes"]
    # Trimmed to the word: a spoken digit lasts well under a second.
    assert all(w.dtype == np.float32 and 0.1 < len(w) / 8000 < 1.2 for w in waves)


@needs_espeak
def test_training_lowers_the_loss(digits: Path) -> None:
    examples, _ = scan_folder(digits)
    waves, kept, _ = load_examples(examples, 8000)
    labels = [int(e.label) for e in kept]
    config = SpeechTrainConfig(
        max_epochs=20, batch_size=8, lr=3e-3, warmup_epochs=0, valid_fraction=0.0
    )
    torch.set_num_threads(1)
    result = train_speech(
        waves,
        labels,
        4,
        mel=MelConfig(),
        model_config=SpeechModelConfig(d_model=32, num_heads=2, d_ff=64, dropout=0.0),
        config=config,
        max_steps=40,
    )
    losses = result.step_losses
    assert len(losses) == 40
    assert np.mean(losses[-8:]) < np.mean(losses[:8]) - 0.1


@needs_espeak
def test_train_and_recognize_commands(
    digits: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    argv = ["train", "speech", "--data", str(digits), "--split", "speaker"]
    argv += ["--steps", "2", "--batch-size", "8", "--out", str(out), "--threads", "1", "--json"]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["train_files"] == 24 and summary["test_files"] == 8
    assert {"checkpoint.pt", "metrics.json", "confusion.png"} <= {p.name for p in out.iterdir()}
    assert sum(map(sum, summary["confusion"])) == 8

    bad = tmp_path / "bad"
    bad.mkdir()
    expected = _bad_files(bad)
    files = [str(digits / "3_dora_1.wav"), *(str(bad / n) for n in sorted(expected))]
    files.append(str(digits / "0_alan_0.wav"))
    ckpt = str(out / "checkpoint.pt")
    code = main(["recognize", "--checkpoint", ckpt, *files])
    captured = capsys.readouterr()
    lines = captured.out.split("\n")[:-1]
    assert code == 1 and len(lines) == len(files)
    assert lines[0] in {"0", "1", "2", "3"} and lines[-1] in {"0", "1", "2", "3"}
    assert lines[1:5] == [""] * 4  # the 3-second 6_x_0.wav fits the checkpoint's 30 s limit
    assert lines[5] in {"0", "1", "2", "3"}
    for name, word in expected.items():
        if name != "6_x_0.wav":
            assert any(name in r and word in r for r in captured.err.splitlines())

    assert main(["recognize", "--checkpoint", ckpt, "--json", files[0], files[1]]) == 1
    rows = [json.loads(r) for r in capsys.readouterr().out.splitlines()]
    assert abs(sum(rows[0]["probabilities"].values()) - 1) < 1e-3 and "error" in rows[1]
    assert main(["recognize", "--checkpoint", ckpt, files[0]]) == 0
    assert main(["recognize", "--checkpoint", str(tmp_path / "none.pt"), files[0]]) == 2


@needs_espeak
def test_valid_speaker_and_extra_training(
    digits: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Speakers alan, bea, carl, dora; test dora (the last), validate on bea, train on alan and
    # carl plus the extra folder (two clips of a known label, one of a label never trained).
    extra = tmp_path / "extra"
    extra.mkdir()
    for name in ("0_alan_0.wav", "1_carl_1.wav"):
        (extra / name).write_bytes((digits / name).read_bytes())
    (extra / "9_zed_0.wav").write_bytes((digits / "0_alan_0.wav").read_bytes())
    out = tmp_path / "run"
    argv = ["train", "speech", "--data", str(digits), "--split", "speaker"]
    argv += ["--valid-speaker", "bea", "--extra-train", str(extra), "--synthetic-voices", "1"]
    argv += ["--steps", "2", "--batch-size", "8", "--out", str(out), "--threads", "1", "--json"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert (summary["train_files"], summary["valid_files"], summary["test_files"]) == (16, 8, 8)
    assert summary["extra_train_clips"] == 2 + 4 * 2  # 1 voice x 4 labels x 2 takes
    assert summary["recipe"] == "new-speakers"  # the default for --split speaker
    assert "9_zed_0.wav: its label is not among the training labels" in captured.err
    assert main([*argv[:6], "--valid-speaker", "dora", "--out", str(out)]) == 2
    assert "--valid-speaker: 'dora' is not one of the training speakers" in capsys.readouterr().err


def test_missing_folders_are_named_by_their_option_before_any_audio_is_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from multihead.cli import main

    data = tmp_path / "data"
    data.mkdir()  # empty: the missing --extra-train folder must be reported first
    missing = str(tmp_path / "nope")
    for flag in ("--extra-train", "--test-data"):
        argv = ["train", "speech", "--data", str(data), flag, missing, "--out", str(tmp_path / "r")]
        assert main(argv) == 2  # a usage error, like a missing --data
        assert f"{flag}: {missing!r} is not a folder" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match=r"^folder: .* is not a folder"):
        scan_folder(missing)
