"""A synthetic 'expression' data set for smoke runs and tests.

Each class draws a bright bar at its own position on a noisy face-like blob, so
a generator that really follows its target label must move the bar, and a
trivial oracle (:func:`oracle_predict`) can check it without a trained classifier.
"""

from __future__ import annotations

import numpy as np

from fexsdk.emotions import NUM_EMOTIONS
from fexsdk.training.data import FaceDataset


def _bar_rows(size: int, label: int) -> slice:
    band = size // (NUM_EMOTIONS + 1)
    top = band // 2 + label * band
    return slice(top, top + max(1, band // 2 + 1))


def make_synthetic(n: int = 512, image_size: int = 48, channels: int = 1, seed: int = 0, name: str = "synthetic") -> FaceDataset:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, NUM_EMOTIONS, n)
    yy, xx = np.mgrid[:image_size, :image_size]
    blob = 90 * np.exp(-(((xx - image_size / 2) / (image_size / 3)) ** 2 + ((yy - image_size / 2) / (image_size / 2.5)) ** 2))
    images = np.empty((n, channels, image_size, image_size), np.uint8)
    for i, label in enumerate(labels):
        img = 60 + blob + rng.normal(0, 8, (image_size, image_size))
        img[_bar_rows(image_size, int(label)), image_size // 6 : -image_size // 6] = 230
        images[i] = np.clip(img, 0, 255).astype(np.uint8)[None]
    return FaceDataset(images=images, labels=labels.astype(np.int64), name=name)


def oracle_predict(images: np.ndarray) -> np.ndarray:
    """Class of each synthetic image (N, C, S, S, any scale): the band with the brightest bar."""
    x = np.asarray(images, dtype=np.float32).mean(axis=1)
    size = x.shape[-1]
    scores = np.stack([x[:, _bar_rows(size, k), size // 6 : -size // 6].mean(axis=(1, 2)) for k in range(NUM_EMOTIONS)], 1)
    return scores.argmax(1)
