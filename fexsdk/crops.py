"""Square face crops framed like FER2013, the data the generator was trained on.

The generator only does well on faces cropped the way its training faces were,
so a detector's box is not used as is: :func:`square_box` turns it into a square
centred on the face, ``max(w, h) * (1 + margin)`` wide and shifted down by
``offset * side``. The defaults (and the per-detector ``crop_margin`` /
``crop_offset`` attributes in :mod:`fexsdk.faces`) were measured by placing
FER2013 PublicTest faces in larger frames, detecting them, and finding the
margin and offset that map each detector's box back onto the original 48x48
square; see ``docs/detectors.md`` and ``benchmarks/detectors.py``.

:func:`extract_crops` cuts the squares out (padding by border replication where
a square runs off the image) and scales them to the model's input size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from fexsdk.images import check_image

__all__ = [
    "DEFAULT_MARGIN",
    "DEFAULT_OFFSET",
    "CropBox",
    "crop_box_for",
    "extract_crops",
    "square_box",
]

#: Used for a detector without ``crop_margin``/``crop_offset`` (and for plain boxes with no
#: detector): FER2013 crops are framed almost exactly like OpenCV's Haar frontal-face box.
#: See docs/detectors.md.
DEFAULT_MARGIN = 0.0
#: Vertical shift of the square's centre, as a fraction of its side (+ = down).
DEFAULT_OFFSET = 0.0


@dataclass(frozen=True)
class CropBox:
    """A square in image coordinates: top-left ``(x, y)`` and side ``size`` in pixels.

    It may extend beyond the image; :func:`extract_crops` pads such parts by
    border replication and :func:`fexsdk.paste.paste_back` clips them.
    """

    x: int
    y: int
    size: int

    def __post_init__(self) -> None:
        for name in ("x", "y", "size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise ValueError(f"CropBox.{name} must be an int, got {v!r}")
            object.__setattr__(self, name, int(v))
        if self.size < 1:
            raise ValueError(f"CropBox.size must be >= 1, got {self.size}")

    @property
    def x2(self) -> int:
        return self.x + self.size

    @property
    def y2(self) -> int:
        return self.y + self.size

    def as_xywh(self) -> tuple[int, int, int, int]:
        return (self.x, self.y, self.size, self.size)


def _xywh(box) -> tuple[float, float, float, float]:
    """Accept (x, y, w, h), a Face (anything with .box) or a CropBox."""
    if isinstance(box, CropBox):
        return box.as_xywh()
    inner = getattr(box, "box", None)
    if inner is not None:
        box = inner
    try:
        vals = tuple(float(v) for v in box)
    except TypeError as exc:
        raise ValueError(f"box must be (x, y, w, h) or a Face, got {box!r}") from exc
    if len(vals) != 4:
        raise ValueError(f"box must have 4 values (x, y, w, h), got {len(vals)}: {box!r}")
    if not all(math.isfinite(v) for v in vals):
        raise ValueError(f"box values must be finite, got {vals}")
    if vals[2] <= 0 or vals[3] <= 0:
        raise ValueError(f"box width and height must be > 0, got {vals}")
    return vals  # type: ignore[return-value]


def square_box(
    box,
    margin: float = DEFAULT_MARGIN,
    image_shape: Sequence[int] | None = None,
    *,
    offset: float = DEFAULT_OFFSET,
) -> CropBox:
    """The FER2013-like square crop for a face box.

    ``box`` is ``(x, y, w, h)`` (or a :class:`~fexsdk.faces.Face`). The square is
    centred on the box, ``max(w, h) * (1 + margin)`` wide (``margin > -1``;
    negative values crop tighter than the box), and its centre is moved down by
    ``offset * side`` (negative = up).

    By default the square keeps the face centred even where it runs off the
    image (the off-image part is padded by :func:`extract_crops`), which keeps
    the framing the generator was trained on. With ``image_shape`` (an image's
    ``.shape``) the square is instead moved the least distance that puts it
    inside the image, on each axis where it fits (on an axis where it does not
    fit it is centred on the image). Its size never changes.
    """
    x, y, w, h = _xywh(box)
    margin = float(margin)
    offset = float(offset)
    if not math.isfinite(margin) or margin <= -1.0:
        raise ValueError(f"margin must be a finite number > -1, got {margin}")
    if not math.isfinite(offset):
        raise ValueError(f"offset must be finite, got {offset}")
    side = max(w, h) * (1.0 + margin)
    size = max(1, int(round(side)))
    cx = x + w / 2.0
    cy = y + h / 2.0 + offset * side
    x0 = int(math.floor(cx - size / 2.0 + 0.5))
    y0 = int(math.floor(cy - size / 2.0 + 0.5))
    if image_shape is not None:
        if len(image_shape) < 2 or int(image_shape[0]) < 1 or int(image_shape[1]) < 1:
            raise ValueError(f"image_shape must be an image's shape (H, W[, C]), got {image_shape!r}")
        ih, iw = int(image_shape[0]), int(image_shape[1])
        x0 = _fit(x0, size, iw)
        y0 = _fit(y0, size, ih)
    return CropBox(x0, y0, size)


def _fit(start: int, size: int, limit: int) -> int:
    if size > limit:
        return (limit - size) // 2
    return min(max(start, 0), limit - size)


def crop_box_for(face, detector=None, image_shape: Sequence[int] | None = None) -> CropBox:
    """:func:`square_box` with the margin and offset measured for ``detector``.

    ``detector`` is a detector instance or class with ``crop_margin`` and
    ``crop_offset`` attributes (all of :mod:`fexsdk.faces` have them); where it
    lacks them, or is ``None``, the module defaults are used.
    """
    margin = getattr(detector, "crop_margin", DEFAULT_MARGIN)
    offset = getattr(detector, "crop_offset", DEFAULT_OFFSET)
    return square_box(face, margin, image_shape, offset=offset)


def _region(image: np.ndarray, box: CropBox) -> np.ndarray:
    """The box's pixels, with border replication where it leaves the image."""
    h, w = image.shape[:2]
    if box.x >= 0 and box.y >= 0 and box.x2 <= w and box.y2 <= h:
        return image[box.y : box.y2, box.x : box.x2]
    rows = np.clip(np.arange(box.y, box.y2), 0, h - 1)
    cols = np.clip(np.arange(box.x, box.x2), 0, w - 1)
    return image[rows[:, None], cols[None, :]]


