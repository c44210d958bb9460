"""Fit a face's exposure to the training data's, and its change back to the face's own.

The generators learn their change on FER2013, whose faces are mostly well exposed: a dim,
low-contrast face (a dark stage, darker skin in poor light) is outside what they saw, and a
change learned in absolute grey levels lands on it as a bright, high-contrast patch. So each
crop whose brightness lies outside FER2013's usual range, or whose contrast is below a typical
FER2013 face's, is brought into that range by a linear map ``x' = (x - mean) * k + mean'`` before the generator,
and the generator's change is divided by ``k`` afterwards: a dim face gets a change of its own
contrast. Crops already inside the range pass unchanged (k = 1, no shift), so well-lit faces
are edited exactly as before.

The range is that of FER2013 Training inside :func:`face_ellipse` (28,709 faces, grey levels):
mean brightness 141 (5th-95th percentile 80-193), contrast (std) median 41 (5th-95th
percentile 24-64).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Face brightness (mean grey level inside the ellipse) the generator is fed: FER2013's 5th-95th percentile.
MEAN_RANGE = (80.0, 193.0)
#: Faces flatter than FER2013's typical face (its median grey-level std inside the ellipse) are
#: stretched to it: the generator's change is then, relative to the face's contrast, what it is on
#: a typical training face. Stretching only to the 5th percentile (24) still left dim faces a change
#: 1.2x larger, relative to their contrast, than well-lit ones (astronaut darkened to a third).
TYPICAL_STD = 41.0
#: Below this contrast a crop is flat (a blank or blurred patch): its gain is capped here.
MIN_STD = 4.0


def face_ellipse(size: int) -> np.ndarray:
    """(size, size) bool: the face inside a crop framed like FER2013's (centre slightly below the middle)."""
    r = (np.arange(size) + 0.5) / size
    yy, xx = np.meshgrid(r, r, indexing="ij")
    return ((xx - 0.5) / 0.30) ** 2 + ((yy - 0.55) / 0.38) ** 2 <= 1.0


@dataclass
class ExposureFit:
    """Per-crop linear maps into the training range: ``fitted = (pixels - mean) * gain + target_mean``."""

    mean: np.ndarray
    gain: np.ndarray
    target_mean: np.ndarray

    def apply(self, pixels: np.ndarray) -> np.ndarray:
        """(N, C, s, s) float pixels -> the same faces at the training data's exposure (not clipped)."""
        return (pixels - self.mean[:, None, None, None]) * self.gain[:, None, None, None] + self.target_mean[:, None, None, None]

    def change_back(self, change: np.ndarray) -> np.ndarray:
        """A change made on the fitted crops (grey levels, or model units) -> the same change at the faces' own contrast."""
        return change / self.gain.reshape(-1, *([1] * (change.ndim - 1)))


def fit_exposure(pixels: np.ndarray) -> ExposureFit:
    """The map that brings each crop's face brightness and contrast into FER2013's range.

    ``pixels``: (N, C, s, s) grey levels (0-255; colour crops are measured on their mean channel).
    """
    pixels = np.asarray(pixels, np.float32)
    if pixels.ndim != 4:
        raise ValueError(f"crops must be (N, C, s, s), got shape {pixels.shape}")
    inside = pixels.mean(axis=1)[:, face_ellipse(pixels.shape[-1])]
    mean, std = inside.mean(axis=1), inside.std(axis=1)
    gain = (np.maximum(std, TYPICAL_STD) / np.maximum(std, MIN_STD)).astype(np.float32)  # >= 1: only flat faces are stretched
    # Brightness: the stretched face's mean moves into range; a face already in range keeps its own.
    target_mean = np.clip(mean, *MEAN_RANGE).astype(np.float32)
    return ExposureFit(mean.astype(np.float32), gain, target_mean)
