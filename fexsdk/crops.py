"""Square face crops framed like FER2013, the data the generator was trained on.

The generator only does well on faces cropped the way its training faces were,
so a detector's box is not used as is: :func:`square_box` turns it into a square
centred on the face, ``max(w, h) * (1 + margin)`` wide and shifted down by
``offset * side``. The defaults (and the per-detector ``crop_margin`` /
``crop_offset`` attributes in :mod:`fexsdk.faces`) were measured by placing
FER2013 PublicTest faces in larger frames, detecting them, and finding the
margin and offset that map each detector's box back onto the original 48x48
square; see ``docs/detectors.md`` and ``benchmarks/detectors.py``.

FER2013's faces are upright, faces in photos are often tilted. Where the detector
gives eye landmarks (YuNet), :func:`crop_box_for` with ``align=True`` turns the
square by the eye line's angle (:func:`eye_angle`), so the crop is upright. The
whole crop geometry is one affine map, :meth:`CropBox.matrix`: :func:`extract_crops`
resamples through it, and the paste-backs go back through its inverse
(:func:`crop_to_image`). A square with ``angle == 0`` takes the plain slicing path,
so upright faces give exactly the unaligned result.

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
    "MIN_ALIGN_ANGLE",
    "CropBox",
    "box_window",
    "crop_box_for",
    "crop_to_image",
    "extract_crops",
    "eye_angle",
    "square_box",
]

#: Used for a detector without ``crop_margin``/``crop_offset`` (and for plain boxes with no
#: detector): FER2013 crops are framed almost exactly like OpenCV's Haar frontal-face box.
#: See docs/detectors.md.
DEFAULT_MARGIN = 0.0
#: Vertical shift of the square's centre, as a fraction of its side (+ = down).
DEFAULT_OFFSET = 0.0
#: Eye lines tilted less than this (degrees) are left unturned: resampling costs sharpness and
#: buys nothing there, and upright faces keep exactly the unaligned result.
MIN_ALIGN_ANGLE = 2.0


@dataclass(frozen=True)
class CropBox:
    """A square in image coordinates: top-left ``(x, y)`` and side ``size`` in pixels,
    turned by ``angle`` degrees about its centre.

    ``angle`` is the direction of the crop's horizontal axis in the image, clockwise on
    screen (image y points down): a face whose eye line rises to the right by 10 degrees
    has ``angle=-10``, and its crop comes out upright. The turned square is what the
    crop is cut from; since the face's blend ellipse fits inside the square at any angle,
    the paste-back still changes only pixels of the unturned ``(x, y, size)`` square.

    It may extend beyond the image; :func:`extract_crops` pads such parts by
    border replication and :func:`fexsdk.paste.paste_back` clips them.
    """

    x: int
    y: int
    size: int
    angle: float = 0.0

    def __post_init__(self) -> None:
        for name in ("x", "y", "size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise ValueError(f"CropBox.{name} must be an int, got {v!r}")
            object.__setattr__(self, name, int(v))
        if self.size < 1:
            raise ValueError(f"CropBox.size must be >= 1, got {self.size}")
        a = self.angle
        if isinstance(a, bool) or not isinstance(a, (int, float, np.integer, np.floating)) or not math.isfinite(a):
            raise ValueError(f"CropBox.angle must be a finite number of degrees, got {a!r}")
        object.__setattr__(self, "angle", float(a))

    def matrix(self) -> np.ndarray:
        """2x3 float64 affine map from image pixel coordinates to the crop's pixel coordinates at
        the box's own resolution (``size`` x ``size``); ``angle == 0`` is a plain shift by ``-(x, y)``.
        ``cv2.invertAffineTransform`` of it maps crop pixels back into the image."""
        half = (self.size - 1) / 2.0
        m = cv2.getRotationMatrix2D((self.x + half, self.y + half), self.angle, 1.0)
        m[:, 2] -= (self.x, self.y)
        return m

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
    angle: float = 0.0,
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

    ``angle`` (degrees, see :class:`CropBox`) turns the square about its centre; the
    ``offset`` then moves it along the turned square's own "down".
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
    rad = math.radians(float(angle))
    cx -= math.sin(rad) * offset * side
    cy = y + h / 2.0 + math.cos(rad) * offset * side
    x0 = int(math.floor(cx - size / 2.0 + 0.5))
    y0 = int(math.floor(cy - size / 2.0 + 0.5))
    if image_shape is not None:
        if len(image_shape) < 2 or int(image_shape[0]) < 1 or int(image_shape[1]) < 1:
            raise ValueError(f"image_shape must be an image's shape (H, W[, C]), got {image_shape!r}")
        ih, iw = int(image_shape[0]), int(image_shape[1])
        x0 = _fit(x0, size, iw)
        y0 = _fit(y0, size, ih)
    return CropBox(x0, y0, size, angle)


def _fit(start: int, size: int, limit: int) -> int:
    if size > limit:
        return (limit - size) // 2
    return min(max(start, 0), limit - size)


def eye_angle(landmarks) -> float:
    """The eye line's angle in degrees (``CropBox.angle``: clockwise on screen), from five
    YuNet landmarks (right eye, left eye, ...: the person's right eye is on the image's left).

    The result is folded into [-90, 90), so eyes given in the other order give the same
    angle; an upside-down face is therefore not turned upright (detectors do not find those).
    """
    pts = np.asarray(landmarks, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[0] < 2 or pts.shape[1] != 2 or not np.isfinite(pts[:2]).all():
        raise ValueError(f"landmarks must be (N >= 2, 2) finite (x, y) points, eyes first, got shape {pts.shape}")
    (rx, ry), (lx, ly) = pts[0], pts[1]
    if rx == lx and ry == ly:
        raise ValueError(f"the two eye landmarks are the same point ({rx}, {ry}); cannot tell the eye line")
    a = math.degrees(math.atan2(ly - ry, lx - rx))
    return (a + 90.0) % 180.0 - 90.0


def crop_box_for(face, detector=None, image_shape: Sequence[int] | None = None, *, align: bool = False) -> CropBox:
    """:func:`square_box` with the margin and offset measured for ``detector``.

    ``detector`` is a detector instance or class with ``crop_margin`` and
    ``crop_offset`` attributes (all of :mod:`fexsdk.faces` have them); where it
    lacks them, or is ``None``, the module defaults are used.

    ``align=True`` turns the square by :func:`eye_angle` of ``face.landmarks`` where the
    face has landmarks and the tilt is at least :data:`MIN_ALIGN_ANGLE`; otherwise (plain
    boxes, Haar faces, upright faces, landmarks with no usable eye line) the square is not turned.
    """
    margin = getattr(detector, "crop_margin", DEFAULT_MARGIN)
    offset = getattr(detector, "crop_offset", DEFAULT_OFFSET)
    angle = 0.0
    landmarks = getattr(face, "landmarks", None)
    if align and landmarks is not None:
        try:
            angle = eye_angle(landmarks)
        except ValueError:  # a detector's odd output (eyes on one point, NaN) must not fail the image
            angle = 0.0
        if abs(angle) < MIN_ALIGN_ANGLE:
            angle = 0.0
    return square_box(face, margin, image_shape, offset=offset, angle=angle)


def _region(image: np.ndarray, box: CropBox) -> np.ndarray:
    """The box's pixels, with border replication where it leaves the image."""
    h, w = image.shape[:2]
    if box.x >= 0 and box.y >= 0 and box.x2 <= w and box.y2 <= h:
        return image[box.y : box.y2, box.x : box.x2]
    rows = np.clip(np.arange(box.y, box.y2), 0, h - 1)
    cols = np.clip(np.arange(box.x, box.x2), 0, w - 1)
    return image[rows[:, None], cols[None, :]]


