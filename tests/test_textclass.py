"""Text classification on the user's files: readers, tokenizer, training, `train textclass`,
`classify`. Everything runs on small generated data (no ../shared)."""

from __future__ import annotations

import io
import json
import sys
import warnings
from itertools import pairwise
from pathlib import Path

import pytest
import torch

pytest.importorskip("tokenizers")

from multihead.cli import main
from multihead.modules import EncoderClassifier, TransformerConfig
from multihead.tasks.textclass import (
    TextDataWarning,
    TextExample,
    check_labels,
    generated_examples,
    read_examples,
    split_examples,
    write_label_first,
)
from multihead.tasks.tokenize import WordPieceTokenizer
from multihead.train.checkpoint import load_checkpoint, save_checkpoint
from multihead.train.textclass import (
    TextClassConfig,
    classification_metrics,
    load_text_classifier,
    train_text_classifier,
)
from multihead.train.textmodel import (
    NgramEncoderClassifier,
    fit_mixing_weights,
    text_model_loss,
    text_model_optimizer,
)

# Small and quick: about 2 s of training on one thread.
TINY = TextClassConfig(
    d_model=32, num_heads=2, d_ff=64, dropout=0.1, word_dropout=0.0, lr=3e-3, epochs=5,
    patience=5, batch_size=16, ema_decay=0.9, ensemble=2,
)  # fmt: skip
EXPECTED = [("good film", "1"), ("a, quoted; text", "0"), ("dull", "0")]


# ------------------------------------------------------------------------------ readers


def _write(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


@pytest.mark.parametrize(
    ("name", "content", "fmt"),
    [
        ("d.tsv", "sentence\tlabel\ngood film\t1\na, quoted; text\t0\ndull\t0\n", "auto"),
        ("d.txt", "label\ttext\n1\tgood film\n0\ta, quoted; text\n0\tdull\n", "auto"),
        ("d.csv", 'text,label\ngood film,1\n"a, quoted; text",0\ndull,0\n', "auto"),
        ("d.dat", 'id,label,review\n7,1,good film\n8,0,"a, quoted; text"\n9,0,dull\n', "csv"),
        ("d.txt", "1 good film\n0 a, quoted; text\n\n0 dull\n", "auto"),
        ("d.tsv", "1 good film\n0   a, quoted; text\n0 dull", "label-first"),
    ],
)
def test_file_formats(tmp_path: Path, name: str, content: str, fmt: str) -> None:
    examples = read_examples(_write(tmp_path / name, content), format=fmt)
    assert [(e.text, e.label) for e in examples] == EXPECTED


def test_folder_of_class_folders(tmp_path: Path) -> None:
    for label, texts in (("neg", ["dull", "awful  plot\n"]), ("pos", ["good film"])):
        (tmp_path / label).mkdir()
        for i, text in enumerate(texts):
            _write(tmp_path / label / f"{i}.txt", text)
    examples = read_examples(tmp_path)
    assert sorted((e.text, e.label) for e in examples) == [
        ("awful plot", "neg"),
        ("dull", "neg"),
        ("good film", "pos"),
    ]
    assert all(e.where.endswith(".txt") for e in examples)


def test_columns_chosen_by_flag(tmp_path: Path) -> None:
    path = _write(tmp_path / "d.tsv", "a\tb\tc\nx\tgood film\t1\ny\tdull\t0\n")
    with pytest.raises(ValueError, match="--text-column"):
        read_examples(path)
    examples = read_examples(path, text_column="b", label_column="c")
    assert [(e.text, e.label) for e in examples] == [("good film", "1"), ("dull", "0")]
    with pytest.raises(ValueError, match="no column 'zz'"):
        read_examples(path, text_column="zz", label_column="c")


def test_stray_bytes_are_replaced_and_counted(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "d.txt", b"1 caf\xe9 au lait\n0 ok \xff\xfe here\n1 fine \xef\xbf\xbd\n"
    )
    with pytest.warns(TextDataWarning, match=r"3 invalid UTF-8 byte sequence\(s\).*line 1"):
        examples = read_examples(path)
    assert [e.text for e in examples] == [
        "caf\ufffd au lait",
        "ok \ufffd\ufffd here",
        "fine \ufffd",
    ]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("text\tlabel\ngood\t1\nbad\t0\textra\n", r"d.tsv line 3: 3 field\(s\), the header has 2"),
        ("text\tlabel\ngood\t1\n\t0\n", r"d.tsv line 3: the text is empty"),
        ("text\tlabel\ngood\t\n", r"d.tsv line 2: the label is empty"),
        ("1 good\n0\n", r"d.tsv line 2: the text is empty \(label '0'\)"),
    ],
)
def test_bad_lines_name_the_line(tmp_path: Path, content: str, message: str) -> None:
    fmt = "label-first" if "\t" not in content else "auto"
    path = _write(tmp_path / "d.tsv", content)
    with pytest.raises(ValueError, match=message):
        read_examples(path, format=fmt)


