"""Face detection: a small interface and three OpenCV detectors.

Every detector takes an image in OpenCV's convention (BGR uint8 ``HxWx3``; gray
``HxW`` and BGRA ``HxWx4`` are accepted and converted internally) and returns a
list of :class:`Face`, sorted by score, best first.

- :class:`YuNetDetector` (the default): OpenCV's ``FaceDetectorYN`` with
  ``face_detection_yunet_2023mar.onnx``, which ships inside the package
  (``fexsdk/models/``, MIT licence beside it); fastest and most accurate, gives
  five landmarks.
- :class:`HaarDetector`: Viola-Jones cascade shipped with ``opencv-python``; needs
  no model file, least accurate, many false positives on real photos.
- :class:`SSDDetector`: the ResNet-10 SSD (``opencv_face_detector_uint8.pb`` and
  its ``.pbtxt``) through ``cv2.dnn``.

:func:`make_detector` builds one from a short spec. Nothing here ever downloads
anything: model files are the bundled YuNet or paths the caller provides.

Each detector class carries ``crop_margin`` and ``crop_offset``: how to turn its
box into a square that frames the face the way FER2013 crops do (see
:func:`fexsdk.crops.square_box`). They were measured by
``benchmarks/detectors.py``; the figures are in ``docs/detectors.md``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import cv2
import numpy as np

from fexsdk.formats import ONNX_SUFFIXES
from fexsdk.images import to_bgr, to_gray

__all__ = [
    "DETECTOR_CHOICES",
    "YUNET_FILE",
    "bundled_yunet",
    "Face",
    "FaceDetector",
    "HaarDetector",
    "SSDDetector",
    "YuNetDetector",
    "make_detector",
]

#: What :func:`make_detector` accepts, for error messages and docs.
DETECTOR_CHOICES = (
    "None or 'yunet' (the YuNet model that ships inside fexsdk, the default)",
    "'haar' (OpenCV's bundled Haar cascade, no file needed)",
    f"a path to a YuNet model ending in {ONNX_SUFFIXES[0]} (e.g. face_detection_yunet_2023mar.onnx)",
    "a path to the ResNet-10 SSD ending in .pb (opencv_face_detector_uint8.pb, "
    "with opencv_face_detector.pbtxt beside it)",
    "a path to a Haar cascade ending in .xml",
    "an object with a .detect(image) method (returned as is)",
)

# Haar: the smallest window scanned, in image pixels (a hard floor; the cascade's
# box for a face is about the FER2013 square, so 32 lets 40-px faces through).
_HAAR_MIN_FACE = 32
# YuNet: frames whose longer side is over this are shrunk to it before detection. Measured by
# `benchmarks/detectors.py --compare` (docs/benchmarks.md, "Face detectors"): on 1280x720 frames, 96-px faces
# are found 78% of the time at 960 (57 ms), 48% at 640 (22 ms), 83% at full size (98 ms); 640x480 runs as it is.
_YUNET_INPUT_SIZE = 960
# YuNet: boxes whose longer side is under this many pixels of the original image are dropped: such
# faces are far below the generator's 48x48 input, and most false positives are small.
_YUNET_MIN_FACE = 40
# YuNet: boxes scoring under this are dropped. On 85 face-free images (benchmarks/detectors.py --compare) it
# gave 14 boxes at >= 0.5, 5 at >= 0.7, none at >= 0.8, for 3 points of recall on FER2013 faces (OpenCV's
# sample uses 0.9, which halves recall on them). Real faces score about 0.85-0.95.
_YUNET_SCORE = 0.8

#: File name of the YuNet model shipped inside the package (fexsdk/models/, MIT, licence beside it).
YUNET_FILE = "face_detection_yunet_2023mar.onnx"


def bundled_yunet() -> Path:
    """Path of the YuNet model that ships inside the installed package (found with importlib.resources)."""
    from importlib import resources

    res = resources.files("fexsdk") / "models" / YUNET_FILE
    path = Path(str(res))
    if not path.is_file():
        raise FileNotFoundError(f"the bundled YuNet face detector is missing from the installation ({path}); "
                                "reinstall fexsdk, or pass detector='haar'")
    return path


@dataclass(frozen=True)
class Face:
    """One detected face.

    ``box`` is ``(x, y, w, h)`` in image pixels (floats; may be fractional).
    ``score`` is the detector's confidence, higher is better, in [0, 1].
    ``landmarks`` is a ``(5, 2)`` float32 array of ``(x, y)`` points (right eye,
    left eye, nose tip, right and left mouth corner, as YuNet orders them) where
    the detector gives them, else ``None``. It is left out of ``==`` and hashing.
    """

    box: tuple[float, float, float, float]
    score: float
    landmarks: np.ndarray | None = field(default=None, compare=False)

    @property
    def center(self) -> tuple[float, float]:
        x, y, w, h = self.box
        return (x + w / 2.0, y + h / 2.0)


def box_iou(a, b) -> float:
    """Intersection over union of two (x, y, w, h) boxes."""
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    ix = max(0.0, min(ax + aw, bx + bw) - max(ax, bx))
    iy = max(0.0, min(ay + ah, by + bh) - max(ay, by))
    inter = ix * iy
    union = aw * ah + bw * bh - inter
    return inter / union if union > 0 else 0.0


@runtime_checkable
class FaceDetector(Protocol):
    """Anything with a ``name`` and a ``detect(image) -> list[Face]`` method."""

    name: str

    def detect(self, image: np.ndarray) -> list[Face]:  # pragma: no cover - protocol
        ...


def _clip_box(x1: float, y1: float, x2: float, y2: float, w: int, h: int):
    x1, x2 = max(0.0, float(x1)), min(float(w), float(x2))
    y1, y2 = max(0.0, float(y1)), min(float(h), float(y2))
    if x2 - x1 < 1.0 or y2 - y1 < 1.0:
        return None
    return (x1, y1, x2 - x1, y2 - y1)


def _sorted(faces: list[Face]) -> list[Face]:
    return sorted(faces, key=lambda f: f.score, reverse=True)


class HaarDetector:
    """OpenCV's frontal-face Haar cascade (ships with ``opencv-python``; no file needed).

    ``score`` is ``n / (n + min_neighbors)`` where ``n`` is the number of raw
    detections merged into the box: Haar gives no probability, but more
    neighbours means a surer face.
    """

    name = "haar"
    #: Square crop around the box that best matches FER2013 framing (measured in
    #: docs/detectors.md): FER2013 faces are framed just like Haar's square box.
    crop_margin = 0.0
    crop_offset = 0.0

    def __init__(
        self,
        cascade: str | os.PathLike | None = None,
        scale_factor: float = 1.1,
        min_neighbors: int = 5,
        min_face: int = _HAAR_MIN_FACE,
        equalize: bool = False,
    ) -> None:
        if not hasattr(cv2, "CascadeClassifier"):
            raise RuntimeError(
                f"this OpenCV ({cv2.__version__}) has no CascadeClassifier (OpenCV 5 dropped "
                "Haar cascades): install 'opencv-python-headless<5', or use YuNet "
                "(make_detector('face_detection_yunet_2023mar.onnx'))"
            )
        if cascade is None:
            data = getattr(getattr(cv2, "data", None), "haarcascades", None)
            path = Path(data or "") / "haarcascade_frontalface_default.xml"
            if not data or not path.is_file():
                raise RuntimeError(
                    f"this OpenCV ({cv2.__version__}) ships no Haar cascade data "
                    "(cv2.data.haarcascades/haarcascade_frontalface_default.xml): install "
                    "'opencv-python-headless<5', or use YuNet "
                    "(make_detector('face_detection_yunet_2023mar.onnx'))"
                )
        else:
            path = Path(cascade)
            if not path.is_file():
                raise FileNotFoundError(f"Haar cascade file not found: {path}")
        self._cascade = cv2.CascadeClassifier(str(path))
        if self._cascade.empty():
            raise RuntimeError(f"OpenCV could not load the Haar cascade {path}")
        if scale_factor <= 1.0:
            raise ValueError(f"scale_factor must be > 1, got {scale_factor}")
        self.path = path
        self.scale_factor = float(scale_factor)
        self.min_neighbors = int(min_neighbors)
        if int(min_face) < 1:
            raise ValueError(f"min_face must be >= 1, got {min_face}")
        self.min_face = int(min_face)
        self.equalize = bool(equalize)

    def detect(self, image: np.ndarray) -> list[Face]:
        gray = to_gray(image)
        if self.equalize:
            gray = cv2.equalizeHist(gray)
        h, w = gray.shape
        m = self.min_face
        if min(h, w) < m:
            return []
        rects, counts = self._cascade.detectMultiScale2(
            gray, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors, minSize=(m, m)
        )
        faces = []
        for (x, y, bw, bh), n in zip(np.asarray(rects).reshape(-1, 4), np.asarray(counts).reshape(-1)):
            box = _clip_box(x, y, x + bw, y + bh, w, h)
            if box is not None:
                score = float(n) / (float(n) + max(self.min_neighbors, 1))
                faces.append(Face(box, score))
        return _sorted(faces)

    def __repr__(self) -> str:
        return (
            f"HaarDetector(scale_factor={self.scale_factor}, min_neighbors={self.min_neighbors}, "
            f"min_face={self.min_face})"
        )


class YuNetDetector:
    """YuNet (``cv2.FaceDetectorYN``, OpenCV >= 4.8); gives five landmarks.

    ``path=None`` uses the model that ships inside the package (:func:`bundled_yunet`).

    The network does not need the whole frame: a frame whose longer side is over
    ``input_size`` pixels is shrunk to that size first (boxes and landmarks are mapped
    back), so a 12-Mpixel photo costs about what a 960x720 frame does; smaller frames
    run at their own size (never enlarged). The price is the smallest face found, which
    grows with the shrink: faces from about 70 px of the shrunk copy are reliable, so at
    the default 960 a 1280x720 frame (shrunk 0.75x) finds 96-px faces about 4 times in 5
    and 48-px ones rarely, and a 4000x3000 photo finds faces from about 300 px (the
    "Face detectors" table of docs/benchmarks.md; details in docs/detectors.md).
    ``input_size=None`` always runs at the frame's own size; a smaller ``input_size``
    is faster and misses more small faces.

    Faces are then left alone when they are unlikely or tiny: a box scoring under
    ``score_threshold`` (0.8) or whose longer side is under ``min_face`` pixels of the
    original image (40; the generator's input is 48x48) is dropped.
    """

    name = "yunet"
    # YuNet's box is taller than wide (w/h ~ 0.77) and a little larger than the
    # FER2013 square's side; measured in docs/detectors.md.
    crop_margin = -0.03
    crop_offset = -0.02

    def __init__(
        self,
        path: str | os.PathLike | None = None,
        score_threshold: float = _YUNET_SCORE,
        nms_threshold: float = 0.3,
        top_k: int = 5000,
        min_face: float | None = _YUNET_MIN_FACE,
        input_size: int | None = _YUNET_INPUT_SIZE,
    ) -> None:
        path = bundled_yunet() if path is None else Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"YuNet model file not found: {path}")
        if not hasattr(cv2, "FaceDetectorYN"):
            raise RuntimeError(
                f"this OpenCV ({cv2.__version__}) has no cv2.FaceDetectorYN: YuNet needs OpenCV 4.8 or later"
            )
        if not 0.0 <= score_threshold <= 1.0:
            raise ValueError(f"score_threshold must be in [0, 1], got {score_threshold}")
        self.path = path
        self.score_threshold = float(score_threshold)
        self.nms_threshold = float(nms_threshold)
        self.top_k = int(top_k)
        if min_face is not None and not min_face >= 0:
            raise ValueError(f"min_face must be >= 0 or None, got {min_face}")
        if input_size is not None and int(input_size) < 32:
            raise ValueError(f"input_size must be >= 32 or None, got {input_size}")
        self.min_face = 0.0 if min_face is None else float(min_face)
        self.input_size = None if input_size is None else int(input_size)
        not_yunet = (f"{path} is not a YuNet face detector (OpenCV could not run it as one); pass "
                     "face_detection_yunet_2023mar.onnx, 'yunet', an SSD .pb, or 'haar'")
        log = getattr(getattr(cv2, "utils", None), "logging", None)
        level = log.getLogLevel() if log is not None else None
        try:
            if log is not None:  # OpenCV logs its own errors for a foreign model; the ValueError says it
                log.setLogLevel(log.LOG_LEVEL_SILENT)
            self._net = cv2.FaceDetectorYN.create(
                str(path), "", (320, 320), self.score_threshold, self.nms_threshold, self.top_k
            )
            # Any ONNX file loads; one that is not YuNet fails only when run. Find out now, on a blank frame.
            self._net.setInputSize((64, 64))
            self._net.detect(np.zeros((64, 64, 3), np.uint8))
        except cv2.error:
            raise ValueError(not_yunet) from None
        finally:
            if level is not None:
                log.setLogLevel(level)
        self._size: tuple[int, int] | None = (64, 64)

    def detect(self, image: np.ndarray) -> list[Face]:
        bgr = to_bgr(image)
        h, w = bgr.shape[:2]
        scale = 1.0 if self.input_size is None else min(1.0, self.input_size / max(h, w))
        if abs(scale - 1.0) > 1e-3:
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            interp = cv2.INTER_LINEAR if scale > 1.0 else cv2.INTER_AREA
            bgr = cv2.resize(bgr, size, interpolation=interp)
            scale_x, scale_y = size[0] / w, size[1] / h
        else:
            scale_x = scale_y = 1.0
        size = (bgr.shape[1], bgr.shape[0])
        if size != self._size:
            self._net.setInputSize(size)
            self._size = size
        _, rows = self._net.detect(bgr)
        faces = []
        if rows is None:
            return faces
        for r in np.asarray(rows, dtype=np.float32).reshape(-1, 15):
            if r[14] < self.score_threshold:
                continue
            r = r.copy()
            r[0:14:2] /= scale_x
            r[1:14:2] /= scale_y
            if max(r[2], r[3]) < self.min_face:
                continue
            box = _clip_box(r[0], r[1], r[0] + r[2], r[1] + r[3], w, h)
            if box is not None:
                faces.append(Face(box, float(r[14]), r[4:14].reshape(5, 2).copy()))
        return _sorted(faces)

    def with_input_size(self, input_size: int | None) -> "YuNetDetector":
        """A new detector like this one (model file, thresholds, ``min_face``) that shrinks frames to ``input_size``."""
        return YuNetDetector(self.path, score_threshold=self.score_threshold, nms_threshold=self.nms_threshold,
                             top_k=self.top_k, min_face=self.min_face, input_size=input_size)

    def __repr__(self) -> str:
        return (
            f"YuNetDetector({str(self.path)!r}, score_threshold={self.score_threshold}, "
            f"min_face={self.min_face:g}, input_size={self.input_size})"
        )


class SSDDetector:
    """OpenCV's ResNet-10 SSD face detector (TensorFlow uint8 weights) through ``cv2.dnn``.

    The whole frame is resized to ``input_size`` x ``input_size`` (300), so faces
    smaller than about 1/10 of the frame's width are often missed.
    """

    name = "ssd"
    # Measured in docs/detectors.md (box w/h ~ 0.77, like YuNet's).
    crop_margin = -0.04
    crop_offset = 0.0

    def __init__(
        self,
        pb_path: str | os.PathLike,
        pbtxt_path: str | os.PathLike | None = None,
        confidence: float = 0.5,
        input_size: int = 300,
    ) -> None:
        pb_path = Path(pb_path)
        if not pb_path.is_file():
            raise FileNotFoundError(f"SSD weights file not found: {pb_path}")
        pbtxt_path = (
            pb_path.with_name("opencv_face_detector.pbtxt") if pbtxt_path is None else Path(pbtxt_path)
        )
        if not pbtxt_path.is_file():
            raise FileNotFoundError(
                f"SSD graph file not found: {pbtxt_path} (pass pbtxt_path=, or put "
                "opencv_face_detector.pbtxt beside the .pb)"
            )
        if not 0.0 <= confidence <= 1.0:
            raise ValueError(f"confidence must be in [0, 1], got {confidence}")
        self.pb_path = pb_path
        self.pbtxt_path = pbtxt_path
        self.confidence = float(confidence)
        self.input_size = int(input_size)
        try:
            self._net = cv2.dnn.readNetFromTensorflow(str(pb_path), str(pbtxt_path))
        except cv2.error as exc:
            raise RuntimeError(f"OpenCV could not load the SSD model {pb_path}: {exc}") from exc

    def detect(self, image: np.ndarray) -> list[Face]:
        bgr = to_bgr(image)
        h, w = bgr.shape[:2]
        s = self.input_size
        blob = cv2.dnn.blobFromImage(bgr, 1.0, (s, s), (104.0, 177.0, 123.0), swapRB=False, crop=False)
        self._net.setInput(blob)
        out = np.asarray(self._net.forward(), dtype=np.float32).reshape(-1, 7)
        faces = []
        for _, _, conf, x1, y1, x2, y2 in out[out[:, 2] >= self.confidence]:
            box = _clip_box(x1 * w, y1 * h, x2 * w, y2 * h, w, h)
            if box is not None:
                faces.append(Face(box, float(conf)))
        return _sorted(faces)

    def __repr__(self) -> str:
        return f"SSDDetector({str(self.pb_path)!r}, confidence={self.confidence})"


def make_detector(spec: str | os.PathLike | FaceDetector | None = None) -> FaceDetector:
    """Build a face detector from a short spec.

    - ``None`` or ``"yunet"``: :class:`YuNetDetector` with the model shipped inside the package;
    - ``"haar"``: :class:`HaarDetector` (OpenCV's cascade, no file needed);
    - a path ending in ``.onnx``: :class:`YuNetDetector` with that file;
    - a path ending in ``.pb``: :class:`SSDDetector` (``opencv_face_detector.pbtxt``
      is looked for beside it);
    - a path ending in ``.xml``: :class:`HaarDetector` with that cascade;
    - an object that already has a ``detect`` method: returned as is.

    Anything else raises ``ValueError`` listing these choices; a path that does
    not exist raises ``FileNotFoundError`` naming it. Nothing is downloaded.
    """
    if spec is None:
        return YuNetDetector()
    if not isinstance(spec, (str, os.PathLike)):
        if callable(getattr(spec, "detect", None)):
            return spec  # type: ignore[return-value]
        raise ValueError(_choices_message(spec))
    text = os.fspath(spec)
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    if isinstance(spec, str) and text.strip().lower() == "haar":
        return HaarDetector()
    if isinstance(spec, str) and text.strip().lower() == "yunet":
        return YuNetDetector()
    suffix = Path(text).suffix.lower()
    if suffix not in (*ONNX_SUFFIXES, ".pb", ".xml"):
        raise ValueError(_choices_message(spec))
    path = Path(text).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"face detector file not found: {path}")
    if suffix in ONNX_SUFFIXES:
        return YuNetDetector(path)
    if suffix == ".pb":
        return SSDDetector(path)
    return HaarDetector(cascade=path)


def _choices_message(spec: object) -> str:
    return f"unknown face detector {spec!r}; choose one of: " + "; ".join(DETECTOR_CHOICES)