def box_window(box: CropBox, shape: Sequence[int]) -> tuple[slice, slice] | None:
    """The rows and columns of an image of ``shape`` that the (unturned) square covers, or
    None where it lies off the image: what a paste-back may change for this box."""
    h, w = int(shape[0]), int(shape[1])
    x0, y0, x1, y1 = max(box.x, 0), max(box.y, 0), min(box.x2, w), min(box.y2, h)
    if x1 <= x0 or y1 <= y0:
        return None
    return slice(y0, y1), slice(x0, x1)


def crop_to_image(plane: np.ndarray, box: CropBox, window: tuple[slice, slice], *, replicate: bool = False) -> np.ndarray:
    """Resample ``plane``, an array over the crop at the box's resolution (``size`` x ``size``
    [x C], C <= 4), onto the image pixels of ``window`` (from :func:`box_window`).

    Unturned boxes slice (no resampling, so the result is exact); turned ones go through the
    inverse of :meth:`CropBox.matrix` (bilinear). Image pixels that fall outside the turned
    square get 0, or with ``replicate`` the crop's nearest edge value.
    """
    rows, cols = window
    if plane.shape[0] != box.size or plane.shape[1] != box.size:
        raise ValueError(f"plane must cover the crop at the box's size {box.size}x{box.size}, got {plane.shape}")
    if box.angle == 0.0:
        return plane[rows.start - box.y : rows.stop - box.y, cols.start - box.x : cols.stop - box.x]
    m = box.matrix()
    m[:, 2] += m[:, :2] @ (cols.start, rows.start)  # the window's first pixel, not the image's
    border = cv2.BORDER_REPLICATE if replicate else cv2.BORDER_CONSTANT
    return cv2.warpAffine(np.ascontiguousarray(plane), m, (cols.stop - cols.start, rows.stop - rows.start),
                          flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=border, borderValue=0)


_TO_GRAY = {1: None, 3: cv2.COLOR_BGR2GRAY, 4: cv2.COLOR_BGRA2GRAY}
_TO_RGB = {1: cv2.COLOR_GRAY2RGB, 3: cv2.COLOR_BGR2RGB, 4: cv2.COLOR_BGRA2RGB}


def extract_crops(image: np.ndarray, boxes: Sequence[CropBox], size: int, channels: int) -> np.ndarray:
    """Cut ``boxes`` out of ``image`` and scale each to ``size`` x ``size``.

    ``image`` is BGR uint8 ``HxWx3`` (gray ``HxW`` and BGRA ``HxWx4`` accepted).
    Returns uint8 ``(N, channels, size, size)``: gray (``cv2.COLOR_BGR2GRAY``)
    for ``channels=1``, RGB order for ``channels=3``. Parts of a box outside the
    image are filled by replicating the image's border. A turned box (``angle != 0``) is
    first resampled upright at its own size through :meth:`CropBox.matrix` (bilinear).
    Shrinking uses ``INTER_AREA``, enlarging ``INTER_CUBIC``. No boxes gives ``(0, channels,
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
        if box.angle == 0.0:
            region = np.ascontiguousarray(_region(image, box))
        else:
            region = cv2.warpAffine(image, box.matrix(), (box.size, box.size), flags=cv2.INTER_LINEAR,
                                    borderMode=cv2.BORDER_REPLICATE)
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