def test_bad_lines_skipped_on_request(tmp_path: Path) -> None:
    path = _write(tmp_path / "d.tsv", "text\tlabel\ngood\t1\nbad\t0\tx\n\t1\nfine\t0\n")
    with pytest.warns(TextDataWarning, match=r"skipped 2 bad line\(s\).*line 3.*line 4"):
        examples = read_examples(path, on_bad_line="skip")
    assert [e.text for e in examples] == ["good", "fine"]


def test_single_class_and_unseen_labels() -> None:
    train = [TextExample("a", "x", "t line 1"), TextExample("b", "x", "t line 2")]
    with pytest.raises(ValueError, match=r"single class.*'x'"):
        check_labels(train)
    train.append(TextExample("c", "y", "t line 3"))
    test = [TextExample("d", "y", "s line 1"), TextExample("e", "z", "s line 2")]
    with pytest.raises(ValueError, match=r"s line 2 \(test\): label 'z' never occurs"):
        check_labels(train, [("test", test)])


def test_split_is_seeded_and_stratified() -> None:
    data = generated_examples(200, seed=3)
    a_train, a_held = split_examples(data, 0.25, seed=1)
    b_train, b_held = split_examples(data, 0.25, seed=1)
    assert a_held == b_held and a_train == b_train
    assert sorted(map(id, a_train + a_held)) == sorted(map(id, data))
    for label in ("pos", "neg"):
        share = sum(e.label == label for e in a_held) / sum(e.label == label for e in data)
        assert abs(share - 0.25) < 0.02


# ------------------------------------------------------------------------------ tokenizer, metrics


def test_tokenizer_round_trips_through_json() -> None:
    texts = [e.text for e in generated_examples(100)]
    tok = WordPieceTokenizer.train(texts, vocab_size=120)
    again = WordPieceTokenizer.from_json(tok.to_json())
    ids, mask = tok.encode_batch([*texts[:5], "unseenword qqq"], max_len=6)
    ids2, mask2 = again.encode_batch([*texts[:5], "unseenword qqq"], max_len=6)
    assert torch.equal(ids, ids2) and torch.equal(mask, mask2)
    assert ids.shape[1] <= 6 and bool(mask[:, 0].all())
    assert bool((ids[~mask] == tok.pad_id).all())
    words, piece_word = tok.word_index("The film, unbelievably", max_len=20)
    assert words == ["The", "film", ",", "unbelievably"]
    assert piece_word[:3] == [0, 1, 2] and set(piece_word[3:]) == {3}


