"""Put the generator's change back into the full-resolution frame.

The generator sees a 48x48 gray face; the user sees a sharp colour frame. So by
default we transfer the *change*, not the pixels: the residual
``output - input`` is upsampled to the face's box, turned into pixel units and
added to the luminance of the original face through a feathered elliptical mask.
Skin colour, hair and fine detail stay; only what the generator changed moves.

Adding ``d`` to Y of YCrCb while keeping Cr and Cb is, for OpenCV's (BT.601)
YCrCb, the same as adding ``d`` to each of B, G and R, which is what is done
here: it needs no colour-space round trip, so pixels the mask leaves alone stay
bit-identical.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from numbers import Real

import cv2
import numpy as np

from fexsdk.images import check_image

from fexsdk.crops import CropBox, box_window, crop_to_image
from fexsdk.metadata import PIXEL_SCALE

__all__ = ["BLEND_MODES", "DEFAULT_FEATHER", "face_mask", "paste_back"]

BLEND_MODES = ("residual", "replace")
#: The largest ``strength``: twice the model's change. Beyond it the change only blows the face out.
MAX_STRENGTH = 2.0
#: Width of the mask's soft edge as a fraction of the ellipse's radius.
DEFAULT_FEATHER = 0.3
#: Semi-axes of the mask's ellipse as fractions of the box side (x, y): a FER2013
#: face fills the square's height and most of its width.
_AXES = (0.45, 0.5)
# BT.601 luma weights, as cv2.COLOR_RGB2GRAY uses.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def face_mask(size: int, feather: float = DEFAULT_FEATHER) -> np.ndarray:
    """Float32 ``(size, size)`` mask in [0, 1]: 1 inside the face ellipse, 0 at the box edge.

    The ellipse is inscribed in the box (semi-axes 0.45 and 0.5 of the side); the
    mask falls smoothly (smoothstep) from 1 to 0 over the outer ``feather``
    fraction of its radius. ``feather=0`` gives a hard-edged ellipse.
    Read-only and cached by (size, feather): video pastes the same few sizes on every frame.
    """
    size = int(size)
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    return _face_mask(size, float(feather))


@functools.lru_cache(maxsize=64)
def _face_mask(size: int, feather: float) -> np.ndarray:
    t = (np.arange(size, dtype=np.float32) + 0.5) / size - 0.5
    u = (t / _AXES[0])[None, :]
    v = (t / _AXES[1])[:, None]
    r = np.sqrt(u * u + v * v)
    if feather <= 0:
        mask = (r < 1.0).astype(np.float32)
    else:
        s = np.clip((1.0 - r) / feather, 0.0, 1.0)
        mask = (s * s * (3.0 - 2.0 * s)).astype(np.float32)
    mask.flags.writeable = False
    return mask


def _check_batch(name: str, arr, n: int) -> np.ndarray:
    if not isinstance(arr, np.ndarray):
        raise ValueError(f"{name} must be a numpy array, got {type(arr).__name__}")
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(
            f"{name} must be floating point in the model's [-1, 1] space, got dtype {arr.dtype} "
            "(convert pixels with ModelMetadata.to_model)"
        )
    if arr.ndim != 4 or arr.shape[1] not in (1, 3) or arr.shape[2] != arr.shape[3] or arr.shape[2] < 1:
        raise ValueError(f"{name} must have shape (N, C, s, s) with C 1 or 3, got {arr.shape}")
    if arr.shape[0] != n:
        raise ValueError(f"{name} holds {arr.shape[0]} crops but {n} boxes were given")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr.astype(np.float32, copy=False)


def _luma(chw: np.ndarray) -> np.ndarray:
    """(C, s, s) -> (s, s): the gray plane, or the luma of an RGB one."""
    if chw.shape[0] == 1:
        return chw[0]
    return np.tensordot(_LUMA, chw, axes=1)


_BINOMIAL = np.array([1.0, 2.0, 1.0], np.float32) / 4.0


def smooth_residual(plane: np.ndarray) -> np.ndarray:
    """[1 2 1]/4 filter in both directions, at the model's resolution.

    Its response is exactly 0 at the period-2 frequency, so it removes the checkerboard that
    StarGAN's transposed convolutions leave in the change, and keeps the expression itself
    (mouth, brows, eyes span several pixels even at 48x48).
    """
    return cv2.sepFilter2D(plane.astype(np.float32), -1, _BINOMIAL, _BINOMIAL, borderType=cv2.BORDER_REFLECT)


def _upsample(plane: np.ndarray, side: int) -> np.ndarray:
    if plane.shape[0] == side and plane.shape[1] == side:
        return plane
    interp = cv2.INTER_CUBIC if side > plane.shape[0] else cv2.INTER_AREA
    return cv2.resize(plane, (side, side), interpolation=interp)


def paste_back(
    image: np.ndarray,
    boxes: Sequence[CropBox],
    inputs: np.ndarray,
    outputs: np.ndarray,
    strength: float = 1.0,
    blend: str = "residual",
    feather: float = DEFAULT_FEATHER,
    smooth: bool = True,
    scale: float = PIXEL_SCALE,
    offset: float = 1.0,
) -> np.ndarray:
    """Apply the generator's change for each box to a copy of ``image``.

    ``image``: BGR uint8 ``HxWx3``, gray ``HxW`` (or ``HxWx1``) or BGRA ``HxWx4``
    (alpha is left untouched). ``boxes``: the :class:`~fexsdk.crops.CropBox` each
    crop was cut from. ``inputs`` / ``outputs``: float ``(N, C, s, s)`` in the
    model's [-1, 1] space (``C`` 1, or 3 in RGB order): the crops fed to the
    generator and what it returned. ``scale`` and ``offset`` are the model's normalisation
    (``ModelMetadata.pixel_scale`` / ``pixel_offset``: pixel = (value + offset) * scale).

    ``blend="residual"`` (default): ``(outputs - inputs) * strength`` (its luma
    for RGB models) is upsampled to the box, scaled to pixel units (x ``scale``) and
    added to the luminance of the face under a feathered elliptical mask, so
    colour and detail stay. With ``smooth`` (default) the change is first filtered by
    :func:`smooth_residual`, which removes the generator's checkerboard artefacts.
    ``blend="replace"``: the upsampled output itself
    (gray replicated to colour) is blended in with the same mask, weighted by
    ``min(strength, 1)``.

    A turned box (``box.angle != 0``, an aligned crop) gets its change, mask and output
    turned back into the image through the inverse of :meth:`~fexsdk.crops.CropBox.matrix`
    (:func:`fexsdk.crops.crop_to_image`); the mask's ellipse stays inside the unturned square.

    Returns a new array of the same shape and dtype; ``image`` is not modified.
    Pixels outside every box (and where the mask is 0) are bit-identical to
    the input; parts of boxes outside the image are clipped. Overlapping boxes
    are applied one after another, in order.
    """
    check_image(image)  # validates; an HxWx1 image keeps its shape in the result
    if not isinstance(blend, str) or blend not in BLEND_MODES:
        raise ValueError(f"blend must be one of {BLEND_MODES}, got {blend!r}")
    if isinstance(strength, bool) or not isinstance(strength, Real):
        raise ValueError(f"strength must be a number, got {strength!r}")
    strength = float(strength)
    if not math.isfinite(strength) or not 0 <= strength <= MAX_STRENGTH:
        raise ValueError(f"strength must be a number in [0, {MAX_STRENGTH:g}], got {strength}")
    if isinstance(feather, bool) or not isinstance(feather, Real) or not 0.0 <= float(feather) <= 1.0:
        raise ValueError(f"feather must be a number in [0, 1], got {feather!r}")
    feather = float(feather)
    boxes = list(boxes)
    for i, box in enumerate(boxes):
        if not isinstance(box, CropBox):
            raise ValueError(f"boxes[{i}] must be a CropBox, got {box!r}")
    inputs = _check_batch("inputs", inputs, len(boxes))
    outputs = _check_batch("outputs", outputs, len(boxes))
    if inputs.shape != outputs.shape:
        raise ValueError(f"inputs and outputs must have the same shape, got {inputs.shape} and {outputs.shape}")

    result = image.copy()
    if strength == 0.0:
        return result
    # A 2-D view on gray (HxW or HxWx1) images, the colour planes on BGR/BGRA.
    if result.ndim == 2:
        planes = result
    elif result.shape[2] == 1:
        planes = result[:, :, 0]
    else:
        planes = result[:, :, :3]
    colour = planes.ndim == 3
    h, w = planes.shape[:2]

    for box, x_in, x_out in zip(boxes, inputs, outputs):
        window = box_window(box, (h, w))
        if window is None:
            continue
        side = box.size
        mask = crop_to_image(face_mask(side, feather), box, window)
        region = planes[window].astype(np.float32)
        if blend == "residual":
            change = _luma(x_out - x_in)
            if smooth:
                change = smooth_residual(change)
            delta = crop_to_image(_upsample(change * (strength * scale), side), box, window, replicate=True) * mask
            new = region + (delta[:, :, None] if colour else delta)
        else:
            if colour and x_out.shape[0] == 3:
                pix = _upsample(np.ascontiguousarray(x_out[::-1].transpose(1, 2, 0)), side)  # RGB -> BGR
            else:
                pix = _upsample(_luma(x_out), side)
            pix = crop_to_image((pix + offset) * scale, box, window, replicate=True)
            if colour and pix.ndim == 2:
                pix = pix[:, :, None]
            alpha = mask * min(strength, 1.0)
            if colour:
                alpha = alpha[:, :, None]
            new = region + alpha * (pix - region)
        planes[window] = np.clip(np.rint(new), 0, 255).astype(np.uint8)
    return result
