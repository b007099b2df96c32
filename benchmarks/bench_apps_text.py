"""Text classification on SST-2: our EncoderClassifier vs TF-IDF + logistic regression.

Both are trained in the same run on ``../shared/data/sst2`` (train 6,920 / dev 872 / test
1,821 sentences, Kim 2014's ``stsa.binary`` files; not part of the repository, so the
benchmark says so and stops when the folder is missing):

* **TF-IDF + LR** (scikit-learn): word uni- and bigrams, sublinear term frequency, the inverse
  regularisation ``C`` chosen on dev from {0.3, 1, 3, 10, 30}, then scored on test;
* **ours**: :func:`multihead.train.textclass.train_text_classifier` with its defaults (the
  same recipe `multihead train textclass` runs: an ensemble of up to five encoders with a
  linear n-gram term, from seeds ``seed ..``, each keeping its best epoch on dev,
  probabilities averaged; fewer members when the 300-s budget runs out), scored on test; each
  member's own test accuracy is printed too, for the single-model comparison.

Reported: dev and test accuracy, macro-F1 and training time, and the time ratio. The machine
is shared; the load average is printed next to the times.

Run: ``python benchmarks/bench_apps_text.py [--data DIR] [--threads N] [--seed S] [--seeds K]
[--ensemble M]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from multihead.bench.harness import markdown_table
from multihead.tasks.textclass import TextExample, read_examples
from multihead.train.textclass import (
    TextClassConfig,
    TextClassifier,
    classification_metrics,
    load_text_classifier,
)
from multihead.train.textclass import train_text_classifier as train_ours

ROOT = Path(__file__).resolve().parents[1]
# ../shared next to the checkout; a git worktree one level deeper finds it one further up.
CANDIDATES = [up / "shared" / "data" / "sst2" for up in (ROOT.parent, ROOT.parent.parent)]
DEFAULT_DATA = next((c for c in CANDIDATES if c.exists()), CANDIDATES[0])
C_GRID = (0.3, 1.0, 3.0, 10.0, 30.0)


def _load() -> str:
    return "load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def tfidf_baseline(
    train: list[TextExample], dev: list[TextExample], test: list[TextExample]
) -> dict[str, float]:
    """Fit TF-IDF + logistic regression, ``C`` picked on dev; accuracies, macro-F1, seconds."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    labels = sorted({e.label for e in train})
    index = {label: i for i, label in enumerate(labels)}

    def y(examples: list[TextExample]) -> list[int]:
        return [index[e.label] for e in examples]

    start = time.perf_counter()
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
    x_train = vectorizer.fit_transform([e.text for e in train])
    x_dev = vectorizer.transform([e.text for e in dev])
    fitted = []
    for c in C_GRID:
        model = LogisticRegression(C=c, max_iter=2000).fit(x_train, y(train))
        fitted.append((float(model.score(x_dev, y(dev))), c, model))
    seconds = time.perf_counter() - start
    # Ties on dev go to the larger C (weaker regularisation), as the grid runs upwards.
    _, c, model = max(fitted, key=lambda f: (f[0], f[1]))
    dev_m = classification_metrics(y(dev), model.predict(x_dev).tolist(), len(labels))
    x_test = vectorizer.transform([e.text for e in test])
    test_m = classification_metrics(y(test), model.predict(x_test).tolist(), len(labels))
    # Not a fair number (chosen on test): how much the baseline varies with C, for context.
    oracle = max(float(m.score(x_test, y(test))) for _, _, m in fitted)
    return {
        "dev": dev_m["accuracy"],
        "test": test_m["accuracy"],
        "test_f1": test_m["macro_f1"],
        "seconds": seconds / len(C_GRID),  # one fit, like our one training run
        "C": c,
        "oracle_test": oracle,
    }


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="first seed of ours")
    parser.add_argument("--seeds", type=int, default=1, help="train ours this many times")
    parser.add_argument("--ensemble", type=int, help="models per run of ours (default: ours')")
    parser.add_argument("--quick", action="store_true", help="accepted for benchmarks/run.py")
    args = parser.parse_args(argv)
    files = [args.data / f"stsa.binary.{split}" for split in ("train", "dev", "test")]
    if not all(f.exists() for f in files):
        return f"SST-2 not found under {args.data} (it lives in ../shared/data, outside the repo)\n"
    torch.set_num_threads(args.threads)
    train, dev, test = (read_examples(f) for f in files)
    print(f"before: {_load()}", file=sys.stderr)
    base = tfidf_baseline(train, dev, test)
    print(f"tf-idf: test {base['test']:.4f} in {base['seconds']:.1f} s; {_load()}", file=sys.stderr)
    rows = [
        [
            "TF-IDF (1-2 grams) + LR, C={:g}".format(base["C"]),
            f"{base['dev']:.2%}",
            f"{base['test']:.2%}",
            f"{base['test_f1']:.4f}",
            f"{base['seconds']:.1f}",
            "1.00x",
        ]
    ]
    accuracies, singles = [], []
    default = TextClassConfig()
    size = args.ensemble or default.ensemble
    for run in range(args.seeds):
        seed = args.seed + run * size  # runs use disjoint seeds
        with tempfile.TemporaryDirectory() as out:
            ours = train_ours(
                train,
                dev,
                test=test,
                config=TextClassConfig(seed=seed, ensemble=size),
                out_dir=out,
                log=lambda line: print(line, file=sys.stderr),
            )
            # Each member alone on test: the single-model numbers of the same run.
            clf = load_text_classifier(ours.checkpoint)
            for member in clf.models:
                one = TextClassifier(member, clf.tokenizer, clf.labels, clf.max_len)
                predicted, _ = one.predict([e.text for e in test])
                hits = sum(p == e.label for p, e in zip(predicted, test, strict=True))
                singles.append(hits / len(test))
        assert ours.test is not None
        accuracies.append(ours.test["accuracy"])
        print(f"ours, seed {seed}: test {accuracies[-1]:.4f}; {_load()}", file=sys.stderr)
        rows.append(
            [
                f"EncoderClassifier, ensemble of {len(ours.members)}, seeds {seed}.."
                f"{seed + len(ours.members) - 1} ({ours.model_config['num_encoder_layers']} "
                f"layers, d={ours.model_config['d_model']}, best epochs "
                + ", ".join(f"{m['best_epoch']}/{m['epochs_run']}" for m in ours.members)
                + "; members alone on test "
                + ", ".join(f"{a:.2%}" for a in singles[-len(ours.members) :])
                + ")",
                f"{ours.valid['accuracy']:.2%}",
                f"{ours.test['accuracy']:.2%}",
                f"{ours.test['macro_f1']:.4f}",
                f"{ours.train_seconds:.1f}",
                f"{ours.train_seconds / base['seconds']:.1f}x",
            ]
        )
    load = _load()
    table = markdown_table(
        ["model", "dev acc", "test acc", "test macro-F1", "train s", "time vs TF-IDF"], rows
    )
    mean = sum(accuracies) / len(accuracies)
    single = sum(singles) / len(singles)
    verdict = "above" if mean > base["test"] else "NOT above"
    return (
        f"{table}\n\nOurs (mean test accuracy over {len(accuracies)} run(s), {mean:.2%}; its "
        f"{len(singles)} members alone average {single:.2%}) is "
        f"**{verdict}** the TF-IDF baseline ({mean - base['test']:+.2%}); the baseline's best "
        f"test accuracy over its C grid (chosen on test, for context only) is "
        f"{base['oracle_test']:.2%}. TF-IDF time is one fit (the grid's mean). Threads "
        f"{args.threads}; {load} (2-core machine, shared).\n"
    )


if __name__ == "__main__":
    print(main(sys.argv[1:]))