def test_metrics_match_scikit_learn() -> None:
    metrics = pytest.importorskip("sklearn.metrics")
    gen = torch.Generator().manual_seed(0)
    y = torch.randint(0, 4, (300,), generator=gen).tolist()
    p = torch.randint(0, 4, (300,), generator=gen).tolist()
    p = [3 if v == 2 else v for v in p]  # class 2 never predicted: its F1 is 0
    ours = classification_metrics(y, p, 4)
    assert ours["accuracy"] == pytest.approx(metrics.accuracy_score(y, p))
    assert ours["macro_f1"] == pytest.approx(
        metrics.f1_score(y, p, average="macro", zero_division=0)
    )
    assert ours["confusion"] == metrics.confusion_matrix(y, p, labels=range(4)).tolist()


# ------------------------------------------------------------------------------ training


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("tc")
    data = generated_examples(360, seed=0)
    result = train_text_classifier(
        data[:300], data[300:], test=generated_examples(100, seed=9), config=TINY, out_dir=out
    )
    return result, out


def test_training_lowers_the_loss_and_learns(trained) -> None:
    result, _ = trained
    losses = [row["train_loss"] for row in result.history]
    assert losses[-1] < 0.7 * losses[0]
    assert result.test is not None and result.test["accuracy"] >= 0.8
    assert result.class_weights is None  # generated classes are balanced


def test_checkpoint_loads_and_predicts(trained) -> None:
    result, _ = trained
    ckpt = load_checkpoint(result.checkpoint)  # weights_only=True inside
    assert ckpt["kind"] == "textclass" and isinstance(ckpt["tokenizer"], str)
    clf = load_text_classifier(result.checkpoint)
    texts = [e.text for e in generated_examples(100, seed=9)]
    labels, probs = clf.predict(texts)
    assert set(labels) <= {"neg", "pos"} and probs.shape == (100, 2)
    assert torch.allclose(probs.sum(-1), torch.ones(100))
    # The saved weights are the ones that were evaluated.
    truth = [e.label for e in generated_examples(100, seed=9)]
    accuracy = sum(a == b for a, b in zip(labels, truth, strict=True)) / 100
    assert accuracy == pytest.approx(result.test["accuracy"])
    words, weights = clf.word_attention("the film is not good")
    assert words == ["the", "film", "is", "not", "good"]
    assert weights.shape == (5,) and float(weights.sum()) == pytest.approx(1.0, abs=1e-5)


def test_ensemble_averages_its_members(trained) -> None:
    result, _ = trained
    ckpt = load_checkpoint(result.checkpoint)
    assert len(ckpt["models"]) == 2 and len(result.members) == 2
    assert [m["seed"] for m in result.members] == [0, 1]
    assert [m["mixing_weights"] for m in result.members] == [
        s["mix"].tolist() for s in ckpt["models"]
    ]
    clf = load_text_classifier(result.checkpoint)
    texts = ["the film is good", "the plot is dull and slow", "x"]
    _, probs = clf.predict(texts)
    # Reference: each member rebuilt from the saved weights as a plain EncoderClassifier (the
    # encoder part) plus its n-gram term summed by hand in float64, each times its saved
    # mixing weight, softmax, then the mean.
    config = TransformerConfig.from_dict(ckpt["model_config"])
    ids, mask = clf.tokenizer.encode_batch(texts, max_len=clf.max_len)
    member_probs = []
    for state in ckpt["models"]:
        state = dict(state)
        table, (a, b) = state.pop("ngrams.weight").double(), state.pop("mix").tolist()
        model = EncoderClassifier(config).eval()
        model.load_state_dict(state)
        with torch.no_grad():
            logits = a * model(ids, mask).double()
        logits += b * _ngram_reference(ids, mask, table, ckpt["ngram_buckets"])
        member_probs.append(torch.softmax(logits, -1))
    assert not torch.allclose(member_probs[0], member_probs[1])  # different seeds
    torch.testing.assert_close(probs.double(), sum(member_probs) / 2, atol=1e-5, rtol=0)


