"""``fexsdk.Transfer``: find faces, change their expression, paste the change back."""

from __future__ import annotations

import copy
import math
import os
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np

from fexsdk import formats
from fexsdk.backends import Backend, check_threads, load_backend
from fexsdk.crops import CropBox, crop_box_for, extract_crops
from fexsdk.emotions import Target, check_target, per_face_targets, target_matrix
from fexsdk.exposure import fit_exposure
from fexsdk.faces import Face, FaceDetector, make_detector
from fexsdk.images import check_image, read_image
from fexsdk.noise import draw_noise, noise_for
from fexsdk.options import TransferOptions
from fexsdk.paste import BLEND_MODES, MAX_STRENGTH, paste_back
from fexsdk.suitability import unsuitable_reason
from fexsdk.warp_paste import paste_warp

#: Models that ship inside the package live here, one ``NAME.onnx`` with its card ``NAME.json`` each.
BUNDLED_DIR = Path(__file__).resolve().parent / "models"
#: The model that ships inside the package and is used when none is named.
DEFAULT_MODEL = BUNDLED_DIR / "default.onnx"


def bundled_models() -> list[str]:
    """Names of the expression models shipped in the package (the face detector is not one)."""
    return sorted(p.stem for p in BUNDLED_DIR.glob(formats.onnx_glob()) if p.with_suffix(".json").is_file())


def resolve_model(model: Union[str, os.PathLike, None]) -> Union[str, os.PathLike]:
    """A bundled model's name (``"default"``, ...) becomes its path; paths are returned as given.

    A bare word without a file suffix that names no bundled model is refused here, with the
    names that exist, rather than failing later as a missing file.
    """
    if model is None:
        model = "default"
    if isinstance(model, str) and not Path(model).suffix and os.sep not in model and "/" not in model:
        names = bundled_models()
        if model not in names:
            raise ValueError(f"no bundled model named {model!r}; bundled: {', '.join(names) or 'none'} "
                             f"(or give a model file: {formats.suffix_list()})")
        return BUNDLED_DIR / formats.with_onnx_suffix(model)
    return model
#: Crops per generator call in :meth:`Transfer.generate` (memory stays bounded for any number of crops).
GENERATE_CHUNK = 256
#: Larger images are refused rather than risking an out-of-memory crash.
MAX_PIXELS = 100_000_000
#: A face box given with ``faces=`` may be at most this many times the image's longer side.
MAX_BOX_FACTOR = 4.0

Seeds = Union[int, Sequence[int], None]
FaceSpec = Union[Face, Sequence[float]]


#: The stages of :meth:`Transfer.process`, in order; each fills its part of every :class:`FaceRecord`.
STAGES = ("detect", "frame", "crop", "generate", "paste")


@dataclass
class FaceRecord:
    """One face on its way through the stages (like insightface's ``Face``): each stage fills its part.

    ``detect`` (or ``faces=``): :attr:`face`; ``frame``: :attr:`box` (the square the crop is cut from, turned
    upright by ``box.angle`` for aligned faces: ``box.matrix()`` is the crop's whole geometry, used by the crop
    and by both paste-backs) and :attr:`face_id`; ``crop``: :attr:`crop`; ``generate``: :attr:`output` and, for warp-head models,
    :attr:`parts` (``flow``, ``residual``, ``mask``); ``paste`` writes into the image. :attr:`timings`
    holds each stage's milliseconds for this face (a batched stage's time shared equally).
    """

    face: Face
    #: Picks the face's dropout noise with the seed (fexsdk.noise.noise_for): its index in the call, or a track id.
    face_id: int = 0
    box: Optional[CropBox] = None
    #: (C, s, s) float32 in the model's space, as fed to the generator.
    crop: Optional[np.ndarray] = None
    #: (C, s, s) float32: the generator's image output.
    output: Optional[np.ndarray] = None
    #: A warp-head model's other outputs by name: flow (2, s, s), residual (C, s, s), mask (1, s, s).
    parts: dict[str, np.ndarray] = field(default_factory=dict)
    #: (7,) the target's emotion intensities (``generate``): picks the model's default strength in ``paste``.
    target: Optional[np.ndarray] = None
    #: Why the face was left unchanged: "turned" (too far from frontal) or "blurred" (fexsdk.suitability); None: edited.
    skipped: Optional[str] = None
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class TransferResult:
    """What :meth:`Transfer.process` returns: the new image and what it did."""

    image: np.ndarray
    faces: list[Face] = field(default_factory=list)
    boxes: list[CropBox] = field(default_factory=list)
    #: The crops fed to the generator and its outputs, (N, C, s, s) in the model's space ([-1, 1]).
    inputs: Optional[np.ndarray] = None
    outputs: Optional[np.ndarray] = None
    records: list[FaceRecord] = field(default_factory=list)
    #: Milliseconds per stage for the whole image.
    timings: dict[str, float] = field(default_factory=dict)


