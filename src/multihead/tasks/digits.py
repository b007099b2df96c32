"""The 8x8 handwritten digits bundled with scikit-learn, as tensors for a tiny vision model.

1,797 grey-scale images of 0-9 ship inside scikit-learn's wheel (``load_digits`` reads a
local file; nothing is downloaded), which makes a vision transformer over 64 pixels or 16
patches trainable in seconds. scikit-learn is an optional dependency and imported only when
the data is loaded: ``pip install 'multihead[digits]'``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from multihead.tasks.vocab import (
    _check_batch_request,
    _check_choice,
    _check_int,
    _config_or_default,
)

__all__ = ["NUM_CLASSES", "DigitsConfig", "DigitsTask", "load_digits_tensors"]

NUM_CLASSES = 10
DIGITS_SPLITS: tuple[str, ...] = ("train", "test")
# Pixel values in load_digits are counts of set pixels in a 4x4 block of a 32x32 bitmap.
_MAX_PIXEL = 16.0


def load_digits_tensors() -> tuple[torch.Tensor, torch.Tensor]:
    """All 1,797 images as ``(N, 1, 8, 8)`` float32 in [0, 1] and labels ``(N,)`` int64.

    Example:
        >>> images, labels = load_digits_tensors()
        >>> images.shape, labels.shape, float(images.max())
        (torch.Size([1797, 1, 8, 8]), torch.Size([1797]), 1.0)
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise ImportError(
            "the digits task needs scikit-learn, which is not installed: "
            "pip install 'multihead[digits]'"
        ) from exc
    bunch = load_digits()
    images = torch.tensor(np.asarray(bunch.images) / _MAX_PIXEL, dtype=torch.float32)  # (N, 8, 8)
    labels = torch.tensor(np.asarray(bunch.target), dtype=torch.long)  # (N,)
    return images.unsqueeze(1), labels  # (N, 1, 8, 8)


@dataclass(frozen=True, kw_only=True)
class DigitsConfig:
    """Settings of :class:`DigitsTask`.

    Example:
        >>> DigitsConfig(test_fraction=0.25)
        DigitsConfig(seed=0, test_fraction=0.25)
    """

    # Seeds the train/test split.
    seed: int = 0
    # Share of each class held out for test; 0.2 leaves ~360 test images, ~36 per class.
    test_fraction: float = 0.2

    def __post_init__(self) -> None:
        _check_int("seed", self.seed, 0)
        if not isinstance(self.test_fraction, (int, float)) or isinstance(self.test_fraction, bool):
            raise TypeError(
                f"test_fraction must be a float, got {type(self.test_fraction).__name__}"
            )
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1), got {self.test_fraction}")


class DigitsTask:
    """A seeded, stratified train/test split of the scikit-learn digits.

    Every class keeps the same share in both splits (``round(n_class * test_fraction)`` test
    images each), so test accuracy is not skewed by an unlucky class balance.

    Shapes: ``B`` batch. Images are ``(B, 1, 8, 8)`` float32 in [0, 1]; labels ``(B,)`` int64.

    Example:
        >>> task = DigitsTask(DigitsConfig(seed=0))
        >>> x, y = task.split("test")
        >>> x.shape[1:], sorted(set(y.tolist())) == list(range(10))
        (torch.Size([1, 8, 8]), True)
        >>> xb, yb = task.get_batch("train", 32, torch.Generator().manual_seed(0))
        >>> xb.shape
        torch.Size([32, 1, 8, 8])
    """

    num_classes = NUM_CLASSES

    def __init__(self, config: DigitsConfig | None = None) -> None:
        self.config = config = _config_or_default(config, DigitsConfig)
        images, labels = load_digits_tensors()
        rng = np.random.default_rng(config.seed)
        labels_np = labels.numpy()
        test_idx: list[np.ndarray] = []
        train_idx: list[np.ndarray] = []
        for c in range(NUM_CLASSES):
            members = rng.permutation(np.flatnonzero(labels_np == c))
            n_test = round(len(members) * config.test_fraction)
            test_idx.append(members[:n_test])
            train_idx.append(members[n_test:])
        # Shuffle across classes so that slicing a split never yields one class only.
        order = {
            "train": torch.from_numpy(rng.permutation(np.concatenate(train_idx))),
            "test": torch.from_numpy(rng.permutation(np.concatenate(test_idx))),
        }
        self._splits = {name: (images[idx], labels[idx]) for name, idx in order.items()}

    def split(self, split: Literal["train", "test"]) -> tuple[torch.Tensor, torch.Tensor]:
        """All images ``(N, 1, 8, 8)`` and labels ``(N,)`` of ``split``.

        Example:
            >>> task = DigitsTask()
            >>> len(task.split("train")[0]) + len(task.split("test")[0])
            1797
        """
        _check_choice("split", split, DIGITS_SPLITS)
        return self._splits[split]

    def get_batch(
        self,
        split: Literal["train", "test"],
        batch_size: int,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``batch_size`` random images and labels of ``split``, drawn with replacement.

        Example:
            >>> x, y = DigitsTask().get_batch("test", 4, torch.Generator().manual_seed(0))
            >>> x.shape, y.shape
            (torch.Size([4, 1, 8, 8]), torch.Size([4]))
        """
        batch_size = _check_batch_request(batch_size, generator)
        images, labels = self.split(split)
        idx = torch.randint(0, len(labels), (int(batch_size),), generator=generator)  # (B,)
        return images[idx], labels[idx]