_TO_GRAY = {1: None, 3: cv2.COLOR_BGR2GRAY, 4: cv2.COLOR_BGRA2GRAY}
_TO_RGB = {1: cv2.COLOR_GRAY2RGB, 3: cv2.COLOR_BGR2RGB, 4: cv2.COLOR_BGRA2RGB}


def extract_crops(image: np.ndarray, boxes: Sequence[CropBox], size: int, channels: int) -> np.ndarray:
    """Cut ``boxes`` out of ``image`` and scale each to ``size`` x ``size``.

    ``image`` is BGR uint8 ``HxWx3`` (gray ``HxW`` and BGRA ``HxWx4`` accepted).
    Returns uint8 ``(N, channels, size, size)``: gray (``cv2.COLOR_BGR2GRAY``)
    for ``channels=1``, RGB order for ``channels=3``. Parts of a box outside the
    image are filled by replicating the image's border. Shrinking uses
    ``INTER_AREA``, enlarging ``INTER_CUBIC``. No boxes gives ``(0, channels,
    size, size)``.
    """
    image = check_image(image)
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"size must be a positive int, got {size!r}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (gray) or 3 (RGB), got {channels!r}")
    size = int(size)
    nch = 1 if image.ndim == 2 else image.shape[2]
    boxes = list(boxes)
    out = np.empty((len(boxes), channels, size, size), dtype=np.uint8)
    for i, box in enumerate(boxes):
        if not isinstance(box, CropBox):
            raise ValueError(f"boxes[{i}] must be a CropBox, got {box!r}")
        region = np.ascontiguousarray(_region(image, box))
        if channels == 1:
            code = _TO_GRAY[nch]
            if code is not None:
                region = cv2.cvtColor(region, code)
        else:
            region = cv2.cvtColor(region, _TO_RGB[nch])
        if region.shape[0] != size:
            interp = cv2.INTER_AREA if region.shape[0] > size else cv2.INTER_CUBIC
            region = cv2.resize(region, (size, size), interpolation=interp)
        if channels == 1:
            out[i, 0] = region
        else:
            out[i] = region.transpose(2, 0, 1)
    return out
