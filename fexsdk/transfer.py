"""``fexsdk.Transfer``: find faces, change their expression, paste the change back."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import numpy as np

from fexsdk.backends import Backend, load_backend
from fexsdk.crops import CropBox, crop_box_for, extract_crops
from fexsdk.emotions import Target, target_matrix
from fexsdk.faces import Face, FaceDetector, make_detector
from fexsdk.images import check_image
from fexsdk.noise import draw_noise
from fexsdk.paste import BLEND_MODES, paste_back

#: The model that ships inside the package.
DEFAULT_MODEL = Path(__file__).resolve().parent / "models" / "default.onnx"
#: Larger images are refused rather than risking an out-of-memory crash.
MAX_PIXELS = 100_000_000

Seeds = Union[int, Sequence[int], None]
FaceSpec = Union[Face, Sequence[float]]


@dataclass
class TransferResult:
    """What :meth:`Transfer.process` returns: the new image and what it did."""

    image: np.ndarray
    faces: list[Face] = field(default_factory=list)
    boxes: list[CropBox] = field(default_factory=list)
    #: The crops fed to the generator and its outputs, (N, C, s, s) in [-1, 1].
    inputs: Optional[np.ndarray] = None
    outputs: Optional[np.ndarray] = None


def load_image(image: Union[np.ndarray, str, os.PathLike]) -> np.ndarray:
    """Check an image argument (or read a path) and return it unchanged: uint8 HxW, HxWx3 (BGR) or HxWx4 (BGRA)."""
    if isinstance(image, (str, os.PathLike)):
        import cv2

        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"image file not found: {path}")
        loaded = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if loaded is None:
            raise ValueError(f"{path} is not an image OpenCV can read")
        image = loaded
    if image is not None and not isinstance(image, np.ndarray):
        raise ValueError(f"image must be a numpy array or a path, got {type(image).__name__}")
    check_image(image)
    if image.shape[0] * image.shape[1] > MAX_PIXELS:
        raise ValueError(f"image has {image.shape[0] * image.shape[1]:,} pixels; the limit is {MAX_PIXELS:,} (resize it first)")
    return image


def _face(spec: FaceSpec) -> Face:
    if isinstance(spec, Face):
        return spec
    try:
        x, y, w, h = (float(v) for v in spec)
    except (TypeError, ValueError):
        raise ValueError(f"a face must be a Face or an (x, y, w, h) box, got {spec!r}") from None
    if not (w > 0 and h > 0):
        raise ValueError(f"face box width and height must be positive, got {spec!r}")
    return Face((x, y, w, h), 1.0)


class Transfer:
    """Facial expression transfer on images.

    Args:
        model: ``.onnx``, ``.engine``/``.plan`` or a training checkpoint; None uses the bundled default model.
        device: "auto" (GPU when the backend has one), "cpu" or "cuda".
        detector: "haar" (default, needs no file), a YuNet ``.onnx`` path, an SSD ``.pb`` path, or a detector object.
        blend: "residual" (default: add the generator's change to the luminance) or "replace" (paste its output).
        threads: CPU threads for onnxruntime (None: its default).
        smooth: filter the generator's change before pasting it back, removing the checkerboard
            artefacts of its transposed convolutions (residual blend only).
    """

    def __init__(self, model: Union[str, os.PathLike, None] = None, device: str = "auto",
                 detector: Union[str, os.PathLike, FaceDetector, None] = None, blend: str = "residual",
                 threads: Optional[int] = None, smooth: bool = True) -> None:
        if blend not in BLEND_MODES:
            raise ValueError(f"blend must be one of {BLEND_MODES}, got {blend!r}")
        if model is None:
            if not DEFAULT_MODEL.is_file():
                raise FileNotFoundError(f"the bundled model is missing from the installation ({DEFAULT_MODEL}); reinstall fexsdk")
            model = DEFAULT_MODEL
        self.backend: Backend = load_backend(model, device, threads)
        self.meta = self.backend.meta
        self.detector = make_detector(detector)
        self.blend = blend
        self.smooth = smooth

    def __repr__(self) -> str:
        return f"Transfer(backend={self.backend.name}, preset={self.meta.preset!r}, detector={self.detector.name})"

    # -- the raw model --------------------------------------------------------
    def _seeds(self, seed: Seeds, count: int):
        """One seed per face: an int seed gives face i the stream (seed, i); a list gives face i seeds[i]."""
        if seed is None:
            return None
        if isinstance(seed, (int, np.integer)):
            return [np.random.SeedSequence([int(seed), i]) for i in range(count)]
        if isinstance(seed, np.random.SeedSequence):
            return seed.spawn(count)
        try:
            return list(seed)
        except TypeError:
            raise ValueError(f"seed must be an int, a list of ints (one per face) or None, got {seed!r}") from None

    def run_model(self, x: np.ndarray, targets, seed: Seeds = None, noise: bool = True, domain: int = 0) -> np.ndarray:
        """(N, C, s, s) float32 in [-1, 1] -> generator output, same shape."""
        n = x.shape[0]
        labels = self.meta.label_for(target_matrix(targets, n), domain)
        if n == 0:
            return np.zeros_like(x)
        noise_arr = draw_noise(self.meta, n, self._seeds(seed, n), enabled=noise)
        return self.backend.run(x, labels, noise_arr)

    def generate(self, crops: np.ndarray, targets, seed: Seeds = None, noise: bool = True) -> np.ndarray:
        """Change the expression of ready crops (the model's size: e.g. 48x48 gray).

        ``crops``: uint8 (N, s, s) for gray models or (N, C, s, s); returns uint8 of the same shape.
        ``targets``: one target for all (name, alias, index or {name: intensity}) or one per crop.
        """
        crops = np.asarray(crops)
        m = self.meta
        if crops.dtype != np.uint8:
            raise ValueError(f"crops must be uint8, got {crops.dtype}")
        squeeze = crops.ndim == 3 and m.channels == 1
        x = crops[:, None] if squeeze else crops
        if x.ndim != 4 or x.shape[1:] != (m.channels, m.image_size, m.image_size):
            want = f"(N, {m.image_size}, {m.image_size}) or " if m.channels == 1 else ""
            raise ValueError(f"crops must have shape {want}(N, {m.channels}, {m.image_size}, {m.image_size}), got {crops.shape}")
        out = self.run_model(x.astype(np.float32) / 127.5 - 1.0, targets, seed, noise)
        out = np.clip((out + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)
        return out[:, 0] if squeeze else out

    # -- whole images -----------------------------------------------------------
    def detect(self, image) -> list[Face]:
        return self.detector.detect(load_image(image))

    def process(self, image, target: Union[Target, Sequence[Target]], *, faces: Optional[Sequence[FaceSpec]] = None,
                seed: Seeds = None, strength: float = 1.0, noise: bool = True) -> TransferResult:
        """Like :meth:`apply`, returning a :class:`TransferResult` with the faces and crops."""
        image = load_image(image)
        if isinstance(strength, bool) or not isinstance(strength, (int, float, np.integer, np.floating)):
            raise ValueError(f"strength must be a number, got {strength!r}")
        if not np.isfinite(strength) or strength < 0:
            raise ValueError(f"strength must be a finite number >= 0, got {strength}")
        found = self.detector.detect(image) if faces is None else [_face(f) for f in faces]
        if not found:  # no face: the image comes back unchanged (a copy)
            return TransferResult(image.copy(), [], [])
        m = self.meta
        boxes = [crop_box_for(f, self.detector) for f in found]
        crops = extract_crops(image, boxes, m.image_size, m.channels)
        x = crops.astype(np.float32) / 127.5 - 1.0
        y = self.run_model(x, target, seed, noise)
        out = paste_back(image, boxes, x, y, strength=strength, blend=self.blend, smooth=self.smooth)
        return TransferResult(out, found, boxes, x, y)

    def apply(self, image, target: Union[Target, Sequence[Target]], *, faces: Optional[Sequence[FaceSpec]] = None,
              seed: Seeds = None, strength: float = 1.0, noise: bool = True, return_faces: bool = False):
        """Change the expression of every face in ``image``; returns a new image of the same shape and dtype.

        Args:
            image: BGR uint8 HxWx3 (OpenCV's convention), gray HxW or BGRA HxWx4, or a path to an image file.
            target: an emotion name or alias ("surprise", "joy"), an index, a dict of intensities
                ({"happy": 0.7}), or a list with one of those per face.
            faces: (x, y, w, h) boxes or Face objects to use instead of running the detector; they are
                framed like the configured detector's boxes (Haar's, the default, need no margin).
            seed: fixes the test-time dropout noise (same seed, same output): an int gives face i the
                stream (seed, i), a list gives face i its own seed; None draws new noise each call.
            strength: scales the change (0 = unchanged, 1 = the model's change).
            noise: False switches the test-time dropout off (the deterministic, eval-mode model).
            return_faces: also return the list of faces found.

        An image with no face is returned unchanged (as a copy); the face list is then empty.
        """
        result = self.process(image, target, faces=faces, seed=seed, strength=strength, noise=noise)
        return (result.image, result.faces) if return_faces else result.image
