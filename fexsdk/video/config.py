"""``fex demo``'s options: :class:`DemoConfig`."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Mapping, Sequence
from typing import Optional, Union

import numpy as np

from fexsdk.emotions import emotion_index
from fexsdk.video.reuse import check_faces_per_frame
from fexsdk.options import DEMO_TRANSFER, TransferOptions
from fexsdk.video.live import check_stream_url
from fexsdk.video.writer import _check_output_path


def _emotion(value: Union[str, int]) -> int:
    """An emotion name, alias or index (also as a digit string, as typed on a command line) -> index."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    return emotion_index(value)


#: Which tracks change: None (every track), "largest" (the largest on each frame) or a list of track ids.
FaceChoice = Union[None, str, Sequence[int]]
#: One emotion for every chosen track (name, alias or index), or one per track id ({1: "happy", 3: "sad"}).
DemoEmotion = Union[str, int, Mapping[int, Union[str, int]]]


def _is_track_id(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)) and int(value) >= 0


def face_choice(faces: FaceChoice) -> Union[None, str, list[int]]:
    """A checked face choice: None, "largest" or the sorted track ids (as Transfer.apply's faces=, by track id)."""
    what = ('faces must be None (every track), "largest" (the largest track on each frame) or a list of track ids '
            "(integers >= 0, drawn at each face in the overlay)")
    if faces is None or (isinstance(faces, str) and faces == "largest"):
        return faces
    if isinstance(faces, (str, bytes, Mapping)) or not isinstance(faces, (Sequence, np.ndarray)):
        raise ValueError(f"{what}, got {faces!r}")
    if len(faces) == 0:
        raise ValueError(f"{what}; got an empty list (give at least one track id, or None for every track)")
    bad = [f for f in faces if not _is_track_id(f)]
    if bad:
        raise ValueError(f"{what}; {bad[0]!r} in {list(faces)!r} is not a track id")
    return sorted({int(f) for f in faces})  # a track id given twice is one choice, as in Transfer.apply


def track_emotions(emotion: DemoEmotion) -> Optional[dict[int, int]]:
    """{track id: emotion index} for an emotion per track, None for one emotion (checked either way)."""
    if not isinstance(emotion, Mapping):
        _emotion(emotion)
        return None
    example = 'e.g. {1: "happy", 3: "sad"}'
    if not emotion:
        raise ValueError(f"emotion is an empty mapping: give an emotion per track id, {example}, or one emotion")
    if all(isinstance(k, str) and not k.strip().isdigit() for k in emotion):
        raise ValueError(f"fex demo takes one emotion (a name, alias or index) or one per track id ({example}); "
                         f"intensities such as {dict(emotion)!r} are not supported in video")
    out: dict[int, int] = {}
    for key, value in emotion.items():
        if not _is_track_id(key):
            raise ValueError(f"an emotion per track maps track ids (integers >= 0) to emotions, {example}; "
                             f"got the key {key!r}")
        try:
            out[int(key)] = _emotion(value)
        except ValueError as exc:
            raise ValueError(f"emotion for track {int(key)}: {exc}") from None
    return out


