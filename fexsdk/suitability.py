"""Which faces the models can edit well: near-frontal and sharp enough, like FER2013's.

The generators learned on FER2013's 48x48 faces, which are near-frontal and sharp at that
size. A face turned far to the side gets smudges where its far half should be, and a blurred
one gets a change sharper than the face around it. Such faces are left unchanged by default
(``Transfer(skip_unsuitable=True)``), and their :class:`fexsdk.transfer.FaceRecord` says why.
"""

from __future__ import annotations

from typing import Optional

import cv2
import numpy as np

from fexsdk.exposure import TYPICAL_STD, face_ellipse
from fexsdk.faces import Face

#: |nose offset from the eyes' midpoint| / half the eye distance, along the eye line (0 for a frontal face,
#: ~1 where the nose tip reaches an eye), above which a face counts as turned away. On FER2013's PublicTest
#: faces (YuNet at 4x) the ratio has median 0.12, 90th percentile 0.48, 95th 0.69: the 5% most turned
#: training-like faces and everything beyond are left alone.
MAX_YAW_RATIO = 0.7
#: Laplacian variance inside the face ellipse of the 48x48 crop, its contrast brought to FER2013's typical one,
#: below which a face is too blurred. FER2013's PublicTest faces: 506 at their 1st percentile; the same faces
#: blurred by a Gaussian of sigma 1.5 px (at 48x48): 88 at the median, sigma 2 px: 46. The astronaut photo
#: (a 90-px face) blurred by sigma 4 px: 114, by 8 px: 43.
MIN_SHARPNESS = 60.0


def yaw_ratio(face: Face) -> Optional[float]:
    """How far the nose tip sits from the eyes' midpoint, along the eye line, in half eye distances; None without landmarks."""
    if face.landmarks is None:
        return None
    pts = np.asarray(face.landmarks, np.float32)
    eye_r, eye_l, nose = pts[0], pts[1], pts[2]
    axis = eye_l - eye_r
    half = float(np.linalg.norm(axis)) / 2
    if half < 1e-6:
        return None
    along = float(np.dot(nose - (eye_r + eye_l) / 2, axis / (2 * half)))
    return along / half


def sharpness(crop: np.ndarray) -> float:
    """Laplacian variance inside the face of a 48x48-ish gray crop (grey levels), at FER2013's typical contrast."""
    gray = np.asarray(crop, np.float32)
    if gray.ndim == 3:
        gray = gray.mean(axis=0)
    inside = face_ellipse(gray.shape[-1])  # the face, not the hair, collar or background edges around it
    gray = gray * (TYPICAL_STD / max(float(gray[inside].std()), 1.0))
    return float(cv2.Laplacian(gray, cv2.CV_32F)[inside].var())


def unsuitable_reason(face: Face, crop: np.ndarray) -> Optional[str]:
    """``"turned"``, ``"blurred"`` or None (editable). ``crop``: the face's (C, s, s) crop in grey levels."""
    ratio = yaw_ratio(face)
    if ratio is not None and abs(ratio) > MAX_YAW_RATIO:
        return "turned"
    if sharpness(crop) < MIN_SHARPNESS:
        return "blurred"
    return None
