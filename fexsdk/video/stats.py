"""What a run of ``fex demo`` did: :class:`DemoStats` (counts, stage timings, latency; ``--stats`` JSON)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np


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
    #: "end of stream", "truncated" (a video file gave fewer frames than its header announces),
    #: "max frames", "quit", "window closed", "interrupted" (SIGINT, Ctrl-C) or "terminated" (SIGTERM).
    reason: str = ""
    #: The frame count a video file's header announces (None where it does not say).
    expected_frames: Optional[int] = None
    output: Optional[str] = None
    #: The output's codec and what became of the input's audio (as logged when writing starts).
    codec: Optional[str] = None
    audio: Optional[str] = None
    #: Mean milliseconds per call of each stage: read (waiting for the decoder or camera, per frame), detect
    #: (frames where it ran), crop, generate and paste (frames with faces), write (frames sent to an output).
    timings_ms: dict[str, float] = field(default_factory=dict)
    #: Faces through the generator, and faces pasted with their last outputs (``faces_per_frame``).
    faces_generated: int = 0
    faces_reused: int = 0
    saved: list[str] = field(default_factory=list)
    #: The live outputs: the stream's URL and the frames sent to it; the virtual camera and its frames.
    stream: Optional[str] = None
    streamed: int = 0
    virtual_camera: Optional[str] = None
    camera_frames: int = 0
    #: The source's frame rate (None where it does not say) and whether a video file was paced at it.
    source_fps: Optional[float] = None
    realtime: bool = False
    #: Seconds from each frame's capture to its output (every output written, the window shown): for a
    #: camera or stream from when its reader took the frame, for a video file (read ahead) from when
    #: the loop took it. ffmpeg's encoding and the network come after.
    latencies: list[float] = field(default_factory=list, repr=False)

    @property
    def fps(self) -> float:
        """The frame rate held over the run (frames over the seconds from the first read to the last output)."""
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    def latency_ms(self, q: float) -> Optional[float]:
        """The ``q``-th percentile (0-100) of the per-frame latency from capture to output, in ms (None: no frames)."""
        if not self.latencies:
            return None
        return 1000.0 * float(np.percentile(np.asarray(self.latencies), q))

    def latency_summary(self) -> dict[str, Optional[float]]:
        """p50, p95, max and mean of the capture-to-output latency, in ms (None: no frames)."""
        if not self.latencies:
            return {"p50": None, "p95": None, "max": None, "mean": None}
        ms = 1000.0 * np.asarray(self.latencies)
        return {"p50": round(float(np.percentile(ms, 50)), 3), "p95": round(float(np.percentile(ms, 95)), 3),
                "max": round(float(ms.max()), 3), "mean": round(float(ms.mean()), 3)}

    def to_dict(self) -> dict[str, Any]:
        """What ``fex demo --stats FILE`` writes (JSON): counts, timings, latency p50/p95 and the FPS held."""
        return {
            "frames": self.frames, "seconds": round(self.seconds, 4), "fps": round(self.fps, 3),
            "source_fps": self.source_fps, "realtime": self.realtime, "reason": self.reason,
            "latency_ms": self.latency_summary(),
            "timings_ms": {k: round(v, 3) for k, v in self.timings_ms.items()},
            "faces_generated": self.faces_generated, "faces_reused": self.faces_reused,
            "read": self.read, "dropped": self.dropped, "detections": self.detections, "tracks": self.tracks,
            "output": self.output, "written": self.written, "codec": self.codec, "audio": self.audio,
            "stream": self.stream, "streamed": self.streamed,
            "virtual_camera": self.virtual_camera, "camera_frames": self.camera_frames,
        }

    def write_json(self, path: Union[str, os.PathLike]) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @property
    def stopped_by_signal(self) -> bool:
        return self.reason in ("interrupted", "terminated")