def _ngram_reference(
    ids: torch.Tensor, mask: torch.Tensor, table: torch.Tensor, buckets: int
) -> torch.Tensor:
    # fastText's bag, text by text: the mean of the rows of its unigrams and hashed bigrams.
    vocab, out = table.shape[0] - buckets, []
    for row, real in zip(ids, mask, strict=True):
        pieces = row[real].tolist()
        rows = pieces + [vocab + (a * 1_000_003 + b) % buckets for a, b in pairwise(pieces)]
        out.append(sum(table[r].double() for r in rows) / len(rows))
    return torch.stack(out)


@pytest.mark.parametrize(("n", "buckets"), [(1, 7), (2, 5), (9, 64)])
def test_ngram_term_against_a_plain_reference(n: int, buckets: int) -> None:
    torch.manual_seed(n)
    config = TransformerConfig(vocab_size=11, d_model=8, num_heads=2, d_ff=16, num_classes=3)
    model = NgramEncoderClassifier(config, buckets).double().eval()
    encoder_only = EncoderClassifier(config).double().eval()
    encoder_only.load_state_dict(
        {k: v for k, v in model.state_dict().items() if k not in ("ngrams.weight", "mix")}
    )
    ids = torch.randint(0, 11, (3, n + 2))
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[0, n:] = False  # row 0 keeps its first n tokens; the rest is padding
    # A new model is the encoder alone: the n-gram weights start at zero.
    torch.testing.assert_close(model(ids, mask), encoder_only(ids, mask))
    with torch.no_grad():
        model.ngrams.weight.normal_()
    expected = _ngram_reference(ids, mask, model.ngrams.weight, buckets)
    torch.testing.assert_close(model.ngram_logits(ids, mask), expected)
    torch.testing.assert_close(model(ids, mask), encoder_only(ids, mask) + expected)
    model.get_buffer("mix").copy_(torch.tensor([0.5, 2.0]))
    torch.testing.assert_close(model(ids, mask), 0.5 * encoder_only(ids, mask) + 2 * expected)
    # Padding changes nothing: row 0 alone, unpadded, gives the same logits.
    torch.testing.assert_close(model(ids[:1, :n]), model(ids, mask)[:1])
    weight = model.ngrams.weight.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda w: torch.func.functional_call(model, {"ngrams.weight": w}, (ids, mask)), (weight,)
    )
    with pytest.raises(ValueError, match="ngram_buckets"):
        NgramEncoderClassifier(config, 0)


def test_ngram_term_has_its_own_loss_and_learning_rate() -> None:
    torch.manual_seed(0)
    config = TransformerConfig(vocab_size=11, d_model=8, num_heads=2, d_ff=16, num_classes=2)
    model = NgramEncoderClassifier(config, 5).double().eval()
    with torch.no_grad():
        model.ngrams.weight.normal_()
    ids, target = torch.randint(0, 11, (4, 6)), torch.tensor([0, 1, 1, 0])
    mask = torch.ones_like(ids, dtype=torch.bool)
    loss = text_model_loss(
        model, ids, mask, target, weight=None, label_smoothing=0.0, ngram_loss_weight=0.5
    )

    def nll(logits: torch.Tensor) -> torch.Tensor:  # mean -log softmax, by hand
        return (logits.exp().sum(-1).log() - logits[torch.arange(4), target]).mean()

    ngram = _ngram_reference(ids, mask, model.ngrams.weight, 5)
    torch.testing.assert_close(loss, nll(model(ids, mask)) + 0.5 * nll(ngram))
    opt = text_model_optimizer(model, lr=1e-3, weight_decay=0.1, ngram_lr_scale=30.0)
    groups = [(g["lr"], g["weight_decay"], len(g["params"])) for g in opt.param_groups]
    assert groups[-1] == (pytest.approx(0.03), 0.0, 1)
    assert opt.param_groups[-1]["params"][0] is model.ngrams.weight
    assert sum(n for *_, n in groups) == len(list(model.parameters()))


