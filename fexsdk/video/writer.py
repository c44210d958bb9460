"""Frames out to a video file: ffmpeg (the binary that the imageio-ffmpeg wheel ships; H.264, the input's
audio kept) or OpenCV's VideoWriter as a fallback (:func:`open_video_sink` picks)."""

from __future__ import annotations

import contextlib
import math
import os
import re
import shutil
import subprocess
import sys
import threading
from collections import deque
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Optional, Union

import cv2
import numpy as np

from fexsdk.images import to_bgr
from fexsdk.video.reader import IMAGE_SUFFIXES

#: Codec OpenCV's VideoWriter (the fallback writer) uses for an output file, by suffix (anything else: mp4v).
FOURCC_BY_SUFFIX = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "FFV1"}


def _check_output_path(path: Union[str, os.PathLike]) -> Path:
    path = Path(path)
    if path.suffix.lower() in IMAGE_SUFFIXES or not path.suffix:
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
