"""A budget of faces through the generator per frame (``fex demo --faces-per-frame N``).

Four faces at 1280x720 cost the generator four times one face's time on every frame; on two AVX2
cores that alone is most of a 60 FPS frame. A tracked face's edit changes slowly next to the frame
rate (the flow is smooth, the noise is fixed per track), so with a budget of N the faces that waited
longest are regenerated and the others are pasted with their last outputs (flow, residual, image)
at the box where their track is now: the face's own pixels still move live, only the edit is a frame
or two old. New faces and faces whose emotion changed never wait. Without a budget every face is
regenerated on every frame, exactly as :meth:`fexsdk.Transfer.apply` would.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:  # records come from fexsdk.Transfer; this module needs only their fields
    from fexsdk.transfer import FaceRecord


def check_faces_per_frame(value: Optional[int]) -> Optional[int]:
    """None (every face on every frame) or an int >= 1; anything else is a ValueError."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"faces_per_frame must be an integer >= 1 (or None: every face on every frame), got {value!r}")
    return value


@dataclass
class _Generated:
    """A track's last pass through the generator."""

    frame: int
    emotion: str
    record: "FaceRecord"


class GenerationBudget:
    """Which of a frame's faces go through the generator, and the last outputs of those that do not."""

    def __init__(self, faces_per_frame: Optional[int] = None) -> None:
        self.faces_per_frame = check_faces_per_frame(faces_per_frame)
        self._last: dict[int, _Generated] = {}
        #: Faces generated and faces reused, over the run.
        self.generated = 0
        self.reused = 0

    def plan(self, records: Sequence["FaceRecord"], emotion_of: Mapping[int, str]) -> tuple[list["FaceRecord"], list["FaceRecord"]]:
        """Split ``records`` (framed, not cropped) into (to generate now, reused: filled from their last pass).

        Reused records get the last pass's crop, output, parts, target and suitability verdict; their
        ``box`` stays this frame's. Tracks no longer among ``records`` are forgotten.
        """
        ids = {r.face_id for r in records}
        self._last = {k: v for k, v in self._last.items() if k in ids}
        if self.faces_per_frame is None:
            self.generated += len(records)
            return list(records), []
        must, waiting = [], []
        for r in records:
            last = self._last.get(r.face_id)
            (must if last is None or last.emotion != emotion_of[r.face_id] else waiting).append(r)
        waiting.sort(key=lambda r: self._last[r.face_id].frame)  # the longest-waiting first
        room = max(0, self.faces_per_frame - len(must))
        due, reused = must + waiting[:room], waiting[room:]
        for r in reused:
            old = self._last[r.face_id].record
            r.crop, r.output, r.parts, r.target, r.skipped = old.crop, old.output, old.parts, old.target, old.skipped
        self.generated += len(due)
        self.reused += len(reused)
        return due, reused

    def keep(self, records: Sequence["FaceRecord"], emotion_of: Mapping[int, str], frame: int) -> None:
        """Remember the records just generated (or judged unsuitable) on ``frame``."""
        if self.faces_per_frame is None:
            return
        for r in records:
            self._last[r.face_id] = _Generated(frame, emotion_of[r.face_id], r)
