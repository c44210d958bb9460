"""Live video: expression transfer on a webcam or a video file (``fex demo``).

Video is not a series of unrelated photos. Running the detector and drawing
fresh test-time dropout noise on every frame makes the boxes jitter and the
changed faces flicker, so the pieces here:

- :class:`FaceTracker` runs on the frames where the detector ran (every
  ``detect_every`` frames): it matches the new boxes to its tracks by IoU,
  smooths each track's box (exponential moving average, plus an optional
  velocity estimate that moves the box on between detections; velocity 0
  holds the boxes still), and drops a track that was not seen for
  ``drop_after`` detections in a row. Each track gets its own noise seed when
  it is created (``base_seed + track id``), so a tracked face keeps the same
  dropout noise (the same generated expression) for as long as it is tracked,
  and a new face gets noise of its own.
- :class:`FrameReader` reads frames in a background thread. From a camera (or
  a stream URL) it keeps only the newest frame and drops stale ones, so the
  camera is never waited on; from a video file it hands over every frame, in
  order. Every wait is bounded: a source that does not open or stops giving
  frames raises :class:`VideoSourceError` instead of hanging.
- :class:`VideoSink` writes the result (codec from the file's suffix).
- :class:`DemoLoop` ties them together with a :class:`fexsdk.Transfer`, draws
  the overlay (emotion, FPS, per-stage timings) and handles the window's keys;
  :func:`run_demo` runs it from a :class:`DemoConfig`.

Nothing here needs a window: with ``output`` or ``headless`` set, no GUI is
touched, which is how it runs on servers and in tests.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import cv2
import numpy as np

from fexsdk.emotions import EMOTIONS, emotion_index
from fexsdk.faces import box_iou
from fexsdk.images import to_bgr

__all__ = [
    "DemoConfig",
    "DemoLoop",
    "DemoStats",
    "FaceTracker",
    "Frame",
    "FrameReader",
    "FrameTimeout",
    "GuiUnavailable",
    "Track",
    "VideoSink",
    "VideoSourceError",
    "box_iou",
    "gui_support",
    "run_demo",
]

Box = tuple[float, float, float, float]

#: Keys understood by the demo window (also printed when it opens).
KEY_HELP = "keys: 1-7 emotion, n/p next/previous, s save frame, space original/transfer, q/Esc quit"
#: Codec used for an output file, by suffix (anything else: mp4v).
FOURCC_BY_SUFFIX = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "FFV1"}
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".pgm", ".ppm"}
_GUI_INSTALL = 'pip uninstall opencv-python-headless && pip install "opencv-python<5"'


class VideoSourceError(RuntimeError):
    """A camera or stream that cannot be opened or stopped delivering frames."""


class FrameTimeout(VideoSourceError):
    """No frame arrived within the allowed time."""


class GuiUnavailable(RuntimeError):
    """A window was asked for but this OpenCV (or this machine) cannot show one."""


# ---------------------------------------------------------------------------
# Tracking
# ---------------------------------------------------------------------------


def _as_box(det: Any) -> tuple[Box, float]:
    """A Face (``.box``, ``.score``) or an (x, y, w, h) sequence -> (box, score)."""
    box = getattr(det, "box", det)
    score = float(getattr(det, "score", 1.0))
    try:
        x, y, w, h = (float(v) for v in box)
    except (TypeError, ValueError):
        raise ValueError(f"a detection must be a Face or an (x, y, w, h) box, got {det!r}") from None
    if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
        raise ValueError(f"a detection box needs finite values and positive width and height, got {det!r}")
    return (x, y, w, h), score


@dataclass
class Track:
    """One tracked face.

    ``box`` is the smoothed (x, y, w, h) box used for the transfer, as of frame
    ``updated``; ``velocity`` its estimated change per frame (zero when the
    tracker does not predict). ``raw_box`` is the last detection matched to the
    track. ``seed`` fixes the face's dropout noise for the track's whole life
    (None: fresh noise every frame). ``misses`` counts the detections in a row
    that did not see the face.
    """

    id: int
    box: Box
    raw_box: Box
    seed: Optional[int]
    score: float = 1.0
    hits: int = 1
    misses: int = 0
    first_frame: int = 0
    last_seen: int = 0
    updated: int = 0
    velocity: Box = (0.0, 0.0, 0.0, 0.0)


def _valid_box(box: Sequence[float]) -> Box:
    x, y, w, h = box
    return (float(x), float(y), max(float(w), 1.0), max(float(h), 1.0))


class FaceTracker:
    """Boxes from a detector that runs every few frames -> stable, smoothed face tracks.

    Args:
        iou_threshold: a detection continues a track when their boxes overlap at least this much.
        smoothing: weight of the track's own (predicted) box against a new detection, in [0, 1)
            (0: jump to each detection; 0.5: move half-way).
        drop_after: a track not seen for this many detections in a row is dropped.
        base_seed: track ``i`` gets the noise seed ``base_seed + i``; None gives every track ``seed=None``.
        velocity: gain of the velocity estimate, in [0, 1]. 0 holds each box still between
            detections (a plain moving average); above 0 the box also moves on at the face's
            estimated speed between detections (an alpha-beta filter), so a moving face stays
            under its box (on a face moving 2 px/frame with detection every 3 frames, this
            halves the flicker, see ``benchmarks/flicker.py --motion 2``).

    Matching is greedy on IoU (the best-overlapping pair first), against each
    track's box predicted for the detection's frame. Call :meth:`update` on
    frames where the detector ran and :meth:`predict` on the frames in between.
    """

    def __init__(self, iou_threshold: float = 0.3, smoothing: float = 0.5, drop_after: int = 3,
                 base_seed: Optional[int] = 0, velocity: float = 0.3) -> None:
        if not 0.0 < float(iou_threshold) <= 1.0:
            raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
        if not 0.0 <= float(smoothing) < 1.0:
            raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
        if not 0.0 <= float(velocity) <= 1.0:
            raise ValueError(f"velocity must be in [0, 1], got {velocity}")
        if isinstance(drop_after, bool) or int(drop_after) != drop_after or drop_after < 1:
            raise ValueError(f"drop_after must be an integer >= 1, got {drop_after}")
        self.iou_threshold = float(iou_threshold)
        self.smoothing = float(smoothing)
        self.velocity = float(velocity)
        self.drop_after = int(drop_after)
        self.base_seed = None if base_seed is None else int(base_seed)
        self._tracks: list[Track] = []
        self._next_id = 0
        self._last_frame: Optional[int] = None
        #: Tracks created so far (ids are never reused).
        self.created = 0

    @property
    def tracks(self) -> list[Track]:
        """The live tracks, in id order."""
        return list(self._tracks)

    def reset(self) -> None:
        """Forget every track (ids keep counting up, so seeds are not reused)."""
        self._tracks = []
        self._last_frame = None

    def _advance(self, frame_index: int) -> None:
        frame_index = int(frame_index)
        if self._last_frame is not None and frame_index < self._last_frame:
            raise ValueError(f"frame_index went backwards ({frame_index} after {self._last_frame})")
        self._last_frame = frame_index
        for t in self._tracks:
            dt = frame_index - t.updated
            if dt > 0 and any(t.velocity):
                t.box = _valid_box(b + v * dt for b, v in zip(t.box, t.velocity))
            t.updated = frame_index

    def predict(self, frame_index: int) -> list[Track]:
        """The live tracks with their boxes moved on to ``frame_index`` (a frame without detection)."""
        self._advance(frame_index)
        return self.tracks

    def update(self, detections: Sequence[Any], frame_index: int) -> list[Track]:
        """Feed the detections of frame ``frame_index``; returns the live tracks in id order."""
        dets = [_as_box(d) for d in detections]
        self._advance(frame_index)
        frame_index = int(frame_index)
        pairs = []
        for ti, track in enumerate(self._tracks):
            for di, (box, _) in enumerate(dets):
                iou = box_iou(track.box, box)
                if iou >= self.iou_threshold:
                    pairs.append((-iou, ti, di))
        pairs.sort()
        used_t: set[int] = set()
        used_d: set[int] = set()
        gain = 1.0 - self.smoothing
        for _, ti, di in pairs:
            if ti in used_t or di in used_d:
                continue
            used_t.add(ti)
            used_d.add(di)
            track = self._tracks[ti]
            box, score = dets[di]
            residual = [n - o for n, o in zip(box, track.box)]
            dt = frame_index - track.last_seen
            track.box = _valid_box(o + gain * r for o, r in zip(track.box, residual))
            if self.velocity > 0 and dt > 0:
                track.velocity = tuple(v + self.velocity * r / dt for v, r in zip(track.velocity, residual))  # type: ignore[assignment]
            track.raw_box = box
            track.score = score
            track.hits += 1
            track.misses = 0
            track.last_seen = frame_index
        for ti, track in enumerate(self._tracks):
            if ti not in used_t:
                track.misses += 1
                track.velocity = tuple(0.5 * v for v in track.velocity)  # type: ignore[assignment]
        self._tracks = [t for t in self._tracks if t.misses < self.drop_after]
        for di, (box, score) in enumerate(dets):
            if di in used_d:
                continue
            tid = self._next_id
            self._next_id += 1
            self.created += 1
            seed = None if self.base_seed is None else self.base_seed + tid
            self._tracks.append(Track(tid, box, box, seed, score, first_frame=frame_index, last_seen=frame_index,
                                      updated=frame_index))
        self._tracks.sort(key=lambda t: t.id)
        return self.tracks


# ---------------------------------------------------------------------------
# Reading frames
# ---------------------------------------------------------------------------


@dataclass
class Frame:
    """A frame from a :class:`FrameReader`: its position in the stream (dropped frames count) and the BGR image."""

    index: int
    image: np.ndarray
    time: float


def _emotion(value: Union[str, int]) -> int:
    """An emotion name, alias or index (also as a digit string, as typed on a command line) -> index."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    return emotion_index(value)


