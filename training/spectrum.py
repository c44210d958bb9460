"""How much of an image's (or a change's) energy sits at period-2 frequencies: the checkerboard;
and how much at periods of a few pixels: the stripes and bars a generator draws for D's classifier.

Transposed convolutions with stride 2 leave a pattern that repeats every 2 pixels; in the
2-D spectrum it is the Nyquist row and column (frequency 1/2 cycle per pixel). Natural faces
have little energy there, so the share is a direct, model-free artefact measure.
"""

from __future__ import annotations

import numpy as np


def period2_share(images: np.ndarray) -> float:
    """Share of spectral energy (mean removed) at the Nyquist row or column, over a batch (N, [C,] H, W).

    Pass ``G(x) - x`` to measure a generator's change, or faces themselves for a reference value.
    """
    a = np.asarray(images, dtype=np.float64)
    if a.ndim < 2:
        raise ValueError(f"need images (..., H, W), got shape {a.shape}")
    h, w = a.shape[-2:]
    if h % 2 or w % 2:
        raise ValueError(f"height and width must be even to have a period-2 frequency, got {h}x{w}")
    a = a - a.mean(axis=(-2, -1), keepdims=True)
    power = np.abs(np.fft.fft2(a)) ** 2
    total = power.sum()
    if total == 0:
        return 0.0
    nyq = power[..., h // 2, :].sum() + power[..., :, w // 2].sum() - power[..., h // 2, w // 2].sum()
    return float(nyq / total)


def fine_share(images: np.ndarray, max_period: float = 6.0) -> float:
    """Share of spectral energy (mean removed) at periods of ``max_period`` pixels or less, over a batch.

    Radial frequency, so stripes in any direction count. A change that moves mouth and brows
    (features several pixels wide) has little energy there; thin stripes and bars have most of theirs.
    """
    a = np.asarray(images, dtype=np.float64)
    if a.ndim < 2:
        raise ValueError(f"need images (..., H, W), got shape {a.shape}")
    if not max_period >= 2:
        raise ValueError(f"max_period must be >= 2 pixels (the shortest period an image has), got {max_period}")
    h, w = a.shape[-2:]
    a = a - a.mean(axis=(-2, -1), keepdims=True)
    power = np.abs(np.fft.fft2(a)) ** 2
    total = power.sum()
    if total == 0:
        return 0.0
    fy, fx = np.fft.fftfreq(h)[:, None], np.fft.fftfreq(w)[None, :]
    fine = np.hypot(fy, fx) >= 1.0 / max_period
    return float(power[..., fine].sum() / total)
