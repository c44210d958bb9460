"""``fex demo``'s loop: each frame through detection (every few frames, in a thread of its own), tracking and
the Transfer's stages, to the window, the file, the stream and the virtual camera."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Optional, Union

import cv2
import numpy as np

from fexsdk.emotions import EMOTIONS
from fexsdk.video.config import DemoConfig, _emotion, face_choice, track_emotions
from fexsdk.video.live import StreamSink, VirtualCameraSink, _pyvirtualcam_camera
from fexsdk.video.reader import FrameReader, _is_url
from fexsdk.video.reuse import GenerationBudget
from fexsdk.video.stats import DemoStats
from fexsdk.video.tracking import Box, FaceTracker, Track
from fexsdk.video.window import KEY_HELP, CvWindow, draw_overlay, draw_track_ids
from fexsdk.video.writer import FfmpegSink, VideoSink, open_video_sink


class _StopOnSignals:
    """For the loop's duration, SIGINT (Ctrl-C) and SIGTERM ask it to stop between two frames, so the
    output file is finished (ffmpeg's index, the moov atom) instead of cut mid-write; a second
    signal interrupts at once. Handlers can only be set from the main thread: elsewhere (and for
    a signal the process ignores) nothing changes."""

    REASONS = {signal.SIGINT: "interrupted", signal.SIGTERM: "terminated"}

    def __init__(self) -> None:
        self.received: Optional[int] = None
        self._previous: dict[int, Any] = {}

    @property
    def reason(self) -> Optional[str]:
        return None if self.received is None else self.REASONS.get(self.received, "interrupted")

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signum

    def __enter__(self) -> "_StopOnSignals":
        if threading.current_thread() is not threading.main_thread():
            return self
        for sig in self.REASONS:
            try:
                if signal.getsignal(sig) is signal.SIG_IGN:
                    continue
                self._previous[sig] = signal.signal(sig, self._handle)
            except (ValueError, OSError):  # pragma: no cover - a platform without the signal
                pass
        return self

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()


#: Stages in DemoStats.timings_ms even where they never ran (read and write appear once used).
_ALWAYS_REPORTED = ("detect", "crop", "generate", "paste")


def _seconds(records, *stages: str) -> float:
    """The seconds these records' faces spent in those stages on this frame (FaceRecord.timings, in ms)."""
    return sum(r.timings.get(k, 0.0) for r in records for k in stages) / 1000.0


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
    applies a window key; :meth:`run` reads the configured source to the end, stopping
    cleanly (output finished) on SIGINT or SIGTERM, and then stops the detector thread
    (:meth:`close`; call it after :meth:`process` yourself).
    ``transfer`` (a :class:`fexsdk.Transfer`) is built from the config when not
    given; ``display`` (anything with ``show(frame) -> key``, ``closed()`` and
    ``close()``) replaces the OpenCV window, e.g. in tests; ``camera_class`` replaces
    ``pyvirtualcam.Camera`` for ``virtual_camera``.
    """

    def __init__(self, config: DemoConfig, transfer: Any = None, display: Any = None,
                 reader: Optional[FrameReader] = None, camera_class: Optional[Callable[..., Any]] = None) -> None:
        config.validate()
        self.config = config
        self.transfer = transfer
        self.display = display
        self.reader = reader
        #: Replaces pyvirtualcam.Camera for ``virtual_camera`` (tests): see :class:`fexsdk.video.live.VirtualCameraSink`.
        self.camera_class = camera_class
        self.tracker = FaceTracker(config.iou_threshold, config.smoothing, config.drop_after, config.velocity)
        #: Which faces go through the generator on each frame (all, unless config.faces_per_frame).
        self.budget = GenerationBudget(config.faces_per_frame)
        #: {track id: emotion index} when the config gives an emotion per track, else None (one for all).
        self.track_emotions = track_emotions(config.emotion)
        #: The emotion index shown and stepped by the keys (with an emotion per track: the first one's).
        self.emotion = next(iter(self.track_emotions.values())) if self.track_emotions else _emotion(config.emotion)
        #: Which tracks change: None (all), "largest" or sorted track ids (DemoConfig.faces, checked).
        self.faces = face_choice(config.faces)
        #: The last frame's tracks as (box, label) for the overlay: their ids, and the emotion where it changes.
        self._labels: list[tuple[Box, str]] = []
        self.show_original = False
        self.frame_index = 0
        self.detections = 0
        self.stages = {name: _Stage() for name in ("read", "detect", "crop", "generate", "paste", "write")}
        self.fps: Optional[float] = None
        self._last_done: Optional[float] = None
        self.last_clean: Optional[np.ndarray] = None
        self.saved: list[str] = []
        self.quit = False
        self._faces = 0
        self._bar: Any = None
        self._detect_call: Optional[Callable[[np.ndarray], list]] = None
        self._detector_thread: Optional[ThreadPoolExecutor] = None
        #: The detection running in the detector thread: (the frame it sees, its result to come).
        self._pending: Optional[tuple[int, Future]] = None

    # -- pieces -------------------------------------------------------------------
    @property
    def target(self) -> str:
        return EMOTIONS[self.emotion]

    def _log(self, text: str, error: bool = False) -> None:
        if self.config.quiet:
            return
        if self._bar is not None:  # above the progress bar, not through it
            self._bar.write(text, file=sys.stderr if error else sys.stdout)
        else:
            print(text, file=sys.stderr if error else sys.stdout, flush=True)

    def overlay_in(self, where: str) -> bool:
        """Whether the overlay is drawn on frames for ``where``: "window" or "file"."""
        if where not in ("window", "file"):
            raise ValueError(f"where must be 'window' or 'file', got {where!r}")
        overlay = self.config.overlay
        return where == "window" if overlay is None else overlay

    def with_overlay(self, clean: np.ndarray) -> np.ndarray:
        """A copy of a result with the overlay drawn on it: the text band and each track's id at its box."""
        return draw_overlay(draw_track_ids(clean.copy(), self._labels), self.overlay_lines(self._faces))

    def chosen(self, tracks: list[Track]) -> list[tuple[Track, int]]:
        """The tracks to change on this frame, each with its emotion index: those ``faces`` picks (all, the
        largest, or by id) that have an emotion (every track, or those named in an emotion per track)."""
        if self.faces == "largest":
            tracks = [max(tracks, key=lambda t: t.box[2] * t.box[3])] if tracks else []  # ties: the lowest id
        elif self.faces is not None:
            tracks = [t for t in tracks if t.id in self.faces]
        if self.track_emotions is None:
            return [(t, self.emotion) for t in tracks]
        return [(t, self.track_emotions[t.id]) for t in tracks if t.id in self.track_emotions]

    def set_emotion(self, index: int) -> None:
        """Set the emotion (an index, taken modulo 7) of every chosen track, as keys 1-7, n and p do."""
        self.emotion = index % len(EMOTIONS)
        if self.track_emotions is not None:
            self.track_emotions = dict.fromkeys(self.track_emotions, self.emotion)

    def load_transfer(self):
        """Build the :class:`fexsdk.Transfer` from the config (once)."""
        if self.transfer is None:
            from fexsdk.transfer import Transfer

            # Full size: the frames' faces are framed by it; detection sees the smaller copy (_detector).
            self.transfer = Transfer.from_options(self.config.transfer.replace(detect_size=None))
        return self.transfer

    def _detector(self) -> Callable[[np.ndarray], list]:
        """The demo's detection call: a clone of the Transfer (:meth:`~fexsdk.transfer.Transfer.clone`) whose YuNet
        sees a copy of at most ``detect_size`` pixels (same model file, thresholds and crop framing); any other
        detector as it is."""
        if self._detect_call is None:
            tr = self.load_transfer()
            size = self.config.transfer.detect_size
            clone = getattr(tr, "clone", None)  # a stand-in for a Transfer without one detects as it is
            self._detect_call = tr.detect if size is None or clone is None else clone(detect_size=size).detect
        return self._detect_call

    def _timed_detect(self, image: np.ndarray) -> list:
        t0 = time.perf_counter()
        faces = self._detector()(image)
        self.stages["detect"].add(time.perf_counter() - t0)
        return faces

    def _detect(self, image: np.ndarray, index: int) -> list[Track]:
        """Detection on frame ``index``; returns the tracks to draw on it.

        Inline, this frame's faces update the tracks. With ``detect_thread``, the faces of the previous
        detection frame update them (as seen on that frame) and this frame's detection starts in the
        detector thread, overlapping this frame's and the next frames' generation and paste; it is
        awaited at once only while there is no track (nothing to overlap, and a face should not
        appear late). Which frame's faces update the tracks never depends on timing.
        """
        self._detector()  # built in this thread, so a bad detector fails here
        self.detections += 1
        if not self.config.detect_thread:
            return self.tracker.update(self._timed_detect(image), index)
        if self._pending is not None:
            seen, future = self._pending
            self._pending = None
            self.tracker.update(future.result(), index, observed=seen)
        if self._detector_thread is None:
            self._detector_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fex-detect")
        future = self._detector_thread.submit(self._timed_detect, image)
        if self.tracker.tracks:
            self._pending = (index, future)
            return self.tracker.predict(index)
        return self.tracker.update(future.result(), index)

    def close(self) -> None:
        """Stop the detector thread (a detection still running is finished and dropped)."""
        self._pending = None
        if self._detector_thread is not None:
            self._detector_thread.shutdown(wait=True)
            self._detector_thread = None

    def process(self, image: np.ndarray) -> np.ndarray:
        """One frame in, the result out, with the overlay if this config draws it where the frames go:
        in a window unless ``overlay=False``; without a window (a file, headless) only with ``overlay=True``."""
        out = self.transform(image)
        return self.with_overlay(out) if self.overlay_in("window" if self.config.show_window else "file") else out

    def transform(self, image: np.ndarray) -> np.ndarray:
        """One frame in, the result out without any overlay (also kept as ``last_clean``)."""
        tr = self.load_transfer()
        c = self.config
        index = self.frame_index
        self.frame_index += 1
        if index % c.detect_every == 0:
            tracks = self._detect(image, index)
        else:
            tracks = self.tracker.predict(index)
        # A track moving on at its estimated speed can leave the frame before it is dropped: skip it.
        h, w = image.shape[:2]
        shown = [t for t in tracks if t.box[0] + t.box[2] > 0 and t.box[1] + t.box[3] > 0 and t.box[0] < w and t.box[1] < h]
        # Only the chosen tracks go through the stages: the others' pixels are the input's, bit for bit.
        chosen = self.chosen(shown)
        emotion_of = {t.id: EMOTIONS[e] for t, e in chosen}
        self._labels = [(t.box, f"{t.id} {emotion_of[t.id]}" if t.id in emotion_of and not self.show_original
                         else str(t.id)) for t in shown]
        if chosen and not self.show_original:
            # Transfer's stages, with each track's id picking its noise (fexsdk.noise.noise_for): the
            # same seed gives a face the same noise here as in Transfer.apply and fex eval.
            framed = tr.frame(image, [t.face() for t, _ in chosen], face_ids=[t.id for t, _ in chosen])
            # With faces_per_frame, some faces are pasted with their last outputs at their new box (reuse.py).
            due, _ = self.budget.plan(framed, emotion_of)
            due = tr.mark_unsuitable(tr.crop(image, due))  # turned or blurred: left alone
            fresh = [r for r in due if r.skipped is None]
            tr.generate_faces(fresh, [emotion_of[r.face_id] for r in fresh], seed=c.seed)
            self.budget.keep(due, emotion_of, index)
            records = [r for r in framed if r.skipped is None]
            out = tr.paste(image, records, c.transfer.strength)
            self.stages["crop"].add(_seconds(framed, "frame", "crop"))  # framing (a few box sums) counts with it
            self.stages["generate"].add(_seconds(fresh, "generate"))
            self.stages["paste"].add(_seconds(records, "paste"))
        else:
            out = image.copy()
        self.last_clean = out
        now = time.perf_counter()
        if self._last_done is not None and now > self._last_done:
            rate = 1.0 / (now - self._last_done)
            self.fps = rate if self.fps is None else 0.9 * self.fps + 0.1 * rate
        self._last_done = now
        self._faces = len(tracks)
        return out

    def overlay_lines(self, faces: int) -> list[str]:
        s = self.stages
        if self.show_original:
            what = "original (space: transfer)"
        elif self.track_emotions is None:
            what = f"{self.target} ({self.emotion + 1}/{len(EMOTIONS)})"
        else:
            what = "tracks " + ", ".join(f"{i} {EMOTIONS[e]}" for i, e in sorted(self.track_emotions.items()))
        if self.faces is not None and not self.show_original:
            what += "; largest face" if self.faces == "largest" else f"; tracks {','.join(map(str, self.faces))} only"
        fps = "-" if self.fps is None else f"{self.fps:.1f}"
        noise = "fresh noise" if self.config.seed is None else f"seed {self.config.seed}"
        return [
            what,
            f"{fps} fps  faces {faces}  {noise}",
            f"detect {s['detect'].text()}  crop {s['crop'].text()}  generate {s['generate'].text()}  paste {s['paste'].text()} ms",
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
            self.set_emotion(int(ch) - 1)
            self.show_original = False
        elif ch == "n":
            self.set_emotion(self.emotion + 1)
        elif ch == "p":
            self.set_emotion(self.emotion - 1)
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
    def _progress_bar(self, reader: FrameReader) -> Any:
        """A tqdm bar (frames, ETA) for a video file that announces its length; None for cameras and streams."""
        c = self.config
        if c.quiet or not c.progress or reader.live or not reader.frame_count:
            return None
        from tqdm import tqdm

        total = reader.frame_count if c.max_frames is None else min(reader.frame_count, c.max_frames)
        return tqdm(total=total, unit="frame", file=sys.stderr, dynamic_ncols=True, desc="fex demo")

    def _audio_source(self, reader: FrameReader) -> Optional[str]:
        """The file whose audio the output keeps: the input video (not a camera, not a stream URL)."""
        if reader.is_camera or _is_url(reader.source):
            return None
        return os.fspath(reader.source)

    def run(self) -> DemoStats:
        """Read the source to its end (or ``max_frames``, a quit key, SIGINT or SIGTERM); returns what was done.

        Fails fast, in this order: a window that cannot be shown (:class:`GuiUnavailable`), a virtual
        camera without pyvirtualcam (:class:`VirtualCameraUnavailable`), a source that cannot be opened
        (FileNotFoundError, ValueError, :class:`VideoSourceError`), the model, the output file, the stream,
        the virtual camera device. A signal ends the loop after the frame in hand; the outputs are then
        closed as at the end of the stream, so the file plays (reason "interrupted"/"terminated").

        Each frame goes to the window, the file, the stream and the virtual camera; its latency (capture to
        the last of these) is kept in :attr:`DemoStats.latencies`. With ``realtime`` (by default when
        streaming or on a virtual camera) a video file is read at its frame rate, as a camera gives frames.
        """
        c = self.config
        stats = DemoStats(output=c.output, stream=c.stream)
        display = self.display
        if display is None and c.show_window:
            display = CvWindow(c.window)
        if c.virtual_camera and self.camera_class is None:
            _pyvirtualcam_camera()  # pyvirtualcam is there, or say what to install before any work
        reader = self.reader or FrameReader(c.source, open_timeout=c.open_timeout)
        sink: Optional[Union[FfmpegSink, VideoSink]] = None
        streamer: Optional[StreamSink] = None
        camera: Optional[VirtualCameraSink] = None
        signals = _StopOnSignals()
        start = time.perf_counter()
        latencies = stats.latencies
        try:
            if not reader.started:
                reader.start()
            self.load_transfer()
            signals.__enter__()
            fps, size = reader.fps or 30.0, reader.size or (640, 480)
            stats.source_fps = reader.fps
            if c.output is not None:
                sink = open_video_sink(c.output, fps, size, fourcc=c.fourcc, audio_from=self._audio_source(reader))
                stats.codec, stats.audio = sink.codec, sink.audio
                if sink.warning:
                    self._log(f"fex demo: warning: {sink.warning}", error=True)
                self._log(f"writing {c.output} at {sink.fps:g} fps: {sink.codec}; audio: {sink.audio}")
            if c.stream is not None:
                streamer = StreamSink(c.stream, fps, size)
                self._log(f"streaming to {c.stream} at {streamer.fps:g} fps: {streamer.codec}")
            if c.virtual_camera:
                camera = VirtualCameraSink(size, fps, device=c.virtual_camera_device, camera_class=self.camera_class)
                stats.virtual_camera = camera.device
                self._log(f"sending to the virtual camera {camera.describe()}")
            if display is not None:
                self._log(KEY_HELP)
            outputs = [o for o in (sink, streamer, camera) if o is not None]
            file_overlay, window_overlay = self.overlay_in("file"), self.overlay_in("window")
            realtime = (c.live_output if c.realtime is None else c.realtime) and not reader.live
            stats.realtime = realtime
            interval = 1.0 / fps
            self._bar = self._progress_bar(reader)
            start = time.perf_counter()
            stats.reason = "end of stream"
            while True:
                if signals.reason is not None:
                    stats.reason = signals.reason
                    break
                if c.max_frames is not None and stats.frames >= c.max_frames:
                    stats.reason = "max frames"
                    break
                if realtime:  # a file at its own pace, as a camera would give it (not counted as latency)
                    wait = start + stats.frames * interval - time.perf_counter()
                    if wait > 0:
                        time.sleep(wait)
                t_read = time.perf_counter()
                frame = reader.read(timeout=c.read_timeout)
                if frame is None:
                    break
                captured = frame.time if reader.live else time.perf_counter()
                self.stages["read"].add(time.perf_counter() - t_read)  # waiting for the decoder (or camera)
                clean = self.transform(frame.image)
                stats.frames += 1
                marked = self.with_overlay(clean) if (file_overlay and outputs) or (window_overlay and display) else clean
                t_write = time.perf_counter()
                for out in outputs:
                    out.write(marked if file_overlay else clean)
                if outputs:
                    self.stages["write"].add(time.perf_counter() - t_write)
                if self._bar is not None:
                    self._bar.update(1)
                if display is not None:
                    key = display.show(marked if window_overlay else clean)
                    latencies.append(time.perf_counter() - captured)
                    if not self.handle_key(key):
                        stats.reason = "quit"
                        break
                    if display.closed():
                        stats.reason = "window closed"
                        break
                else:
                    latencies.append(time.perf_counter() - captured)
        except KeyboardInterrupt:
            stats.reason = signals.reason or "interrupted"
        finally:
            stats.seconds = time.perf_counter() - start
            if self._bar is not None:
                self._bar.close()
                self._bar = None
            reader.stop()
            self.close()
            try:
                if camera is not None:
                    stats.camera_frames = camera.frames
                    camera.close()
            finally:
                try:
                    if streamer is not None:
                        stats.streamed = streamer.frames
                        streamer.close()
                finally:
                    try:
                        if sink is not None:
                            stats.written = sink.frames
                            sink.close()
                    finally:
                        signals.__exit__(None, None, None)
                        if display is not None:
                            display.close()
        stats.read = reader.frames_read
        stats.dropped = reader.frames_dropped
        if not reader.live:
            stats.expected_frames = reader.frame_count
            # One frame of slack: some containers round the count they announce.
            if stats.reason == "end of stream" and reader.frame_count and stats.read < reader.frame_count - 1:
                stats.reason = "truncated"
        stats.detections = self.detections
        stats.tracks = self.tracker.created
        stats.timings_ms = {k: v.mean_ms for k, v in self.stages.items() if v.count or k in _ALWAYS_REPORTED}
        stats.faces_generated, stats.faces_reused = self.budget.generated, self.budget.reused
        stats.saved = list(self.saved)
        return stats


def run_demo(config: DemoConfig, transfer: Any = None, display: Any = None,
             camera_class: Optional[Callable[..., Any]] = None) -> DemoStats:
    """Run ``fex demo`` with ``config``; see :class:`DemoLoop`."""
    return DemoLoop(config, transfer=transfer, display=display, camera_class=camera_class).run()
