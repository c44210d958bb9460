"""The one check of image arguments used by every runtime module (detectors, crops, paste-back, Transfer)."""

from __future__ import annotations

import numpy as np

SHAPES = "HxW (gray), HxWx3 (BGR) or HxWx4 (BGRA)"


def check_image(image) -> np.ndarray:
    """Validate a uint8 gray/BGR/BGRA image; an HxWx1 image is returned as HxW. Raises ValueError."""
    if image is None:
        raise ValueError(f"image is None; pass a uint8 array, {SHAPES}")
    if not isinstance(image, np.ndarray):
        raise ValueError(f"image must be a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 (0-255, OpenCV's convention), got dtype {image.dtype}; convert with "
                         "np.clip(x, 0, 255).astype(np.uint8), or (x * 255) first for floats in [0, 1]")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (3, 4))):
        raise ValueError(f"image must be {SHAPES}, got shape {image.shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"image is empty: shape {image.shape}")
    return image


def to_bgr(image) -> np.ndarray:
    """A contiguous BGR copy or view of a checked gray, BGR or BGRA image."""
    import cv2

    image = check_image(image)
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    return np.ascontiguousarray(image)


def to_gray(image) -> np.ndarray:
    """A contiguous gray copy or view of a checked gray, BGR or BGRA image."""
    import cv2

    image = check_image(image)
    if image.ndim == 2:
        return np.ascontiguousarray(image)
    return cv2.cvtColor(image, cv2.COLOR_BGRA2GRAY if image.shape[2] == 4 else cv2.COLOR_BGR2GRAY)