def _share(records: Sequence[FaceRecord], stage: str, seconds: float) -> float:
    ms = 1000.0 * seconds
    for r in records:
        r.timings[stage] = ms / len(records)
    return ms


def load_image(image: Union[np.ndarray, str, os.PathLike]) -> np.ndarray:
    """Check an image argument (or read a path) and return it unchanged: uint8 HxW, HxWx3 (BGR) or HxWx4 (BGRA).

    A path is read upright (its EXIF orientation applied) with alpha kept; a truncated JPEG or PNG
    warns with :class:`fexsdk.images.TruncatedImageWarning`."""
    if isinstance(image, (str, os.PathLike)):
        # Upright (EXIF orientation applied), alpha kept; a truncated file warns (fexsdk.images.read_image).
        image = to_uint8(read_image(image), str(image))
    if image is not None and not isinstance(image, np.ndarray):
        raise ValueError(f"image must be a numpy array or a path, got {type(image).__name__}")
    check_image(image)
    if image.shape[0] * image.shape[1] > MAX_PIXELS:
        raise ValueError(f"image has {image.shape[0] * image.shape[1]:,} pixels; the limit is {MAX_PIXELS:,} (resize it first)")
    return image


def to_uint8(image: np.ndarray, name: str = "image") -> np.ndarray:
    """A read image file as 8-bit: 16-bit images (PNG, TIFF) are scaled by 255/65535, float images
    (TIFF, EXR) in [0, 1] by 255; other sample types are refused with a ValueError naming ``name``."""
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.uint16:
        return ((image.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    if np.issubdtype(image.dtype, np.floating):
        x = image.astype(np.float32)
        if not np.isfinite(x).all() or x.min() < 0.0 or x.max() > 1.0:
            raise ValueError(f"{name} holds floating-point samples outside [0, 1] (or NaN/inf); fexsdk reads float "
                             "images as 0 = black, 1 = white: save it as 8-bit or 16-bit")
        return np.rint(x * 255.0).astype(np.uint8)
    raise ValueError(f"{name} has {image.dtype} samples; fexsdk reads 8-bit, 16-bit and float [0, 1] images")


def _face(spec: FaceSpec, shape: tuple[int, ...]) -> Face:
    box = spec.box if isinstance(spec, Face) else spec
    if isinstance(box, (str, bytes)):
        raise ValueError(f"a face must be a Face or an (x, y, w, h) box, got {spec!r}")
    try:
        x, y, w, h = (float(v) for v in box)
    except (TypeError, ValueError):
        raise ValueError(f"a face must be a Face or an (x, y, w, h) box, got {spec!r}") from None
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        raise ValueError(f"face box values must be finite numbers, got {spec!r}")
    if not (w > 0 and h > 0):
        raise ValueError(f"face box width and height must be positive, got {spec!r}")
    ih, iw = shape[:2]
    limit = MAX_BOX_FACTOR * max(ih, iw)
    if max(w, h) > limit:
        raise ValueError(f"face box {spec!r} is larger than {MAX_BOX_FACTOR:g}x the image's longer side "
                         f"({iw}x{ih} image); boxes are (x, y, w, h) in pixels")
    if x + w <= 0 or y + h <= 0 or x >= iw or y >= ih:
        raise ValueError(f"face box {spec!r} lies outside the {iw}x{ih} image; boxes are (x, y, w, h) in pixels")
    return spec if isinstance(spec, Face) else Face((x, y, w, h), 1.0)


def _check_seed(seed) -> None:
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, a list of them (one per face) or None, got {seed!r}")


class _LockedDetector:
    """A detector object given by the caller, called by one thread at a time (OpenCV detectors are not
    thread-safe). Its other attributes (name, crop_margin, ...) are the wrapped detector's."""

    def __init__(self, inner: FaceDetector) -> None:
        self._inner = inner
        self._lock = threading.Lock()

    def detect(self, image):
        with self._lock:
            return self._inner.detect(image)

    def __getattr__(self, name: str):
        return getattr(self._inner, name)

    def __repr__(self) -> str:
        return repr(self._inner)


class Transfer:
    """Facial expression transfer on images.

    Args:
        model: a bundled model's name (see :func:`bundled_models`; None is ``"default"``), or a file:
            ``.onnx``, ``.engine``/``.plan`` or a training checkpoint.
        device: "auto" (GPU when the backend has one), "cpu" or "cuda".
        detector: "yunet" (the default, None: the YuNet model shipped in the package), "haar" (OpenCV's cascade),
            a YuNet ``.onnx`` path, an SSD ``.pb`` path, or a detector object.
        blend: "residual" (default: add the generator's change to the luminance) or "replace" (paste its output).
        threads: CPU threads for onnxruntime (None: the usable CPUs, at most 4). Idle threads sleep (no spinning).
        smooth: filter the generator's change before pasting it back, removing the checkerboard
            artefacts of its transposed convolutions (residual blend only).
        align: turn each face's crop so its eyes are level (FER2013's faces are upright), and the change
            back on paste. Needs the detector's eye landmarks (YuNet's; Haar and plain boxes give none, and
            are not turned); tilts under ``fexsdk.crops.MIN_ALIGN_ANGLE`` (2 degrees) are left alone.
        exposure: feed the generator dim or low-contrast faces brought into its training data's range, and
            scale their change back to the face's own contrast (:mod:`fexsdk.exposure`), so a dark face never
            gets a pale mask. Faces already in range are unaffected.
        skip_unsuitable: leave faces turned too far from frontal or too blurred unchanged (they come out
            smudged); their records say why (``FaceRecord.skipped``, :mod:`fexsdk.suitability`). Faces given with
            ``faces=`` are checked too.
    """

    def __init__(self, model: Union[str, os.PathLike, None] = None, device: str = "auto",
                 detector: Union[str, os.PathLike, FaceDetector, None] = None, blend: str = "residual",
                 threads: Optional[int] = None, smooth: bool = True, align: bool = True, exposure: bool = True,
                 skip_unsuitable: bool = True) -> None:
        if blend not in BLEND_MODES:
            raise ValueError(f"blend must be one of {BLEND_MODES}, got {blend!r}")
        if not isinstance(align, (bool, np.bool_)):
            raise ValueError(f"align must be True (turn crops so the eyes are level) or False, got {align!r}")
        check_threads(threads)
        if model is None and not DEFAULT_MODEL.is_file():
            raise FileNotFoundError(f"the bundled model is missing from the installation ({DEFAULT_MODEL}); reinstall fexsdk")
        model = resolve_model(model)
        self.backend: Backend = load_backend(model, device, threads)
        self.meta = self.backend.meta
        # Thread safety: OpenCV's detectors are not thread-safe. A detector built here from its spec is
        # built once per thread that uses this Transfer (detection runs in parallel); a detector object
        # given by the caller is shared under a lock. Everything else (onnxruntime, the crops and
        # paste-back, which write only to new arrays) is safe to share.
        self._detector_spec = None
        self._shared_detector: Optional[_LockedDetector] = None
        self._local = threading.local()
        if detector is None or isinstance(detector, (str, os.PathLike)):
            self._detector_spec = detector
            self._local.detector = make_detector(detector)  # fails here, in the caller's thread, if it must
        else:
            self.detector = detector
        self.blend = blend
        self.smooth = smooth
        self.align = bool(align)
        if not isinstance(exposure, (bool, np.bool_)):
            raise ValueError(f"exposure must be True (fit dim faces to the training data's range) or False, got {exposure!r}")
        self.exposure = bool(exposure)
        if not isinstance(skip_unsuitable, (bool, np.bool_)):
            raise ValueError(f"skip_unsuitable must be True or False, got {skip_unsuitable!r}")
        self.skip_unsuitable = bool(skip_unsuitable)

    @property
    def detector(self) -> FaceDetector:
        """The face detector (each thread gets its own where it was built from a spec)."""
        if self._shared_detector is not None:
            return self._shared_detector
        det = getattr(self._local, "detector", None)
        if det is None:
            det = self._local.detector = make_detector(self._detector_spec)
        return det

    @detector.setter
    def detector(self, value) -> None:
        det = make_detector(value)
        self._detector_spec = None
        self._shared_detector = det if isinstance(det, _LockedDetector) else _LockedDetector(det)

    @property
    def detector_name(self) -> str:
        """The face detector's name ("yunet", "haar", ...; a detector object's class name where it has none)."""
        det = self.detector
        return getattr(det, "name", type(det).__name__)

    def __repr__(self) -> str:
        return f"Transfer(backend={self.backend.name}, preset={self.meta.preset!r}, detector={self.detector.name})"

    @classmethod
    def from_options(cls, options: Optional[TransferOptions] = None) -> "Transfer":
        """A Transfer built from :class:`~fexsdk.options.TransferOptions` (None: the defaults). Its
        ``detect_size``, when set, gives the Transfer a detector that sees a copy of the image at most that
        many pixels on its longer side (:meth:`clone`); its ``strength`` is for the calls (``apply(strength=)``)."""
        o = (options or TransferOptions()).validate()
        tr = cls(o.model, device=o.device, detector=o.detector, blend=o.blend, threads=o.threads, smooth=o.smooth,
                 align=o.align, exposure=o.exposure, skip_unsuitable=o.skip_unsuitable)
        return tr if o.detect_size is None else tr.clone(detect_size=o.detect_size)

    def clone(self, backend: Optional[Backend] = None, detect_size: Optional[int] = None,
              wrap: Optional[Callable[[Backend], Backend]] = None) -> "Transfer":
        """This Transfer with the same options and model, without opening the model file again.

        ``backend``: the clone runs this backend instead (it must take this model's inputs, e.g. a wrapper
        around :attr:`backend`); None shares this one. The clone's detector is its own, built anew from the
        same spec (one per thread that uses the clone, as here); a detector object given by the caller cannot
        be rebuilt and stays shared, under its lock. ``detect_size``: the clone's YuNet sees a copy of the
        frame at most this many pixels on its longer side (:meth:`fexsdk.faces.YuNetDetector.with_input_size`;
        one detector, used under a lock); other detectors are unaffected. ``wrap``: the clone runs
        ``wrap(backend)`` (e.g. a wrapper that batches or counts the generator calls around this one).
        """
        twin = copy.copy(self)
        twin.backend = self.backend if backend is None else backend
        if wrap is not None:
            twin.backend = wrap(twin.backend)
        twin.meta = twin.backend.meta
        twin._local = threading.local()
        if detect_size is not None:
            det = make_detector(self._detector_spec) if self._shared_detector is None else self._shared_detector
            resize = getattr(det, "with_input_size", None)
            if callable(resize):
                twin.detector = resize(detect_size)
        elif self._shared_detector is None:
            twin._local.detector = make_detector(self._detector_spec)  # built in the caller's thread, as in __init__
        return twin

    # -- the raw model --------------------------------------------------------
    def _noise(self, seed, face_ids: Sequence[int], dropout: bool):
        """The noise policy (:func:`fexsdk.noise.noise_for`): an int seed gives face ``f`` the stream (seed, f);
        a list gives face i the noise face 0 gets under seeds[i]; None draws fresh noise."""
        n = len(face_ids)
        if isinstance(seed, np.random.SeedSequence):
            return draw_noise(self.meta, n, seed.spawn(n), enabled=dropout)
        if seed is None or isinstance(seed, (int, np.integer)) or not dropout:
            return noise_for(self.meta, None if seed is None else int(seed), face_ids, dropout)
        seeds = list(seed)
        if len(seeds) != n:
            raise ValueError(f"got {len(seeds)} seeds for {n} faces; give one seed, or exactly one per face")
        rows = [noise_for(self.meta, int(s), [0]) for s in seeds]
        return None if self.meta.noise_size == 0 else np.concatenate(rows) if rows else None

    def run_outputs(self, x: np.ndarray, targets, seed: Seeds = None, dropout: bool = True, domain: int = 0,
                    face_ids: Optional[Sequence[int]] = None) -> dict[str, np.ndarray]:
        """(N, C, s, s) float32 in the model's space -> every output of the generator by name."""
        n = x.shape[0]
        check_target(targets)
        self._check_seed_arg(seed)
        labels = self.meta.label_for(target_matrix(targets, n), domain)
        if n == 0:
            return {name: np.zeros((0, *x.shape[1:]), np.float32) for name in self.meta.outputs}
        ids = list(range(n)) if face_ids is None else [int(f) for f in face_ids]
        noise = self._noise(seed, ids, dropout)
        if not self.meta.is_warp:  # the image is all there is
            return {"output": self.backend.run(x, labels, noise)}
        if not callable(getattr(self.backend, "run_outputs", None)):
            raise ValueError(f"{self.meta.preset or 'this'} is a warp-head model, whose paste-back needs its flow and "
                             f"residual, but the backend {type(self.backend).__name__} returns the image only (no run_outputs)")
        return self.backend.run_outputs(x, labels, noise)

    def run_fitted(self, x: np.ndarray, targets, seed: Seeds = None, dropout: bool = True, domain: int = 0,
                   face_ids: Optional[Sequence[int]] = None) -> dict[str, np.ndarray]:
        """:meth:`run_outputs` through the exposure fit (when :attr:`exposure` is on): the generator sees each
        face at its training data's brightness and contrast, and its change comes back at the face's own."""
        if not self.exposure or len(x) == 0:
            return self.run_outputs(x, targets, seed, dropout, domain, face_ids)
        m = self.meta
        pixels = (x + np.float32(m.pixel_offset)) * np.float32(m.pixel_scale)
        fit = fit_exposure(pixels)
        fed = m.to_model(np.clip(fit.apply(pixels), 0, 255))
        outs = dict(self.run_outputs(fed, targets, seed, dropout, domain, face_ids))
        outs["output"] = x + fit.change_back(outs["output"] - fed)
        if "residual" in outs:
            outs["residual"] = fit.change_back(outs["residual"])
        return outs

    def run_model(self, x: np.ndarray, targets, seed: Seeds = None, dropout: bool = True, domain: int = 0,
                  face_ids: Optional[Sequence[int]] = None) -> np.ndarray:
        """(N, C, s, s) float32 in the model's space -> the generator's image output, same shape."""
        return self.run_outputs(x, targets, seed, dropout, domain, face_ids)["output"]

    def generate(self, crops: np.ndarray, targets, seed: Seeds = None, dropout: bool = True) -> np.ndarray:
        """Change the expression of ready crops (the model's size: e.g. 48x48 gray).

        ``crops``: uint8 (N, s, s) for gray models or (N, C, s, s); returns uint8 of the same shape.
        ``targets``: one target for all (name, alias, index or {name: intensity}) or one per crop.
        Crop i is face i for the noise (as in :meth:`apply` and ``fex eval``).
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
        n = x.shape[0]
        check_target(targets)
        self._check_seed_arg(seed)
        per_crop = per_face_targets(targets, n)  # refuses a list of the wrong length before any work
        if isinstance(seed, np.random.SeedSequence):  # spawns per call: one call, one batch
            out = m.to_pixels(self.run_fitted(m.to_model(x), targets, seed, dropout)["output"])
            return out[:, 0] if squeeze else out
        seeds = seed if seed is None or isinstance(seed, (int, np.integer)) else list(seed)
        if isinstance(seeds, list) and len(seeds) != n:
            raise ValueError(f"got {len(seeds)} seeds for {n} crops; give one seed, or exactly one per crop")
        out = np.empty_like(x)
        # Bounded chunks: memory stays flat for any N (the graph's activations are ~3 MB per face), and
        # each crop keeps its own noise (its index picks its stream), so the result equals one big batch.
        for start in range(0, n, GENERATE_CHUNK):
            stop = min(start + GENERATE_CHUNK, n)
            chunk_seed = seeds[start:stop] if isinstance(seeds, list) else seeds
            ids = None if isinstance(seeds, list) else range(start, stop)
            outs = self.run_fitted(m.to_model(x[start:stop]), per_crop[start:stop],
                                   chunk_seed, dropout, face_ids=ids)
            out[start:stop] = m.to_pixels(outs["output"])
        return out[:, 0] if squeeze else out

    # -- the stages: detect -> frame -> crop -> generate -> paste ---------------------
    def detect(self, image) -> list[Face]:
        """Stage 1: the faces the detector finds."""
        return self.detector.detect(load_image(image))

    def frame(self, image, faces: Sequence[FaceSpec], face_ids: Optional[Sequence[int]] = None) -> list[FaceRecord]:
        """Stage 2: a record per face with the square box its crop is cut from (framed like the detector's
        boxes, turned so the eyes are level where :attr:`align` is on and the face has landmarks).
        ``face_ids`` pick each face's noise (default: 0, 1, 2, ... in order; track ids in video)."""
        image = load_image(image)
        if isinstance(faces, (str, bytes, Face)) or not isinstance(faces, (Sequence, np.ndarray)):
            raise ValueError(f"faces must be a list of (x, y, w, h) boxes or Face objects, got {faces!r}")
        found = [_face(f, image.shape) for f in faces]
        ids = list(range(len(found))) if face_ids is None else [int(i) for i in face_ids]
        if len(ids) != len(found):
            raise ValueError(f"got {len(ids)} face ids for {len(found)} faces")
        t0 = time.perf_counter()
        records = [FaceRecord(f, i, crop_box_for(f, self.detector, align=self.align)) for f, i in zip(found, ids)]
        if records:
            _share(records, "frame", time.perf_counter() - t0)
        return records

    def crop(self, image, records: Sequence[FaceRecord]) -> list[FaceRecord]:
        """Stage 3: each record's crop, scaled to the model's size and normalised as its metadata says."""
        if records:
            t0 = time.perf_counter()
            m = self.meta
            x = m.to_model(extract_crops(load_image(image), [r.box for r in records], m.image_size, m.channels))
            for r, c in zip(records, x):
                r.crop = c
            _share(records, "crop", time.perf_counter() - t0)
        return list(records)

    def mark_unsuitable(self, records: Sequence[FaceRecord]) -> list[FaceRecord]:
        """After :meth:`crop`: set ``skipped`` on faces too turned or too blurred to edit (when :attr:`skip_unsuitable`)."""
        m = self.meta
        for r in records:
            r.skipped = unsuitable_reason(r.face, (r.crop + m.pixel_offset) * m.pixel_scale) if self.skip_unsuitable else None
        return list(records)

    def generate_faces(self, records: Sequence[FaceRecord], target, *, seed: Seeds = None, dropout: bool = True,
                       domain: int = 0) -> list[FaceRecord]:
        """Stage 4: all cropped faces through the generator as one batch; fills ``output`` (and ``parts``)."""
        if records:
            t0 = time.perf_counter()
            x = np.stack([r.crop for r in records])
            outs = self.run_fitted(x, target, seed, dropout, domain, [r.face_id for r in records])
            vectors = target_matrix(target, len(records))
            for i, r in enumerate(records):
                r.output = outs["output"][i]
                r.parts = {k: v[i] for k, v in outs.items() if k != "output"}
                r.target = vectors[i]
            _share(records, "generate", time.perf_counter() - t0)
        return list(records)

    def paste(self, image, records: Sequence[FaceRecord], strength: Optional[float] = None) -> np.ndarray:
        """Stage 5: the change put back into a copy of the full-resolution image. Warp-head models move
        the face's own pixels by the upsampled flow (:func:`fexsdk.warp_paste.paste_warp`) with the
        ``residual`` blend; everything else goes through :func:`fexsdk.paste.paste_back`.

        ``strength`` None: each face's change is scaled by its target's default strength
        (``ModelMetadata.default_strength``, weighted by intensity; the records' ``target``)."""
        image = load_image(image)
        if not records:
            return image.copy()
        t0 = time.perf_counter()
        boxes = [r.box for r in records]
        if strength is None:
            none = np.zeros(len(self.meta.emotions), np.float32)  # a record not from generate_faces: strength 1
            k = self.meta.strength_for(np.stack([none if r.target is None else r.target for r in records]))
            strength = 1.0
        else:
            k = np.ones(len(records), np.float32)
        k4 = k[:, None, None, None]
        crops, outputs = np.stack([r.crop for r in records]), np.stack([r.output for r in records])
        if self.meta.is_warp and self.blend == "residual":
            out = paste_warp(image, boxes, k4 * np.stack([r.parts["flow"] for r in records]),
                             k4 * np.stack([r.parts["residual"] for r in records]), strength=strength,
                             scale=self.meta.pixel_scale)
        else:
            out = paste_back(image, boxes, crops, crops + k4 * (outputs - crops),
                             strength=strength, blend=self.blend, smooth=self.smooth,
                             scale=self.meta.pixel_scale, offset=self.meta.pixel_offset)
        _share(records, "paste", time.perf_counter() - t0)
        return out

    # -- whole images -----------------------------------------------------------
    def _check_seed_arg(self, seed) -> None:
        if seed is not None and not isinstance(seed, np.random.SeedSequence):
            if isinstance(seed, (str, bytes, Mapping)) or not isinstance(seed, (Sequence, np.ndarray)):
                _check_seed(seed)
            else:
                for s in seed:
                    _check_seed(s)

    def _check_call(self, target, seed, strength) -> None:
        """Argument checks done before any work (detection included)."""
        check_target(target)
        self._check_seed_arg(seed)
        if strength is None:  # the model's default strength per emotion
            return
        if isinstance(strength, (bool, np.bool_)) or not isinstance(strength, (int, float, np.integer, np.floating)):
            raise ValueError(f"strength must be a number, got {strength!r}")
        if not np.isfinite(strength) or not 0 <= strength <= MAX_STRENGTH:
            raise ValueError(f"strength must be a number in [0, {MAX_STRENGTH:g}] (0 = unchanged, 1 = the model's "
                             f"change, {MAX_STRENGTH:g} = twice it), got {strength}")

    def _choose(self, image, target, faces) -> tuple[list, list[int], Union[Target, list[Target]], float]:
        """The faces to change, their ids (left-to-right index among the detected faces, or the box's index),
        their targets, and the detection milliseconds; see :meth:`apply`'s ``faces`` and ``target``."""
        per_face = isinstance(target, Mapping) and len(target) > 0 and all(
            isinstance(k, (int, np.integer)) and not isinstance(k, bool) for k in target)
        if per_face:
            if faces is not None:
                raise ValueError("give either faces= or a per-face target {index: emotion}, not both")
            faces = sorted(int(k) for k in target)
        picks = faces is None or isinstance(faces, str) or (
            isinstance(faces, (Sequence, np.ndarray)) and len(faces) > 0
            and all(isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in faces))
        if not picks:  # boxes or Face objects given: no detection
            if isinstance(faces, (bytes, Face)) or not isinstance(faces, (Sequence, np.ndarray)):
                raise ValueError(f"faces must be a list of (x, y, w, h) boxes or Face objects, \"largest\" or a list of "
                                 f"face indices (left to right), got {faces!r}")
            return list(faces), list(range(len(faces))), target, 0.0
        if isinstance(faces, str) and faces != "largest":
            raise ValueError(f"faces must be \"largest\", a list of face indices (left to right) or of boxes, got {faces!r}")
        t0 = time.perf_counter()
        detected = sorted(self.detector.detect(image), key=lambda f: f.center[0])  # numbered left to right
        detect_ms = 1000.0 * (time.perf_counter() - t0)
        if faces is None:
            ids = list(range(len(detected)))
        elif faces == "largest":
            ids = [max(range(len(detected)), key=lambda i: detected[i].box[2] * detected[i].box[3])] if detected else []
        else:
            ids = sorted({int(i) for i in faces})
            bad = [i for i in ids if not 0 <= i < len(detected)]
            if bad:
                raise ValueError(f"face index {bad[0]} is out of range: {len(detected)} face(s) found, numbered 0 to "
                                 f"{len(detected) - 1} from left to right")
        return [detected[i] for i in ids], ids, ([target[i] for i in ids] if per_face else target), detect_ms

    def process(self, image, target: Union[Target, Sequence[Target], Mapping[int, Target]], *,
                faces: Union[Sequence[FaceSpec], Sequence[int], str, None] = None,
                seed: Seeds = None, strength: Optional[float] = None, dropout: bool = True) -> TransferResult:
        """Like :meth:`apply`, returning a :class:`TransferResult` with the face records and stage timings."""
        image = load_image(image)
        if isinstance(target, Mapping) and target and all(isinstance(k, (int, np.integer)) for k in target):
            for t in target.values():  # a per-face target: each face's own
                check_target(t)
            self._check_call(next(iter(target.values())), seed, strength)
        else:
            self._check_call(target, seed, strength)
        found, ids, target, detect_ms = self._choose(image, target, faces)
        records = self.frame(image, found, face_ids=ids)
        if not records:  # no face: the image comes back unchanged (a copy)
            return TransferResult(image.copy(), [], [], timings={"detect": detect_ms})
        for r in records:
            r.timings["detect"] = detect_ms / len(records)
        self.crop(image, records)
        targets = per_face_targets(target, len(records))  # one per face, so skipped faces can be left out
        self.mark_unsuitable(records)
        edit = [i for i, r in enumerate(records) if r.skipped is None]
        if seed is not None and not isinstance(seed, (int, np.integer, np.random.SeedSequence)):
            seeds = list(seed)  # one per face of the call: the edited faces keep theirs
            if len(seeds) != len(records):
                raise ValueError(f"got {len(seeds)} seeds for {len(records)} faces; give one seed, or exactly one per face")
            seed = [seeds[i] for i in edit]
        self.generate_faces([records[i] for i in edit], [targets[i] for i in edit], seed=seed, dropout=dropout)
        for r in records:
            if r.skipped is not None:
                r.output = r.crop
        out = self.paste(image, [records[i] for i in edit], strength)
        timings = {stage: sum(r.timings.get(stage, 0.0) for r in records) for stage in STAGES}
        return TransferResult(out, [r.face for r in records], [r.box for r in records],
                              np.stack([r.crop for r in records]), np.stack([r.output for r in records]), records, timings)

    def apply(self, image, target: Union[Target, Sequence[Target], Mapping[int, Target]], *,
              faces: Union[Sequence[FaceSpec], Sequence[int], str, None] = None,
              seed: Seeds = None, strength: Optional[float] = None, dropout: bool = True, return_faces: bool = False):
        """Change the expression of every face in ``image``; returns a new image of the same shape and dtype.

        Args:
            image: BGR uint8 HxWx3 (OpenCV's convention), gray HxW or BGRA HxWx4, or a path to an image file.
            target: an emotion name or alias ("surprise", "joy"), an index, a dict of intensities
                ({"happy": 0.7}), a list with one of those per face, or a target per face by its index
                ({0: "happy", 2: "sad"}: faces numbered left to right; faces not named stay as they are).
            faces: which faces to change: None (all the detector finds), "largest", a list of indices
                (left to right, e.g. [0, 2]), or (x, y, w, h) boxes or Face objects to use instead of running the
                detector (framed like the configured detector's boxes: see fexsdk.crops). Faces not chosen stay
                bit-identical; a chosen face keeps the noise it has when all faces are changed.
            seed: fixes the test-time dropout noise (same seed, same output): an int gives face i the
                stream (seed, i) (:func:`fexsdk.noise.noise_for`, as ``fex demo`` and ``fex eval`` do), a list
                gives face i the noise of face 0 under its own seed; None draws new noise each call.
            strength: scales the change, in [0, 2] (0 = unchanged, 1 = the model's change). None (the default):
                each target emotion's strength from the model's metadata (``default_strength``; 1 where it
                names none), chosen where the edit is believable on real photos.
            dropout: False switches the test-time dropout off (the deterministic, eval-mode model).
            return_faces: also return the list of faces found.

        An image with no face is returned unchanged (as a copy); the face list is then empty.
        """
        result = self.process(image, target, faces=faces, seed=seed, strength=strength, dropout=dropout)
        return (result.image, result.faces) if return_faces else result.image
