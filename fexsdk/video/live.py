"""Live outputs: a stream through the bundled ffmpeg (MPEG-TS, FLV, ...), a virtual camera through pyvirtualcam."""

from __future__ import annotations

import math
import subprocess
import sys
from typing import Any, Callable, Optional

import cv2
import numpy as np

from fexsdk.images import to_bgr
from fexsdk.video.writer import FfmpegSink, find_ffmpeg, _SWS_FLAGS


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

