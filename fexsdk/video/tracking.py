"""Face tracks for live video: turns a detector that runs every few frames into stable,
smoothed boxes, each with its own noise seed, so transferred faces do not jitter or flicker."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np

from fexsdk.faces import Face, box_iou

__all__ = ["Box", "FaceTracker", "Track"]

Box = tuple[float, float, float, float]


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
    track. ``id`` is also the face's id for its dropout noise (fexsdk.noise.noise_for), so
    a face keeps its noise for the track's whole life. ``misses`` counts the detections in a row
    that did not see the face. ``landmarks`` are those of the last detection matched to the track
    (in the image, as of ``raw_box``), where the detector gives them.
    """

    id: int
    box: Box
    raw_box: Box
    score: float = 1.0
    hits: int = 1
    misses: int = 0
    first_frame: int = 0
    last_seen: int = 0
    updated: int = 0
    velocity: Box = (0.0, 0.0, 0.0, 0.0)
    landmarks: Optional[np.ndarray] = field(default=None, compare=False)

    def face(self) -> Face:
        """The track as a Face for ``Transfer``: its box, and the last detection's landmarks moved and
        scaled from ``raw_box`` onto ``box``, so that crops stay aligned between detections."""
        if self.landmarks is None:
            return Face(self.box, self.score)
        rx, ry, rw, rh = self.raw_box
        x, y, w, h = self.box
        moved = (self.landmarks - (rx, ry)) * (w / rw, h / rh) + (x, y)
        return Face(self.box, self.score, moved.astype(np.float32))


def _valid_box(box: Sequence[float]) -> Box:
    x, y, w, h = box
    return (float(x), float(y), max(float(w), 1.0), max(float(h), 1.0))


def _shifted(box: Box, velocity: Box, frames: int) -> Box:
    """``box`` moved on (or, for negative ``frames``, back) by ``frames`` frames at ``velocity``."""
    if not frames or not any(velocity):
        return box
    return _valid_box(b + v * frames for b, v in zip(box, velocity))


class FaceTracker:
    """Boxes from a detector that runs every few frames -> stable, smoothed face tracks.

    Args:
        iou_threshold: a detection continues a track when their boxes overlap at least this much.
        smoothing: weight of the track's own (predicted) box against a new detection, in [0, 1)
            (0: jump to each detection; 0.5: move half-way).
        drop_after: a track not seen for this many detections in a row is dropped.
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
                 velocity: float = 0.3) -> None:
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
            t.box = _shifted(t.box, t.velocity, max(0, frame_index - t.updated))
            t.updated = frame_index

    def predict(self, frame_index: int) -> list[Track]:
        """The live tracks with their boxes moved on to ``frame_index`` (a frame without detection)."""
        self._advance(frame_index)
        return self.tracks

    def update(self, detections: Sequence[Any], frame_index: int, observed: Optional[int] = None) -> list[Track]:
        """Feed detections at frame ``frame_index``; returns the live tracks in id order.

        ``observed`` is the frame the detections were made on when it is earlier (a detector running
        in its own thread delivers them a few frames late): they are matched against each track's box
        as predicted for that frame, and the track ends up as it would be now had they arrived on time,
        so a late detection does not drag a moving box back to where the face was.
        """
        dets = [_as_box(d) for d in detections]
        marks = [getattr(d, "landmarks", None) for d in detections]
        frame_index = int(frame_index)
        observed = frame_index if observed is None else int(observed)
        if observed > frame_index:
            raise ValueError(f"observed must be <= frame_index (detections cannot come from a later frame), "
                             f"got observed={observed}, frame_index={frame_index}")
        self._advance(frame_index)
        lag = frame_index - observed
        then = [_shifted(t.box, t.velocity, -lag) for t in self._tracks]  # each track's box at `observed`
        pairs = []
        for ti, track in enumerate(self._tracks):
            for di, (box, _) in enumerate(dets):
                iou = box_iou(then[ti], box)
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
            residual = [n - o for n, o in zip(box, then[ti])]
            dt = observed - track.last_seen
            # Corrected as of `observed`, then moved on to now at the corrected speed: the state the
            # tracker would have now had the detection arrived on time.
            corrected = _valid_box(o + gain * r for o, r in zip(then[ti], residual))
            if self.velocity > 0 and dt > 0:
                track.velocity = tuple(v + self.velocity * r / dt for v, r in zip(track.velocity, residual))  # type: ignore[assignment]
            track.box = _shifted(corrected, track.velocity, lag)
            track.raw_box = box
            track.landmarks = marks[di]
            track.score = score
            track.hits += 1
            track.misses = 0
            track.last_seen = observed
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
            self._tracks.append(Track(tid, box, box, score, first_frame=observed, last_seen=observed,
                                      updated=frame_index, landmarks=marks[di]))
        self._tracks.sort(key=lambda t: t.id)
        return self.tracks