def _is_url(source: Any) -> bool:
    return isinstance(source, str) and "://" in source


@contextlib.contextmanager
def _quiet_opencv():
    """OpenCV's own log warnings off for a moment (a missing camera logs several)."""
    log = getattr(getattr(cv2, "utils", None), "logging", None)
    try:
        level = log.getLogLevel()
        log.setLogLevel(log.LOG_LEVEL_ERROR)
    except Exception:  # pragma: no cover - an OpenCV without cv2.utils.logging
        level = None
    try:
        yield
    finally:
        if level is not None:
            log.setLogLevel(level)


def _camera_hint() -> str:
    if not sys.platform.startswith("linux"):
        return ""
    devices = sorted(str(p) for p in Path("/dev").glob("video*"))
    return f"; video devices here: {', '.join(devices)}" if devices else "; this machine has no /dev/video* devices"


def _open_capture(source: Union[int, str]):
    """Default capture factory: cv2.VideoCapture, with a clear error when it does not open."""
    with _quiet_opencv():
        cap = cv2.VideoCapture(source)
    if cap is not None and cap.isOpened():
        return cap
    if cap is not None:
        cap.release()
    if isinstance(source, int):
        raise VideoSourceError(f"could not open camera {source}: no such camera, or another program is using it "
                               f"(try another --camera index, or --input a video file){_camera_hint()}")
    if _is_url(source):
        raise VideoSourceError(f"could not open the stream {source}")
    raise ValueError(f"{source} is not a video OpenCV can read (unknown format or damaged file)")