def test_mixing_weights_match_logistic_regression() -> None:
    # Two classes: the cross-entropy of a * enc + b * ngram is a logistic regression without
    # intercept on the two logit differences, which scikit-learn solves independently.
    linear_model = pytest.importorskip("sklearn.linear_model")
    g = torch.Generator().manual_seed(0)
    enc, ngram = torch.randn(400, 2, generator=g) * 3, torch.randn(400, 2, generator=g)
    truth = 0.4 * (enc[:, 1] - enc[:, 0]) + 2.0 * (ngram[:, 1] - ngram[:, 0])
    target = (torch.rand(400, generator=g) < torch.sigmoid(truth)).long()
    a, b = fit_mixing_weights(enc, ngram, target).tolist()
    features = torch.stack([enc[:, 1] - enc[:, 0], ngram[:, 1] - ngram[:, 0]], 1).double()
    ref = linear_model.LogisticRegression(C=1e8, fit_intercept=False, tol=1e-10, max_iter=1000)
    ref.fit(features.numpy(), target.numpy())
    assert [a, b] == pytest.approx(ref.coef_[0].tolist(), rel=1e-3)
    # Separable data cannot send them to infinity: both stay within [e^-4, e^4].
    a, b = fit_mixing_weights(enc, ngram, (truth > 0).long()).tolist()
    assert max(a, b) <= 54.6 and min(a, b) > 0


def test_old_single_model_checkpoint_still_loads(trained, tmp_path: Path) -> None:
    result, _ = trained
    ckpt = load_checkpoint(result.checkpoint)
    del ckpt["models"]  # as written before ensembles: only "model"
    save_checkpoint(tmp_path / "old.pt", ckpt)
    clf = load_text_classifier(tmp_path / "old.pt")
    assert len(clf.models) == 1
    # From before the n-gram term: no "ngram_buckets", plain encoder weights.
    del ckpt["ngram_buckets"]
    ckpt["model"] = {k: v for k, v in ckpt["model"].items() if k not in ("ngrams.weight", "mix")}
    save_checkpoint(tmp_path / "older.pt", ckpt)
    clf = load_text_classifier(tmp_path / "older.pt")
    assert type(clf.models[0]) is EncoderClassifier
    assert clf.predict(["the film is good"])[0][0] in ("neg", "pos")
    with pytest.raises(ValueError, match="ngram_buckets"):
        TextClassConfig(ngram_buckets=-1)
    with pytest.raises(ValueError, match="ensemble"):
        TextClassConfig(ensemble=0)


def test_imbalanced_classes_get_weights(tmp_path: Path) -> None:
    data = generated_examples(300, seed=4)
    pos = [e for e in data if e.label == "pos"][:120]
    neg = [e for e in data if e.label == "neg"][:30]
    config = TextClassConfig(d_model=16, num_heads=2, d_ff=32, epochs=1, ensemble=1)
    result = train_text_classifier(pos + neg, pos[:5] + neg[:5], config=config, out_dir=tmp_path)
    assert result.class_weights == pytest.approx([150 / (2 * 30), 150 / (2 * 120)])
    # Two classes: the default 2**18 bigram buckets.
    assert load_checkpoint(result.checkpoint)["ngram_buckets"] == 2**18


def test_many_classes_get_fewer_ngram_buckets(tmp_path: Path) -> None:
    # The n-gram table has buckets x classes weights; above 8 classes it stays at 2**21.
    data = [TextExample(f"text {i % 20} word {i}", f"c{i % 20}", f"line {i}") for i in range(80)]
    config = TextClassConfig(d_model=16, num_heads=2, d_ff=32, epochs=1, ensemble=1)
    result = train_text_classifier(data[:60], data[60:], config=config, out_dir=tmp_path)
    assert load_checkpoint(result.checkpoint)["ngram_buckets"] == 2**21 // 20
    assert len(load_text_classifier(result.checkpoint).labels) == 20


