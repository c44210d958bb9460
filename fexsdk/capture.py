"""Frames in and out for live video: a threaded reader whose waits are all bounded (a dead
camera raises instead of hanging), video file writers: ffmpeg (the binary that the
imageio-ffmpeg wheel ships; H.264, the input's audio kept) or OpenCV's VideoWriter as a fallback,
and live outputs: a stream through the same ffmpeg, a virtual camera through pyvirtualcam."""

from __future__ import annotations

import contextlib
import math
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Optional, Union

import cv2
import numpy as np

from fexsdk.images import to_bgr

__all__ = ["FFMPEG_SUFFIXES", "FOURCC_BY_SUFFIX", "STREAM_FORMATS", "FfmpegSink", "Frame", "FrameReader",
           "FrameTimeout", "StreamSink", "VideoSink", "VideoSourceError", "VirtualCameraSink",
           "VirtualCameraUnavailable", "check_stream_url", "find_ffmpeg", "open_video_sink", "probe_audio",
           "virtual_camera_setup"]

#: Codec OpenCV's VideoWriter (the fallback writer) uses for an output file, by suffix (anything else: mp4v).
FOURCC_BY_SUFFIX = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "FFV1"}
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".pgm", ".ppm"}


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
        if path.suffix.lower() in _IMAGE_SUFFIXES:
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
    """Writes BGR frames with OpenCV's VideoWriter (no audio); the codec follows the suffix unless ``fourcc`` is given.

    ``.mp4``/``.mov``: mp4v, ``.avi``: MJPG, ``.mkv``: FFV1 (lossless), others: mp4v. The fallback
    of :func:`open_video_sink` when there is no ffmpeg, or when a fourcc is asked for.
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
        #: What is written, for the log: the codec, and what became of the input's audio.
        self.codec = f"{code} (OpenCV VideoWriter)"
        self.audio = "none (OpenCV writes no audio)"
        #: Set by :func:`open_video_sink` when it fell back to this writer: why, and that audio is lost.
        self.warning: Optional[str] = None
        self._writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*code), self.fps, self.size, True)
        if not self._writer.isOpened():
            self._writer.release()
            names = ", ".join("out" + x for x in FFMPEG_SUFFIXES)
            raise ValueError(f"OpenCV could not open {self.path} for writing with codec {code!r}; write "
                             f"{names} (through ffmpeg), or try another --fourcc")

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


# ---------------------------------------------------------------------------
# ffmpeg
# ---------------------------------------------------------------------------

#: x264's constant rate factor for H.264 output: visually lossless, files a few times smaller than MJPEG.
H264_CRF = 18
# swscale's default BGR -> YUV conversion rounds coarsely: a grey frame comes back ~2.8 levels darker
# and tinted. Accurate rounding and full-resolution chroma bring that down to the limited-range step (~0.5).
_SWS_FLAGS = "bicubic+accurate_rnd+full_chroma_int"


@dataclass(frozen=True)
class _Format:
    """How ffmpeg writes one container: video codec arguments, and which audio codecs it takes as they are."""

    label: str
    video: tuple[str, ...]
    #: Audio codecs copied without re-encoding (None: any).
    copy_audio: Optional[frozenset[str]]
    #: (arguments, name) to re-encode audio that cannot be copied.
    encode_audio: tuple[tuple[str, ...], str]
    #: yuv420p needs an even width and height (odd frames get one black column/row).
    even: bool = False
    extra: tuple[str, ...] = ()


_H264 = ("-c:v", "libx264", "-preset", "veryfast", "-crf", str(H264_CRF), "-pix_fmt", "yuv420p")
_MP4_AUDIO = frozenset({"aac", "mp3", "alac", "ac3", "eac3", "opus"})
_AAC = (("-c:a", "aac", "-b:a", "192k"), "aac")
_MP4 = _Format(f"H.264 (libx264, crf {H264_CRF}, yuv420p)", _H264, _MP4_AUDIO, _AAC, even=True,
               extra=("-movflags", "+faststart"))

#: Containers written through ffmpeg, by suffix; any other suffix (or a --fourcc) goes to OpenCV's VideoWriter.
FFMPEG_FORMATS: dict[str, _Format] = {
    ".mp4": _MP4,
    ".m4v": _MP4,
    ".mov": _Format(_MP4.label, _H264, _MP4_AUDIO | {"pcm_s16le", "pcm_s24le", "pcm_f32le"}, _AAC, even=True,
                    extra=("-movflags", "+faststart")),
    ".mkv": _Format("FFV1 (lossless)", ("-c:v", "ffv1", "-level", "3", "-pix_fmt", "bgr0"), None, _AAC),
    ".avi": _Format("MJPEG (quality 2)", ("-c:v", "mjpeg", "-q:v", "2", "-pix_fmt", "yuvj420p"),
                    frozenset({"mp3", "ac3", "pcm_s16le", "pcm_u8"}), (("-c:a", "pcm_s16le"), "pcm_s16le")),
    ".webm": _Format("VP9 (libvpx-vp9, crf 32)",
                     ("-c:v", "libvpx-vp9", "-crf", "32", "-b:v", "0", "-row-mt", "1", "-deadline", "good",
                      "-cpu-used", "4", "-pix_fmt", "yuv420p"),
                     frozenset({"opus", "vorbis"}), (("-c:a", "libopus", "-b:a", "128k"), "opus"), even=True),
}
FFMPEG_SUFFIXES = tuple(FFMPEG_FORMATS)


def find_ffmpeg() -> Optional[str]:
    """The ffmpeg binary to write video with, or None: the one imageio-ffmpeg ships (or that its
    IMAGEIO_FFMPEG_EXE names, or a system one it finds). Nothing is ever downloaded."""
    try:
        import imageio_ffmpeg
    except ImportError:
        return None
    try:
        exe = imageio_ffmpeg.get_ffmpeg_exe()
    except RuntimeError:
        return None
    # IMAGEIO_FFMPEG_EXE is taken as given by imageio-ffmpeg: check that it names a program.
    return exe if exe and (os.path.isfile(exe) or shutil.which(exe)) else None


_AUDIO_STREAM = re.compile(r"^\s*Stream #\d+:\d+\S*: Audio: ([A-Za-z0-9_]+)", re.MULTILINE)
_DURATION = re.compile(r"^\s*Duration: (\d+):(\d\d):(\d\d(?:\.\d+)?)", re.MULTILINE)
_START = re.compile(r"^\s*Duration: .*?, start: (-?\d+(?:\.\d+)?)", re.MULTILINE)
_TIMEBASE = re.compile(r"^#tb 0: (\d+)/(\d+)", re.MULTILINE)
_PACKET = re.compile(r"^0,\s*-?\d+,\s*(-?\d+),", re.MULTILINE)


def _file_arg(path: Union[str, os.PathLike]) -> str:
    """A local path as ffmpeg must read it: "a:b.mp4" would otherwise name a protocol "a", "-x.mp4" an option."""
    return "file:" + os.fspath(path)


def _describe(path: Union[str, os.PathLike], exe: str) -> Optional[str]:
    """ffmpeg's description of a media file (its stderr without an output), or None when it cannot read it."""
    try:
        # Without an output ffmpeg describes the input on stderr and exits 1.
        r = subprocess.run([exe, "-hide_banner", "-nostdin", "-i", _file_arg(path)], capture_output=True, text=True,
                           errors="replace", timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return r.stderr if "Input #0" in r.stderr else None


def _probe(path: Union[str, os.PathLike], exe: str) -> Optional[tuple[list[str], Optional[float]]]:
    """(audio codecs, duration in seconds or None) of a media file; None when ffmpeg cannot read it."""
    text = _describe(path, exe)
    if text is None:
        return None
    m = _DURATION.search(text)
    seconds = int(m.group(1)) * 3600 + int(m.group(2)) * 60 + float(m.group(3)) if m else None
    return _AUDIO_STREAM.findall(text), seconds


def video_start_offset(path: Union[str, os.PathLike], exe: str) -> float:
    """Seconds from the start of a media file (its earliest stream) to its first video frame; 0 when unknown.

    Many files' video starts after their audio (an edit list, a camera that starts sound first). ffmpeg
    keeps the audio's place relative to the file's start when it muxes it in, so the frames the demo
    writes must start this late too, or the picture runs ahead of the sound by as much. The first
    video packet's time is read with ``-copyts`` (as stored) from a one-packet ``framecrc`` dump.
    """
    text = _describe(path, exe)
    m = None if text is None else _START.search(text)
    if m is None:
        return 0.0
    try:
        r = subprocess.run([exe, "-hide_banner", "-loglevel", "error", "-nostdin", "-copyts", "-i", _file_arg(path),
                            "-map", "0:v:0", "-c", "copy", "-frames:v", "1", "-f", "framecrc", "-"],
                           capture_output=True, text=True, errors="replace", timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return 0.0
    tb, pts = _TIMEBASE.search(r.stdout), _PACKET.search(r.stdout)
    if tb is None or pts is None:
        return 0.0
    offset = int(pts.group(1)) * int(tb.group(1)) / int(tb.group(2)) - float(m.group(1))
    return offset if 0 < offset < 3600 else 0.0


def probe_audio(path: Union[str, os.PathLike], ffmpeg: Optional[str] = None) -> Optional[list[str]]:
    """The codec of each audio stream in a media file ([] when it has none); None when ffmpeg cannot tell."""
    exe = ffmpeg or find_ffmpeg()
    found = None if exe is None else _probe(path, exe)
    return None if found is None else found[0]


def _own_process_group() -> dict[str, Any]:
    """Popen arguments that keep a terminal's Ctrl-C (sent to the whole foreground group) away from
    ffmpeg: the demo finishes the file itself, and ffmpeg must not quit while frames still come."""
    if sys.platform.startswith("win"):
        return {"creationflags": getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0)}
    return {"start_new_session": True}


class FfmpegSink:
    """Writes BGR frames by piping them to ffmpeg, which encodes them and muxes in the audio of ``audio_from``.

    The codec follows the suffix (:data:`FFMPEG_FORMATS`): ``.mp4``/``.m4v``/``.mov`` H.264
    (crf 18, yuv420p, moov atom at the front), ``.mkv`` lossless FFV1, ``.avi`` MJPEG, ``.webm`` VP9.
    Audio is copied when the container takes its codec, else re-encoded (AAC for mp4). The frame rate
    is written exactly (29.97 as 30000/1001). :meth:`close` must run for the file to be playable:
    it ends ffmpeg's input and waits for it to write the index; when the video stopped before the
    input's end (max frames, Ctrl-C), it then cuts the audio to the video's length (a stream copy).
    Every frame written is kept: ffmpeg's ``-shortest`` would drop the last frames of a video whose
    audio ends a little early, as many files' does.
    """

    def __init__(self, path: Union[str, os.PathLike], fps: float, size: tuple[int, int], *,
                 audio_from: Optional[Union[str, os.PathLike]] = None, ffmpeg: Optional[str] = None,
                 close_timeout: float = 120.0) -> None:
        self.path = _check_output_path(path)
        fmt = FFMPEG_FORMATS.get(self.path.suffix.lower())
        if fmt is None:
            raise ValueError(f"FfmpegSink writes {', '.join(FFMPEG_SUFFIXES)} files, not {self.path.suffix!r}")
        exe = self._setup(fps, size, ffmpeg, close_timeout)
        self.codec = fmt.label
        cmd = self._pipe_input(exe)
        audio_args: list[str] = []
        self.audio = "none (no input file)"
        self._fmt = fmt
        #: Seconds of the audio source, once its audio is muxed in (None: unknown).
        self._audio_seconds: Optional[float] = None
        #: Seconds the input's first video frame comes after its start (its audio's timeline); the frames
        #: written are placed that late too, so that sound and picture stay together.
        self.video_offset = 0.0
        if audio_from is not None:
            probed = _probe(audio_from, exe)
            codecs = None if probed is None else probed[0]
            if codecs is None:
                self.audio = "none (ffmpeg could not read the input's streams)"
            elif not codecs:
                self.audio = "none (the input has no audio track)"
            else:
                self._has_audio = True
                self._audio_seconds = probed[1]
                self.video_offset = video_start_offset(audio_from, exe)
                if self.video_offset:  # -itsoffset shifts the input after it: the frames from the pipe
                    pipe = cmd.index("-i")
                    cmd[pipe:pipe] = ["-itsoffset", f"{self.video_offset:.6f}"]
                cmd += ["-i", _file_arg(audio_from)]
                if fmt.copy_audio is None or all(c in fmt.copy_audio for c in codecs):
                    audio_args = ["-c:a", "copy"]
                    self.audio = f"copied ({', '.join(codecs)})"
                else:
                    args, name = fmt.encode_audio
                    audio_args = list(args)
                    self.audio = f"re-encoded to {name} ({', '.join(codecs)} does not fit {self.path.suffix})"
                if self.video_offset:
                    self.audio += f"; the video starts {self.video_offset:.3f} s into it, as in the input"
                audio_args += ["-map", "1:a?"]
        cmd += ["-map", "0:v", "-sws_flags", _SWS_FLAGS]
        if fmt.even and (self.size[0] % 2 or self.size[1] % 2):
            cmd += ["-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2"]
            self.codec += ", padded to an even size"
        cmd += [*fmt.video, *audio_args, *fmt.extra, _file_arg(self.path)]
        self._start(cmd)

    # -- shared with StreamSink: the same rawvideo pipe into the same ffmpeg -----------------------
    def _setup(self, fps: float, size: tuple[int, int], ffmpeg: Optional[str], close_timeout: float) -> str:
        """Frame rate, size and counters; returns the ffmpeg binary (raises when there is none)."""
        exe = ffmpeg or find_ffmpeg()
        if exe is None:
            raise RuntimeError("no ffmpeg binary found: install imageio-ffmpeg (pip install imageio-ffmpeg), "
                               "which ships one")
        self.fps = float(fps) if fps and math.isfinite(fps) and 0 < fps < 1000 else 30.0
        self.size = (int(size[0]), int(size[1]))
        if self.size[0] < 1 or self.size[1] < 1:
            raise ValueError(f"frame size must be at least 1x1 pixels, got {self.size[0]}x{self.size[1]}")
        self.frames = 0
        self.warning: Optional[str] = None
        self.close_timeout = float(close_timeout)
        self._exe = exe
        self._has_audio = False
        return exe

    def _pipe_input(self, exe: str) -> list[str]:
        """ffmpeg's arguments up to its input: raw BGR frames of ``size`` on stdin at ``fps``."""
        # NTSC rates come out of OpenCV as floats (29.97002997...): 1001 recovers 30000/1001 exactly.
        rate = Fraction(self.fps).limit_denominator(1001)
        return [exe, "-hide_banner", "-loglevel", "error", "-nostats", "-y",
                "-f", "rawvideo", "-pix_fmt", "bgr24", "-s", f"{self.size[0]}x{self.size[1]}",
                "-framerate", f"{rate.numerator}/{rate.denominator}", "-i", "pipe:0"]

    def _start(self, cmd: list[str]) -> None:
        """Start ffmpeg with ``cmd``, reading frames from its stdin; its messages are kept for errors."""
        self.command = cmd
        self._errors: deque[str] = deque(maxlen=20)
        try:
            self._proc: Optional[subprocess.Popen] = subprocess.Popen(
                cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **_own_process_group())
        except OSError as exc:
            raise RuntimeError(f"could not start ffmpeg ({cmd[0]}): {exc}") from None
        self._stderr = threading.Thread(target=self._drain, name="fex-ffmpeg-stderr", daemon=True)
        self._stderr.start()

    def _drain(self) -> None:
        """Keep ffmpeg's messages (the last few) without letting its stderr pipe fill up and block it."""
        for line in iter(self._proc.stderr.readline, b""):
            text = line.decode("utf-8", "replace").strip()
            if text:
                self._errors.append(text)

    def _failure(self, what: str) -> RuntimeError:
        said = "; ".join(self._errors) or "no message"
        return RuntimeError(f"ffmpeg {what} writing {self.path}: {said}")

    def write(self, frame: np.ndarray) -> None:
        if self._proc is None:
            raise RuntimeError(f"{self.path} is closed")
        frame = to_bgr(frame)
        if (frame.shape[1], frame.shape[0]) != self.size:
            frame = cv2.resize(frame, self.size, interpolation=cv2.INTER_AREA)
        try:
            self._proc.stdin.write(np.ascontiguousarray(frame).data)
        except (BrokenPipeError, OSError, ValueError):
            proc, self._proc = self._proc, None  # nothing left for close() to finish
            proc.wait()
            self._stderr.join(1.0)
            raise self._failure(f"stopped (exit code {proc.returncode})") from None
        self.frames += 1

    def close(self) -> None:
        """End ffmpeg's input and wait for it to finish the file (index, moov atom); raises if it failed."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        with contextlib.suppress(OSError, ValueError):
            proc.stdin.close()
        try:
            code = proc.wait(self.close_timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise RuntimeError(f"ffmpeg did not finish {self.path} within {self.close_timeout:g} s; stopped it, "
                               "the file may be incomplete") from None
        self._stderr.join(2.0)
        if code != 0:
            raise self._failure(f"failed (exit code {code})")
        if self._has_audio and self.frames:
            video_seconds = self.video_offset + self.frames / float(Fraction(self.fps).limit_denominator(1001))
            # More than two frames of audio past the video's end: the run stopped early, cut the audio there.
            if self._audio_seconds is None or self._audio_seconds > video_seconds + 2.0 / self.fps:
                self._trim(video_seconds)

    def _trim(self, seconds: float) -> None:
        """Rewrite the file (stream copy) with its streams cut at ``seconds``, the video's length.

        ``-t`` on a copy stops each stream at its first packet decoded at or after ``seconds``: every
        video frame is kept (their decode times all fall before it) and the audio ends with them."""
        tmp = self.path.with_name(f".{self.path.stem}.trim{self.path.suffix}")
        cmd = [self._exe, "-hide_banner", "-loglevel", "error", "-nostdin", "-y", "-i", _file_arg(self.path),
               "-map", "0", "-c", "copy", "-t", f"{seconds:.6f}", *self._fmt.extra, _file_arg(tmp)]
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, errors="replace", timeout=self.close_timeout,
                               **_own_process_group())
        except (OSError, subprocess.TimeoutExpired) as exc:
            tmp.unlink(missing_ok=True)
            raise RuntimeError(f"could not cut the audio of {self.path} to the video's length ({exc}); the file "
                               "plays, with the rest of the input's audio after the video ends") from None
        if r.returncode != 0:
            tmp.unlink(missing_ok=True)
            raise RuntimeError(f"could not cut the audio of {self.path} to the video's length: {r.stderr.strip()}; "
                               "the file plays, with the rest of the input's audio after the video ends")
        os.replace(tmp, self.path)

    def __enter__(self) -> "FfmpegSink":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---------------------------------------------------------------------------
# Live outputs: a stream through ffmpeg, a virtual camera through pyvirtualcam
# ---------------------------------------------------------------------------

#: The container ffmpeg sends to each stream scheme (what OBS's media source and ffplay read).
STREAM_FORMATS = {"udp": "mpegts", "tcp": "mpegts", "srt": "mpegts", "rist": "mpegts", "rtp": "rtp_mpegts",
                  "rtmp": "flv", "rtmps": "flv"}
#: x264 for live use: no lookahead and no B-frames (zerolatency), the fastest preset, and a key frame
#: every half second so a player that joins late starts within about that.
STREAM_CRF = 20
STREAM_GOP_SECONDS = 0.5
_PROTOCOLS: dict[str, frozenset[str]] = {}


def ffmpeg_output_protocols(exe: str) -> frozenset[str]:
    """The protocols ``exe`` can write to (``ffmpeg -protocols``, its Output list); asked once per binary."""
    if exe not in _PROTOCOLS:
        try:
            r = subprocess.run([exe, "-hide_banner", "-protocols"], capture_output=True, text=True, errors="replace",
                               timeout=30)
            text = r.stdout
        except (OSError, subprocess.TimeoutExpired):
            text = ""
        _, _, outputs = text.partition("Output:")
        _PROTOCOLS[exe] = frozenset(outputs.split())
    return _PROTOCOLS[exe]


def stream_schemes(exe: str) -> list[str]:
    """The schemes ``--stream`` takes with this ffmpeg: those of :data:`STREAM_FORMATS` it can write."""
    have = ffmpeg_output_protocols(exe)
    return [scheme for scheme in STREAM_FORMATS if scheme in have]


def check_stream_url(url: str, ffmpeg: Optional[str] = None) -> tuple[str, str]:
    """(ffmpeg binary, container) for streaming to ``url``; ValueError naming the schemes this ffmpeg has
    when it cannot stream there, RuntimeError when there is no ffmpeg."""
    from urllib.parse import urlsplit

    if not isinstance(url, str) or "://" not in url:
        raise ValueError(f"--stream takes a URL such as udp://127.0.0.1:23000, srt://HOST:PORT or "
                         f"rtmp://HOST/app/key, got {url!r}")
    exe = ffmpeg or find_ffmpeg()
    if exe is None:
        raise RuntimeError("no ffmpeg binary found: --stream sends through the one imageio-ffmpeg ships "
                           "(pip install imageio-ffmpeg)")
    scheme = url.split("://", 1)[0].lower()
    have = stream_schemes(exe)
    if scheme not in have:
        names = ", ".join(f"{x}://" for x in have) or "none"
        raise ValueError(f"--stream {url}: the bundled ffmpeg cannot stream to {scheme}://; it streams to {names}")
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    if not parts.hostname or (scheme != "rtmp" and scheme != "rtmps" and port is None):
        raise ValueError(f"--stream {url}: a {scheme}:// URL needs a host and a port, e.g. {scheme}://127.0.0.1:23000")
    return exe, STREAM_FORMATS[scheme]


class StreamSink(FfmpegSink):
    """Sends BGR frames as a live stream: H.264 for low latency (x264 ``ultrafast``, ``zerolatency``, a key
    frame every :data:`STREAM_GOP_SECONDS`) in MPEG-TS (``udp://``, ``tcp://``, ``srt://``, ``rist://``,
    ``rtp://``) or FLV (``rtmp://``, ``rtmps://``), through the same ffmpeg pipe as :class:`FfmpegSink`.

    The scheme must be one this ffmpeg writes (:func:`check_stream_url`). No audio. Frames are sent as
    they are written: pace them yourself (``fex demo`` does for video files)."""

    def __init__(self, url: str, fps: float, size: tuple[int, int], *, ffmpeg: Optional[str] = None,
                 close_timeout: float = 10.0) -> None:
        exe, container = check_stream_url(url, ffmpeg)
        exe = self._setup(fps, size, exe, close_timeout)
        self.path = url  # named in messages
        self.url = url
        self.audio = "none (a stream carries the video only)"
        self._audio_seconds = None
        self.video_offset = 0.0
        self.gop = max(1, round(self.fps * STREAM_GOP_SECONDS))
        self.container = container
        self.codec = (f"H.264 (libx264 ultrafast, zerolatency, crf {STREAM_CRF}, key frame every {self.gop} "
                      f"frames) in {'MPEG-TS' if 'mpegts' in container else container.upper()}")
        target = url
        if url.lower().startswith("udp://") and "pkt_size=" not in url:  # whole TS packets per datagram
            target += ("&" if "?" in url else "?") + "pkt_size=1316"
        cmd = self._pipe_input(exe) + ["-map", "0:v", "-sws_flags", _SWS_FLAGS]
        if self.size[0] % 2 or self.size[1] % 2:
            cmd += ["-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2"]
            self.codec += ", padded to an even size"
        cmd += ["-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency", "-crf", str(STREAM_CRF),
                "-g", str(self.gop), "-keyint_min", str(self.gop), "-bf", "0", "-pix_fmt", "yuv420p",
                "-flush_packets", "1"]
        if container == "flv":
            cmd += ["-flvflags", "no_duration_filesize"]
        else:
            cmd += ["-muxdelay", "0", "-muxpreload", "0"]
        cmd += ["-f", container, target]
        self._start(cmd)


class VirtualCameraUnavailable(RuntimeError):
    """``--virtual-camera`` cannot run here: pyvirtualcam is missing, or there is no virtual camera device."""


def virtual_camera_setup(platform: Optional[str] = None) -> str:
    """The one-line setup of a virtual camera device on ``platform`` (default: this one)."""
    platform = sys.platform if platform is None else platform
    if platform.startswith("linux"):
        return ("load v4l2loopback: sudo modprobe v4l2loopback exclusive_caps=1 card_label=fex "
                "(Debian/Ubuntu package v4l2loopback-dkms)")
    return "install OBS Studio and start its Virtual Camera once (Controls > Start Virtual Camera), then stop it"


_VCAM_PIP = 'pip install "fexsdk[vcam]" (pyvirtualcam)'


def _pyvirtualcam_camera() -> tuple[Any, dict[str, Any]]:
    """pyvirtualcam's Camera and the arguments that ask it for RGB frames; VirtualCameraUnavailable without it."""
    try:
        import pyvirtualcam
    except ImportError:
        raise VirtualCameraUnavailable(f"--virtual-camera needs pyvirtualcam: {_VCAM_PIP}; then "
                                       f"{virtual_camera_setup()}") from None
    return pyvirtualcam.Camera, {"fmt": pyvirtualcam.PixelFormat.RGB}


class VirtualCameraSink:
    """Sends BGR frames to a virtual camera (through pyvirtualcam) as RGB, at the source's size and frame rate,
    for video calls and OBS: v4l2loopback on Linux, OBS Virtual Camera on Windows and macOS.

    ``camera_class`` replaces ``pyvirtualcam.Camera`` (tests): called as ``camera_class(width, height, fps,
    device=...)`` and then given RGB frames with ``send(frame)`` and ``close()``. Raises
    :class:`VirtualCameraUnavailable`, naming what to install, when pyvirtualcam is missing or finds no device.
    """

    def __init__(self, size: tuple[int, int], fps: float, *, device: Optional[str] = None,
                 camera_class: Optional[Callable[..., Any]] = None) -> None:
        self.size = (int(size[0]), int(size[1]))
        if self.size[0] < 1 or self.size[1] < 1:
            raise ValueError(f"frame size must be at least 1x1 pixels, got {self.size[0]}x{self.size[1]}")
        self.fps = float(fps) if fps and math.isfinite(fps) and 0 < fps < 1000 else 30.0
        kwargs: dict[str, Any] = {}
        if camera_class is None:
            camera_class, kwargs = _pyvirtualcam_camera()
        if device is not None:
            kwargs["device"] = device
        try:
            self._cam = camera_class(self.size[0], self.size[1], self.fps, **kwargs)
        except RuntimeError as exc:  # pyvirtualcam: no backend found a device
            where = f" {device}" if device else ""
            raise VirtualCameraUnavailable(f"--virtual-camera: no virtual camera device{where} ({str(exc).strip()}); "
                                           f"{virtual_camera_setup()}") from None
        self.device = str(getattr(self._cam, "device", device or "virtual camera"))
        self.backend = getattr(self._cam, "backend", None)
        self.frames = 0

    def describe(self) -> str:
        backend = f", {self.backend}" if self.backend else ""
        return f"{self.device} ({self.size[0]}x{self.size[1]} RGB at {self.fps:g} fps{backend})"

    def write(self, frame: np.ndarray) -> None:
        if self._cam is None:
            raise RuntimeError("the virtual camera is closed")
        frame = to_bgr(frame)
        if (frame.shape[1], frame.shape[0]) != self.size:
            frame = cv2.resize(frame, self.size, interpolation=cv2.INTER_AREA)
        self._cam.send(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
        self.frames += 1

    def close(self) -> None:
        cam, self._cam = self._cam, None
        if cam is not None:
            cam.close()

    def __enter__(self) -> "VirtualCameraSink":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_video_sink(path: Union[str, os.PathLike], fps: float, size: tuple[int, int], *,
                    fourcc: Optional[str] = None,
                    audio_from: Optional[Union[str, os.PathLike]] = None) -> Union[FfmpegSink, VideoSink]:
    """A writer for ``path``: :class:`FfmpegSink` (keeps ``audio_from``'s audio) for the suffixes in
    :data:`FFMPEG_FORMATS` when ffmpeg is there, else OpenCV's :class:`VideoSink`, whose ``warning``
    then says why and that audio is lost. A ``fourcc`` always means OpenCV (its codecs are fourccs)."""
    suffix = Path(path).suffix.lower()
    if fourcc is not None:
        why = f"a fourcc codec ({fourcc}) is written with OpenCV's VideoWriter"
    else:
        exe = find_ffmpeg()
        if exe is not None and suffix in FFMPEG_FORMATS:
            return FfmpegSink(path, fps, size, audio_from=audio_from, ffmpeg=exe)
        why = ("no ffmpeg binary found (pip install imageio-ffmpeg)" if exe is None
               else f"ffmpeg writes {', '.join(FFMPEG_SUFFIXES)} here, not {suffix!r}")
    sink = VideoSink(path, fps, size, fourcc)
    if audio_from is not None:
        sink.audio = "dropped (OpenCV's VideoWriter writes no audio)"
    lost = "the input's audio (if any) is dropped" if audio_from is not None else "no audio"
    sink.warning = f"{why}: {sink.fourcc}, {lost}"
    return sink