class FrameReader:
    """Reads frames from a camera, stream or video file in a background thread.

    Args:
        source: a camera index (int), a video file path, or a stream URL (``rtsp://...``).
        live: keep only the newest frame, dropping stale ones (default for cameras and URLs);
            False hands over every frame in order (default for files).
        buffer: frames read ahead from a file (the reader waits when they are not taken).
        open_timeout: seconds :meth:`start` waits for the source to open and give its first frame.
        capture_factory: ``f(source) -> capture`` with ``read()`` and ``release()`` (and optionally
            ``get()``); default ``cv2.VideoCapture``. Lets tests feed a fake camera.

    Use as a context manager, or call :meth:`start` and :meth:`stop`. :meth:`read`
    returns the next :class:`Frame`, or None once the stream has ended.
    """

    def __init__(self, source: Union[int, str, os.PathLike], *, live: Optional[bool] = None, buffer: int = 8,
                 open_timeout: float = 10.0, capture_factory: Optional[Callable[[Any], Any]] = None) -> None:
        if isinstance(source, bool) or not isinstance(source, (int, str, os.PathLike)):
            raise ValueError(f"source must be a camera index, a video file path or a stream URL, got {source!r}")
        if isinstance(source, os.PathLike):
            source = os.fspath(source)
        self.source: Union[int, str] = source
        self.is_camera = isinstance(source, int)
        self.live = (self.is_camera or _is_url(source)) if live is None else bool(live)
        if not open_timeout > 0:
            raise ValueError(f"open_timeout must be > 0, got {open_timeout}")
        self.open_timeout = float(open_timeout)
        self._limit = 1 if self.live else max(1, int(buffer))
        self._factory = capture_factory or _open_capture
        self._buf: deque[Frame] = deque()
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._opened = threading.Event()
        self._open_error: Optional[BaseException] = None
        self._error: Optional[BaseException] = None
        self._finished = False
        self._thread: Optional[threading.Thread] = None
        #: Frames read from the source, and those dropped as stale (live mode).
        self.frames_read = 0
        self.frames_dropped = 0
        #: From the source once open (None where it does not say).
        self.fps: Optional[float] = None
        self.size: Optional[tuple[int, int]] = None  # (width, height)
        self.frame_count: Optional[int] = None

    def describe(self) -> str:
        if self.is_camera:
            return f"camera {self.source}"
        return f"stream {self.source}" if _is_url(self.source) else f"video {self.source}"

    # -- lifecycle ------------------------------------------------------------
    def _check_source(self) -> None:
        if self.is_camera:
            if self.source < 0:
                raise ValueError(f"camera index must be >= 0, got {self.source}")
            return
        if _is_url(self.source):
            return
        path = Path(self.source)
        if not path.exists():
            raise FileNotFoundError(f"video file not found: {path}")
        if path.is_dir():
            raise ValueError(f"{path} is a folder, not a video file")
        if path.suffix.lower() in _IMAGE_SUFFIXES:
            raise ValueError(f"{path} is an image, not a video; use `fex apply` for photos")

    def start(self) -> "FrameReader":
        """Open the source (waiting at most ``open_timeout`` s) and start reading; raises on failure."""
        if self._thread is not None:
            raise RuntimeError("FrameReader.start() was already called")
        self._check_source()
        self._thread = threading.Thread(target=self._run, name=f"fex-reader({self.describe()})", daemon=True)
        self._thread.start()
        if not self._opened.wait(self.open_timeout):
            self.stop(join_timeout=0.0)
            raise VideoSourceError(f"{self.describe()} did not open or give a first frame within "
                                   f"{self.open_timeout:g} s (unplugged, or in use by another program?)")
        if self._open_error is not None:
            self.stop(join_timeout=1.0)
            raise self._open_error
        return self

    def stop(self, join_timeout: float = 2.0) -> None:
        """Stop reading and release the source (waits at most ``join_timeout`` s for the thread)."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        t = self._thread
        if t is not None and t is not threading.current_thread() and join_timeout > 0:
            t.join(join_timeout)

    def __enter__(self) -> "FrameReader":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def ended(self) -> bool:
        """True once the source has no more frames to give (buffered ones may remain)."""
        return self._finished

    # -- the thread -------------------------------------------------------------
    def _run(self) -> None:
        cap = None
        try:
            try:
                cap = self._factory(self.source)
                ok, image = cap.read()
                if not ok or image is None:
                    if self.is_camera or _is_url(self.source):
                        raise VideoSourceError(f"{self.describe()} opened but gave no frame")
                    raise ValueError(f"{self.source} is not a video OpenCV can read (no frame could be decoded)")
                self._read_properties(cap, image)
            except BaseException as exc:  # reported by start()
                self._open_error = exc if isinstance(exc, Exception) else VideoSourceError(str(exc))
                return
            finally:
                self._opened.set()
            index = 0
            while not self._stop.is_set():
                self._publish(Frame(index, image, time.perf_counter()))
                index += 1
                if self._stop.is_set():
                    break
                ok, image = cap.read()
                if not ok or image is None:
                    break
        except Exception as exc:
            self._error = exc if isinstance(exc, (VideoSourceError, ValueError)) else \
                VideoSourceError(f"reading {self.describe()} failed: {exc}")
        finally:
            if cap is not None:
                try:
                    cap.release()
                except Exception:  # pragma: no cover
                    pass
            with self._cond:
                self._finished = True
                self._cond.notify_all()

    def _read_properties(self, cap: Any, image: np.ndarray) -> None:
        self.size = (int(image.shape[1]), int(image.shape[0]))
        get = getattr(cap, "get", None)
        if get is None:
            return
        try:
            fps = float(get(cv2.CAP_PROP_FPS))
            count = float(get(cv2.CAP_PROP_FRAME_COUNT))
        except Exception:
            return
        self.fps = fps if math.isfinite(fps) and 0 < fps < 1000 else None
        self.frame_count = int(count) if math.isfinite(count) and count > 0 else None

    def _publish(self, frame: Frame) -> None:
        with self._cond:
            self.frames_read += 1
            if self.live:
                if self._buf:
                    self.frames_dropped += len(self._buf)
                    self._buf.clear()
            else:
                while len(self._buf) >= self._limit and not self._stop.is_set():
                    self._cond.wait(0.1)
                if self._stop.is_set():
                    return
            self._buf.append(frame)
            self._cond.notify_all()

    # -- the consumer -------------------------------------------------------------
    def read(self, timeout: Optional[float] = 10.0) -> Optional[Frame]:
        """The next frame (the newest one in live mode); None once the stream has ended.

        Raises :class:`FrameTimeout` when no frame arrives within ``timeout`` seconds
        (None waits without limit), and re-raises an error of the reading thread.
        """
        if self._thread is None:
            raise RuntimeError("call FrameReader.start() (or use it in a with block) before read()")
        deadline = None if timeout is None else time.monotonic() + float(timeout)
        with self._cond:
            while True:
                if self._buf:
                    frame = self._buf.popleft()
                    self._cond.notify_all()
                    return frame
                if self._error is not None:
                    raise self._error
                if self._finished:
                    return None
                if self._stop.is_set():
                    return None
                if deadline is None:
                    self._cond.wait(1.0)
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise FrameTimeout(f"no frame from {self.describe()} within {timeout:g} s")
                self._cond.wait(remaining)


# ---------------------------------------------------------------------------
# Writing and showing frames
# ---------------------------------------------------------------------------


def _check_output_path(path: Union[str, os.PathLike]) -> Path:
    path = Path(path)
    if path.suffix.lower() in _IMAGE_SUFFIXES or not path.suffix:
        raise ValueError(f"output {path} must be a video file name such as out.mp4, out.avi or out.mkv")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise FileNotFoundError(f"output folder does not exist: {parent}")
    if path.is_dir():
        raise ValueError(f"output {path} is a folder")
    return path


class VideoSink:
    """Writes BGR frames to a video file; the codec follows the suffix unless ``fourcc`` is given.

    ``.mp4``/``.mov``: mp4v, ``.avi``: MJPG, ``.mkv``: FFV1 (lossless), others: mp4v.
    """

    def __init__(self, path: Union[str, os.PathLike], fps: float, size: tuple[int, int],
                 fourcc: Optional[str] = None) -> None:
        self.path = _check_output_path(path)
        code = fourcc or FOURCC_BY_SUFFIX.get(self.path.suffix.lower(), "mp4v")
        if len(code) != 4:
            raise ValueError(f"a codec (fourcc) has 4 characters, e.g. mp4v, MJPG, FFV1, XVID; got {code!r}")
        self.fourcc = code
        self.fps = float(fps) if fps and math.isfinite(fps) and fps > 0 else 30.0
        self.size = (int(size[0]), int(size[1]))
        self.frames = 0
        self._writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*code), self.fps, self.size, True)
        if not self._writer.isOpened():
            self._writer.release()
            raise ValueError(f"OpenCV could not open {self.path} for writing with codec {code!r}; try "
                             "out.mp4 (mp4v), out.avi (MJPG) or out.mkv (FFV1), or another --fourcc")

    def write(self, frame: np.ndarray) -> None:
        frame = to_bgr(frame)
        if (frame.shape[1], frame.shape[0]) != self.size:
            frame = cv2.resize(frame, self.size, interpolation=cv2.INTER_AREA)
        self._writer.write(np.ascontiguousarray(frame))
        self.frames += 1

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None

    def __enter__(self) -> "VideoSink":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def gui_support() -> tuple[bool, str]:
    """(True, "") when OpenCV can open a window here, else (False, why not)."""
    if not callable(getattr(cv2, "imshow", None)) or not callable(getattr(cv2, "namedWindow", None)):
        return False, f"this OpenCV ({cv2.__version__}) has no cv2.imshow"
    try:
        info = cv2.getBuildInformation()
    except Exception:  # pragma: no cover
        info = ""
    m = re.search(r"^\s*GUI:\s*(\S+)", info, re.MULTILINE)
    if m and m.group(1).upper() == "NONE":
        return False, f"this OpenCV ({cv2.__version__}) was built without GUI support (opencv-python-headless)"
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return False, "there is no display to show it on (DISPLAY is not set)"
    return True, ""


def _gui_message(reason: str) -> str:
    msg = (f"fex demo needs a window to show the video, but {reason}. Run without a window with "
           "--output out.mp4 or --headless")
    if "display" in reason:
        return msg + "."
    return msg + f", or install OpenCV's GUI build: {_GUI_INSTALL}"


class CvWindow:
    """An OpenCV window: ``show(frame) -> key`` (-1 for none), ``closed()``, ``close()``."""

    def __init__(self, name: str = "fex demo") -> None:
        ok, reason = gui_support()
        if not ok:
            raise GuiUnavailable(_gui_message(reason))
        self.name = name
        try:
            cv2.namedWindow(name, cv2.WINDOW_NORMAL)
        except cv2.error as exc:
            raise GuiUnavailable(_gui_message(f"OpenCV could not open a window ({str(exc).strip()})")) from None
        self._shown = False

    def show(self, frame: np.ndarray) -> int:
        cv2.imshow(self.name, frame)
        self._shown = True
        key = cv2.waitKey(1)
        return -1 if key < 0 else key & 0xFF

    def closed(self) -> bool:
        if not self._shown:
            return False
        try:
            return cv2.getWindowProperty(self.name, cv2.WND_PROP_VISIBLE) < 1
        except cv2.error:
            return True

    def close(self) -> None:
        try:
            cv2.destroyWindow(self.name)
            cv2.waitKey(1)
        except cv2.error:
            pass


def draw_overlay(image: np.ndarray, lines: Sequence[str]) -> np.ndarray:
    """Draw text lines at the top left of ``image`` (in place) on a dark translucent band; returns it."""
    if not lines:
        return image
    h, w = image.shape[:2]
    scale = 0.42 if w <= 480 else 0.55 if w <= 960 else 0.75
    thick = 1 if w <= 960 else 2
    font = cv2.FONT_HERSHEY_SIMPLEX
    sizes = [cv2.getTextSize(t, font, scale, thick)[0] for t in lines]
    line_h = max(s[1] for s in sizes) + int(8 * scale / 0.42)
    bw = min(w, max(s[0] for s in sizes) + 12)
    bh = min(h, line_h * len(lines) + 8)
    band = image[:bh, :bw]
    band[:] = (band.astype(np.uint16) * 2 // 5).astype(np.uint8)  # darken to 40%
    color = (255, 255, 255) if image.ndim == 3 else 255
    for i, text in enumerate(lines):
        cv2.putText(image, text, (6, 4 + line_h * (i + 1) - 4), font, scale, color, thick, cv2.LINE_AA)
    return image


# ---------------------------------------------------------------------------
# The demo loop
# ---------------------------------------------------------------------------


@dataclass
class DemoConfig:
    """Options of ``fex demo`` (see ``fex demo --help``).

    The source is ``input`` (a video file or stream URL) or ``camera`` (an index;
    camera 0 when neither is given). With ``output`` or ``headless`` no window is
    opened. ``seed=None`` draws fresh dropout noise every frame (it flickers; for
    comparison); otherwise track ``i`` uses ``seed + i``.
    """

    camera: Optional[int] = None
    input: Optional[str] = None
    output: Optional[str] = None
    headless: bool = False
    overlay: bool = True
    model: Optional[str] = None
    detector: Optional[str] = None
    device: str = "auto"
    threads: Optional[int] = None
    blend: str = "residual"
    emotion: Union[str, int] = "happy"
    seed: Optional[int] = 0
    strength: float = 1.0
    detect_every: int = 3
    max_frames: Optional[int] = None
    iou_threshold: float = 0.3
    smoothing: float = 0.5
    velocity: float = 0.3
    drop_after: int = 3
    fourcc: Optional[str] = None
    save_dir: str = "."
    open_timeout: float = 10.0
    read_timeout: float = 10.0
    window: str = "fex demo"
    quiet: bool = False

    @property
    def source(self) -> Union[int, str]:
        if self.input is not None:
            return os.fspath(self.input)
        return 0 if self.camera is None else self.camera

    @property
    def show_window(self) -> bool:
        return not self.headless and self.output is None

    def validate(self) -> None:
        if self.input is not None and self.camera is not None:
            raise ValueError("give either a camera index or an input video, not both")
        if self.camera is not None and (isinstance(self.camera, bool) or not isinstance(self.camera, int)):
            raise ValueError(f"camera must be an integer index, got {self.camera!r}")
        _emotion(self.emotion)
        for name in ("detect_every", "drop_after"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        if self.max_frames is not None and (isinstance(self.max_frames, bool) or not isinstance(self.max_frames, int)
                                            or self.max_frames < 1):
            raise ValueError(f"max_frames must be an integer >= 1 (or None for no limit), got {self.max_frames!r}")
        if not (isinstance(self.strength, (int, float)) and math.isfinite(self.strength) and self.strength >= 0):
            raise ValueError(f"strength must be a finite number >= 0, got {self.strength!r}")
        if not 0.0 <= self.smoothing < 1.0:
            raise ValueError(f"smoothing must be in [0, 1), got {self.smoothing}")
        if not 0.0 <= self.velocity <= 1.0:
            raise ValueError(f"velocity must be in [0, 1], got {self.velocity}")
        if not 0.0 < self.iou_threshold <= 1.0:
            raise ValueError(f"iou_threshold must be in (0, 1], got {self.iou_threshold}")
        if not (self.open_timeout > 0 and self.read_timeout > 0):
            raise ValueError("open_timeout and read_timeout must be > 0")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer))):
            raise ValueError(f"seed must be an integer or None, got {self.seed!r}")
        if self.output is not None:
            _check_output_path(self.output)
        if self.fourcc is not None and len(self.fourcc) != 4:
            raise ValueError(f"a codec (fourcc) has 4 characters, e.g. mp4v, MJPG, FFV1; got {self.fourcc!r}")


@dataclass
class DemoStats:
    """What :meth:`DemoLoop.run` did."""

    frames: int = 0
    written: int = 0
    read: int = 0
    dropped: int = 0
    detections: int = 0
    tracks: int = 0
    seconds: float = 0.0
    #: "end of stream", "max frames", "quit", "window closed" or "interrupted".
    reason: str = ""
    output: Optional[str] = None
    #: Mean milliseconds per call of each stage: detect (frames where it ran), generate and paste (frames with faces).
    timings_ms: dict[str, float] = field(default_factory=dict)
    saved: list[str] = field(default_factory=list)

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


class _TimedBackend:
    """Wraps a backend for one call of Transfer.apply, adding up the time spent in the model."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.seconds = 0.0

    def run(self, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return self._inner.run(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - t0

    def __getattr__(self, name: str):
        return getattr(self._inner, name)


class _Stage:
    """Running mean (for stats) and a moving average (for the overlay) of one stage's time."""

    def __init__(self) -> None:
        self.total = 0.0
        self.count = 0
        self.recent: Optional[float] = None

    def add(self, seconds: float) -> None:
        self.total += seconds
        self.count += 1
        self.recent = seconds if self.recent is None else 0.9 * self.recent + 0.1 * seconds

    @property
    def mean_ms(self) -> float:
        return 1000.0 * self.total / self.count if self.count else 0.0

    def text(self) -> str:
        return "-" if self.recent is None else f"{1000.0 * self.recent:.1f}"


class DemoLoop:
    """Expression transfer on a video stream, frame by frame.

    :meth:`process` takes one BGR frame and returns the result (detection every
    ``detect_every`` frames, tracking, per-track noise, overlay); :meth:`handle_key`
    applies a window key; :meth:`run` reads the configured source to the end.
    ``transfer`` (a :class:`fexsdk.Transfer`) is built from the config when not
    given; ``display`` (anything with ``show(frame) -> key``, ``closed()`` and
    ``close()``) replaces the OpenCV window, e.g. in tests.
    """

    def __init__(self, config: DemoConfig, transfer: Any = None, display: Any = None,
                 reader: Optional[FrameReader] = None) -> None:
        config.validate()
        self.config = config
        self.transfer = transfer
        self.display = display
        self.reader = reader
        self.tracker = FaceTracker(config.iou_threshold, config.smoothing, config.drop_after, config.seed,
                                   config.velocity)
        self.emotion = _emotion(config.emotion)
        self.show_original = False
        self.frame_index = 0
        self.detections = 0
        self.stages = {"detect": _Stage(), "generate": _Stage(), "paste": _Stage()}
        self.fps: Optional[float] = None
        self._last_done: Optional[float] = None
        self.last_clean: Optional[np.ndarray] = None
        self.saved: list[str] = []
        self.quit = False

    # -- pieces -------------------------------------------------------------------
    @property
    def target(self) -> str:
        return EMOTIONS[self.emotion]

    def _log(self, text: str) -> None:
        if not self.config.quiet:
            print(text, flush=True)

    def load_transfer(self):
        """Build the :class:`fexsdk.Transfer` from the config (once)."""
        if self.transfer is None:
            from fexsdk.transfer import Transfer

            c = self.config
            self.transfer = Transfer(c.model, device=c.device, detector=c.detector, blend=c.blend, threads=c.threads)
        return self.transfer

    def seeds_for(self, tracks: Sequence[Track]) -> Optional[list[int]]:
        """The per-face seeds passed to Transfer.apply (None: fresh noise)."""
        if self.config.seed is None:
            return None
        return [t.seed for t in tracks]  # type: ignore[misc]

    def process(self, image: np.ndarray) -> np.ndarray:
        """One frame in, the result out (with the overlay unless ``overlay=False``)."""
        tr = self.load_transfer()
        c = self.config
        index = self.frame_index
        self.frame_index += 1
        if index % c.detect_every == 0:
            t0 = time.perf_counter()
            faces = tr.detect(image)
            self.stages["detect"].add(time.perf_counter() - t0)
            self.detections += 1
            tracks = self.tracker.update(faces, index)
        else:
            tracks = self.tracker.predict(index)
        if tracks and not self.show_original:
            inner = tr.backend
            timed = _TimedBackend(inner)
            tr.backend = timed
            t0 = time.perf_counter()
            try:
                out = tr.apply(image, self.target, faces=[t.box for t in tracks], seed=self.seeds_for(tracks),
                               strength=c.strength)
            finally:
                tr.backend = inner
            total = time.perf_counter() - t0
            self.stages["generate"].add(timed.seconds)
            self.stages["paste"].add(max(0.0, total - timed.seconds))
        else:
            out = image.copy()
        self.last_clean = out
        now = time.perf_counter()
        if self._last_done is not None and now > self._last_done:
            rate = 1.0 / (now - self._last_done)
            self.fps = rate if self.fps is None else 0.9 * self.fps + 0.1 * rate
        self._last_done = now
        if c.overlay:
            out = draw_overlay(out.copy(), self.overlay_lines(len(tracks)))
        return out

    def overlay_lines(self, faces: int) -> list[str]:
        s = self.stages
        what = "original (space: transfer)" if self.show_original else f"{self.target} ({self.emotion + 1}/{len(EMOTIONS)})"
        fps = "-" if self.fps is None else f"{self.fps:.1f}"
        noise = "fresh noise" if self.config.seed is None else f"seed {self.config.seed}"
        return [
            what,
            f"{fps} fps  faces {faces}  {noise}",
            f"detect {s['detect'].text()}  generate {s['generate'].text()}  paste {s['paste'].text()} ms",
        ]

    def handle_key(self, key: int) -> bool:
        """Apply a window key (an OpenCV key code, -1 for none); False means quit."""
        if key is None or key < 0:
            return True
        key &= 0xFF
        ch = chr(key).lower()
        if key in (27,) or ch == "q":
            self.quit = True
            return False
        if "1" <= ch <= str(len(EMOTIONS)):
            self.emotion = int(ch) - 1
            self.show_original = False
        elif ch == "n":
            self.emotion = (self.emotion + 1) % len(EMOTIONS)
        elif ch == "p":
            self.emotion = (self.emotion - 1) % len(EMOTIONS)
        elif ch == " ":
            self.show_original = not self.show_original
        elif ch == "s":
            self.save_frame()
        return True

    def save_frame(self) -> Optional[str]:
        """Write the last result (without the overlay) as a PNG in ``save_dir``; returns its path."""
        if self.last_clean is None:
            return None
        folder = Path(self.config.save_dir)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"fex_demo_{self.frame_index - 1:06d}_{self.target}.png"
        if not cv2.imwrite(str(path), self.last_clean):
            self._log(f"could not save {path}")
            return None
        self.saved.append(str(path))
        self._log(f"saved {path}")
        return str(path)

    # -- the whole run ----------------------------------------------------------
    def run(self) -> DemoStats:
        """Read the source to its end (or ``max_frames``, or a quit key); returns what was done.

        Fails fast, in this order: a window that cannot be shown (:class:`GuiUnavailable`),
        a source that cannot be opened (FileNotFoundError, ValueError, :class:`VideoSourceError`),
        the model, the output file.
        """
        c = self.config
        stats = DemoStats(output=c.output)
        display = self.display
        if display is None and c.show_window:
            display = CvWindow(c.window)
        reader = self.reader or FrameReader(c.source, open_timeout=c.open_timeout)
        sink: Optional[VideoSink] = None
        start = time.perf_counter()
        try:
            if reader._thread is None:
                reader.start()
            self.load_transfer()
            if c.output is not None:
                sink = VideoSink(c.output, reader.fps or 30.0, reader.size or (640, 480), c.fourcc)
            if display is not None:
                self._log(KEY_HELP)
            start = time.perf_counter()
            stats.reason = "end of stream"
            while True:
                if c.max_frames is not None and stats.frames >= c.max_frames:
                    stats.reason = "max frames"
                    break
                frame = reader.read(timeout=c.read_timeout)
                if frame is None:
                    break
                out = self.process(frame.image)
                stats.frames += 1
                if sink is not None:
                    sink.write(out)
                if display is not None:
                    key = display.show(out)
                    if not self.handle_key(key):
                        stats.reason = "quit"
                        break
                    if display.closed():
                        stats.reason = "window closed"
                        break
        except KeyboardInterrupt:
            stats.reason = "interrupted"
        finally:
            stats.seconds = time.perf_counter() - start
            reader.stop()
            if sink is not None:
                sink.close()
                stats.written = sink.frames
            if display is not None:
                display.close()
        stats.read = reader.frames_read
        stats.dropped = reader.frames_dropped
        stats.detections = self.detections
        stats.tracks = self.tracker.created
        stats.timings_ms = {k: v.mean_ms for k, v in self.stages.items()}
        stats.saved = list(self.saved)
        return stats


def run_demo(config: DemoConfig, transfer: Any = None, display: Any = None) -> DemoStats:
    """Run ``fex demo`` with ``config``; see :class:`DemoLoop`."""
    return DemoLoop(config, transfer=transfer, display=display).run()