def test_ensemble_stops_adding_members_when_time_is_up(tmp_path: Path) -> None:
    data = generated_examples(120, seed=5)
    config = TextClassConfig(d_model=16, num_heads=2, d_ff=32, epochs=1, max_seconds=1e-6)
    result = train_text_classifier(data[:100], data[100:], config=config, out_dir=tmp_path)
    assert len(result.members) == 1  # the first member always runs
    assert len(load_text_classifier(result.checkpoint).models) == 1


def test_missing_tokenizers_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tokenizers", None)
    with pytest.raises(ImportError, match=r"multihead\[apps\]"):
        WordPieceTokenizer.train(["a b"], vocab_size=10)


# ------------------------------------------------------------------------------ commands


def _stdin(monkeypatch: pytest.MonkeyPatch, data: bytes) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))


def test_train_textclass_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    train = write_label_first(tmp_path / "train.txt", generated_examples(120, seed=1))
    (tmp_path / "test.txt").write_bytes(b"pos the film is gr\xe9at\nneg the plot is dull\n")
    out = tmp_path / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = main(
            ["train", "textclass", "--data", str(train), "--test", str(tmp_path / "test.txt"),
             "--out", str(out), "--epochs", "2", "--d-model", "16", "--heads", "2", "--ensemble", "2", "--json"]
        )  # fmt: skip
    assert code == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert summary["examples"] == {"train": 108, "valid": 12, "test": 2}
    assert [m["seed"] for m in summary["members"]] == [0, 1]
    assert summary["test"]["n"] == 2 and 0 <= summary["test"]["accuracy"] <= 1
    assert "1 invalid UTF-8 byte" in captured.err
    for name in ("checkpoint.pt", "report.json", "confusion.png", "attention.png"):
        assert (out / name).stat().st_size > 0
    assert json.loads((out / "report.json").read_text())["labels"] == ["neg", "pos"]


def test_train_textclass_refuses_bad_usage(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    train = write_label_first(tmp_path / "train.txt", generated_examples(40))
    test = _write(tmp_path / "test.txt", "pos fine\nmeh whatever\n")
    args = ["train", "textclass", "--data", str(train), "--test", str(test)]
    assert main([*args, "--out", str(tmp_path / "r")]) == 2
    assert "test.txt line 2 (test): label 'meh'" in capsys.readouterr().err
    assert main(["train", "textclass", "--data", str(train), "--steps", "5"]) == 2
    assert "--steps do(es) not apply" in capsys.readouterr().err
    assert main(["train", "textclass"]) == 2
    assert "needs --data" in capsys.readouterr().err


def test_classify_command(trained, monkeypatch, capsys) -> None:
    result, _ = trained
    ckpt = str(result.checkpoint)
    assert main(["classify", "--checkpoint", ckpt, "the film is great", "this movie is awful"]) == 0
    assert capsys.readouterr().out.split() == ["pos", "neg"]

    _stdin(monkeypatch, b"the plot is superb\n\n  \nqqq zzz\nthe ending is dull \xff\n")
    assert main(["classify", "--checkpoint", ckpt, "--json"]) == 1
    captured = capsys.readouterr()
    rows = [json.loads(line) for line in captured.out.splitlines()]
    assert [r.get("label") for r in rows] == ["pos", None, None, None, "neg"]
    assert rows[1]["error"] == "the text is empty" and "vocabulary" in rows[3]["error"]
    assert sum(rows[0]["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    assert "line 2: the text is empty" in captured.err and "line 4:" in captured.err

    _stdin(monkeypatch, b"the film is great\n\nthe plot is bad\n")
    assert main(["classify", "--checkpoint", ckpt]) == 1
    assert capsys.readouterr().out == "pos\n\nneg\n"


def test_classify_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["classify", "--checkpoint", str(tmp_path / "none.pt"), "x"]) == 2
    assert "no checkpoint" in capsys.readouterr().err
    other = save_checkpoint(tmp_path / "other.pt", {"kind": "seq2seq", "task": "dates"})
    assert main(["classify", "--checkpoint", str(other), "x"]) == 2
    assert "not a text classifier" in capsys.readouterr().err
