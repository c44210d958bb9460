"""Frames in: a threaded reader of a camera, a video file or a stream URL, whose waits are all bounded
(a dead camera raises instead of hanging)."""

from __future__ import annotations

import contextlib
import math
import os
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Union

import cv2
import numpy as np


#: Still images, which are not videos (refused as a video source and as an output).
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".pgm", ".ppm"}


class VideoSourceError(RuntimeError):
    """A camera or stream that cannot be opened or stopped delivering frames."""


class FrameTimeout(VideoSourceError):
    """No frame arrived within the allowed time."""


@dataclass
class Frame:
    """A frame from a :class:`FrameReader`: its position in the stream (dropped frames count) and the BGR image."""

    index: int
    image: np.ndarray
    time: float


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
        if path.suffix.lower() in IMAGE_SUFFIXES:
            raise ValueError(f"{path} is an image, not a video; use `fex apply` for photos")

    @property
    def started(self) -> bool:
        """Whether :meth:`start` was called."""
        return self._thread is not None

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