@dataclass
class DemoConfig:
    """Options of ``fex demo`` (see ``fex demo --help``).

    The source is ``input`` (a video file or stream URL) or ``camera`` (an index;
    camera 0 when neither is given). With ``output`` or ``headless`` no window is
    opened. ``seed=None`` draws fresh dropout noise every frame (it flickers; for
    comparison); otherwise track ``i`` gets the noise face ``i`` gets from
    ``Transfer.apply(..., seed=seed)`` (fexsdk.noise.noise_for).

    Which faces change, by track id (ids start at 0 and count up as faces first appear; the overlay
    draws each track's id at its box): ``faces`` None (every track), "largest" or a list of ids; and
    ``emotion`` one emotion for them all or one per id ({1: "happy", 3: "sad"}). A face whose track is
    not chosen, or not in the mapping, is left bit-identical.

    ``overlay`` (the emotion, FPS, timings and track ids drawn on the frame): None (default) draws it in
    the window only, never into the written video; True draws it in both, False in neither.
    ``fourcc`` forces OpenCV's VideoWriter with that codec (no audio); without it the output
    is written by ffmpeg where it can (:func:`fexsdk.video.writer.open_video_sink`). ``progress``
    shows a progress bar (frames, ETA) for video files that announce their frame count.

    Speed: ``transfer.detect_size`` shrinks the copy of the frame that YuNet (the default detector) sees to
    this many pixels on its longer side (None: the detector's own rule, 960); at 480 a 640x480
    frame is seen at 0.75x, where faces from about 100 px are found (YuNet needs about 70 px in the
    copy); other detectors always see the whole frame. ``detect_thread``
    runs detection in a thread of its own, overlapping the generation and paste-back of the frames
    that follow; its faces reach the tracks on the next detection frame (``detect_every`` frames
    later, corrected for the lag), so the output depends on the frames only, never on timing.

    Live outputs, each of which (like ``output``) means no window: ``stream`` sends the frames as a live
    stream through ffmpeg (``udp://HOST:PORT`` MPEG-TS, ``srt://``, ``rtmp://``, ...;
    :class:`fexsdk.video.live.StreamSink`); ``virtual_camera`` sends them to a virtual camera through pyvirtualcam
    (``virtual_camera_device`` picks one; :class:`fexsdk.video.live.VirtualCameraSink`). ``realtime`` paces a
    video file at its frame rate, as a camera would give it (None: when streaming or on a virtual camera).
    """

    camera: Optional[int] = None
    input: Optional[str] = None
    output: Optional[str] = None
    headless: bool = False
    overlay: Optional[bool] = None
    #: The model, detector, blend, threads, align, strength (None: the model's default for the emotion) and
    #: detect_size (default 480) the Transfer is built and called with (fexsdk.options.TransferOptions).
    transfer: TransferOptions = field(default_factory=DEMO_TRANSFER.replace)
    #: One emotion (name, alias or index) for every chosen track, or {track id: emotion}; keys 1-7, n, p
    #: set the emotion of every chosen track.
    emotion: DemoEmotion = "happy"
    #: Which tracks change: None (all), "largest" (the largest on each frame) or a list of track ids.
    faces: FaceChoice = None
    #: At most this many faces through the generator per frame, the longest-waiting first; the others are
    #: pasted with their last outputs at their current box (fexsdk.video.reuse). None: every face, every frame.
    faces_per_frame: Optional[int] = None
    seed: Optional[int] = 0
    detect_every: int = 3
    detect_thread: bool = True
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
    progress: bool = True
    stream: Optional[str] = None
    virtual_camera: bool = False
    virtual_camera_device: Optional[str] = None
    realtime: Optional[bool] = None

    @property
    def source(self) -> Union[int, str]:
        if self.input is not None:
            return os.fspath(self.input)
        return 0 if self.camera is None else self.camera

    @property
    def show_window(self) -> bool:
        return not self.headless and self.output is None and self.stream is None and not self.virtual_camera

    @property
    def live_output(self) -> bool:
        """Whether frames go out live: a stream or a virtual camera."""
        return self.stream is not None or bool(self.virtual_camera)

    def validate(self) -> None:
        if self.input is not None and self.camera is not None:
            raise ValueError("give either a camera index or an input video, not both")
        if self.camera is not None and (isinstance(self.camera, bool) or not isinstance(self.camera, int)):
            raise ValueError(f"camera must be an integer index, got {self.camera!r}")
        per_track = track_emotions(self.emotion)
        chosen = face_choice(self.faces)
        if per_track is not None and isinstance(chosen, list) and not set(chosen) & set(per_track):
            raise ValueError(f"faces {chosen} and the tracks given an emotion {sorted(per_track)} have no id in "
                             "common: no face would change")
        check_faces_per_frame(self.faces_per_frame)
        for name in ("detect_every", "drop_after"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        if not isinstance(self.transfer, TransferOptions):
            raise ValueError(f"transfer must be a fexsdk.options.TransferOptions, got {self.transfer!r}")
        self.transfer.validate()  # detect_size and strength
        if not isinstance(self.detect_thread, bool):
            raise ValueError(f"detect_thread must be True or False, got {self.detect_thread!r}")
        if self.max_frames is not None and (isinstance(self.max_frames, bool) or not isinstance(self.max_frames, int)
                                            or self.max_frames < 1):
            raise ValueError(f"max_frames must be an integer >= 1 (or None for no limit), got {self.max_frames!r}")
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
            if self.input is not None and _same_file(self.input, self.output):
                raise ValueError(f"--output {self.output} is the --input video: writing it would destroy the input "
                                 "while it is read; choose another output file")
        if self.overlay is not None and not isinstance(self.overlay, bool):
            raise ValueError(f"overlay must be True, False or None (window only), got {self.overlay!r}")
        if self.fourcc is not None and len(self.fourcc) != 4:
            raise ValueError(f"a codec (fourcc) has 4 characters, e.g. mp4v, MJPG, FFV1; got {self.fourcc!r}")
        if self.stream is not None:
            check_stream_url(self.stream)
        if not isinstance(self.virtual_camera, bool):
            raise ValueError(f"virtual_camera must be True or False, got {self.virtual_camera!r}")
        if self.virtual_camera_device is not None and not self.virtual_camera:
            raise ValueError("virtual_camera_device is given but virtual_camera is off")
        if self.realtime is not None and not isinstance(self.realtime, bool):
            raise ValueError(f"realtime must be True, False or None (when streaming), got {self.realtime!r}")


def _same_file(a: Union[str, os.PathLike], b: Union[str, os.PathLike]) -> bool:
    """Whether two paths name the same file (links and relative paths included); URLs never do."""
    if "://" in os.fspath(a) or "://" in os.fspath(b):
        return False
    pa, pb = Path(a), Path(b)
    if pa.exists() and pb.exists():
        return os.path.samefile(pa, pb)
    return pa.resolve() == pb.resolve()


