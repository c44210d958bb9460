"""Paste-back for warp-head models: move the full-resolution face's own pixels.

A warp-head generator predicts, at 48x48, a displacement field ``flow`` and a
masked ``residual`` (what moving pixels cannot make). A field is smooth, so it can
be upsampled to a face of any size: the sharp colour face is resampled with
``cv2.remap`` and keeps its texture, and only the residual is added as shading
(to the luminance, like :func:`fexsdk.paste.paste_back`). A feathered ellipse
blends the result into the frame; pixels outside it stay bit-identical.

Flow convention (the model's, see :class:`fexsdk.metadata.ModelMetadata`): ``(dx, dy)``
in grid units, where [-1, 1] spans the face: output(p) = input(p + flow(p) * side / 2).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Real

import cv2
import numpy as np

from fexsdk.crops import CropBox
from fexsdk.images import check_image
from fexsdk.metadata import PIXEL_SCALE
from fexsdk.paste import DEFAULT_FEATHER, face_mask

__all__ = ["paste_warp", "flow_to_pixels"]

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def flow_to_pixels(flow: np.ndarray, side: int) -> np.ndarray:
    """(2, s, s) grid-unit flow -> (side, side, 2) displacement in pixels of a face ``side`` wide."""
    flow = np.asarray(flow, np.float32)
    if flow.ndim != 3 or flow.shape[0] != 2:
        raise ValueError(f"flow must have shape (2, s, s), got {flow.shape}")
    up = cv2.resize(np.ascontiguousarray(flow.transpose(1, 2, 0)), (side, side), interpolation=cv2.INTER_LINEAR)
    return up * (side / 2.0)


def _check(name: str, arr, n: int, channels: Sequence[int]) -> np.ndarray:
    if not isinstance(arr, np.ndarray) or arr.ndim != 4 or arr.shape[0] != n or arr.shape[1] not in channels:
        shape = getattr(arr, "shape", type(arr).__name__)
        raise ValueError(f"{name} must be an array (N={n}, C in {tuple(channels)}, s, s), got {shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr.astype(np.float32, copy=False)


def paste_warp(image: np.ndarray, boxes: Sequence[CropBox], flows: np.ndarray, residuals: np.ndarray,
               strength: float = 1.0, feather: float = DEFAULT_FEATHER, scale: float = PIXEL_SCALE) -> np.ndarray:
    """Warp each box's face by its upsampled flow and add its upsampled residual, on a copy of ``image``.

    ``flows``: (N, 2, s, s) from the model's ``flow`` output; ``residuals``: (N, C, s, s) from
    ``residual`` (model units, [-1, 1] space). ``strength`` scales the flow and the residual
    together (0: the input unchanged). ``scale``: pixel units per model unit (``ModelMetadata.pixel_scale``). Returns a new array of the same shape and dtype.
    """
    check_image(image)
    if isinstance(strength, bool) or not isinstance(strength, Real) or not math.isfinite(strength) or strength < 0:
        raise ValueError(f"strength must be a finite number >= 0, got {strength!r}")
    boxes = list(boxes)
    for i, box in enumerate(boxes):
        if not isinstance(box, CropBox):
            raise ValueError(f"boxes[{i}] must be a CropBox, got {box!r}")
    flows = _check("flows", flows, len(boxes), (2,))
    residuals = _check("residuals", residuals, len(boxes), (1, 3))
    result = image.copy()
    if strength == 0:
        return result
    planes = result if result.ndim == 2 else result[:, :, 0] if result.shape[2] == 1 else result[:, :, :3]
    source = planes.copy()  # every face samples the unchanged frame
    h, w = planes.shape[:2]
    colour = planes.ndim == 3
    for box, flow, res in zip(boxes, flows, residuals):
        x0, y0, x1, y1 = max(box.x, 0), max(box.y, 0), min(box.x2, w), min(box.y2, h)
        if x1 <= x0 or y1 <= y0:
            continue
        side = box.size
        sy, sx = slice(y0 - box.y, y1 - box.y), slice(x0 - box.x, x1 - box.x)
        d = flow_to_pixels(flow, side)[sy, sx] * np.float32(strength)
        gy, gx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        warped = cv2.remap(source, gx + d[..., 0], gy + d[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        shade = res[0] if res.shape[0] == 1 else np.tensordot(_LUMA, res, axes=1)
        shade = cv2.resize(shade, (side, side), interpolation=cv2.INTER_CUBIC)[sy, sx] * np.float32(strength * scale)
        mask = face_mask(side, feather)[sy, sx]
        region = planes[y0:y1, x0:x1].astype(np.float32)
        if colour:
            mask, shade = mask[:, :, None], shade[:, :, None]
        new = region + mask * (warped.astype(np.float32) + shade - region)
        planes[y0:y1, x0:x1] = np.clip(np.rint(new), 0, 255).astype(np.uint8)
    return result
