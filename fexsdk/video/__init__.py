"""``fex demo``: expression transfer on a webcam, a video file or a stream, frame by frame, in a window or
headless. One job a module:

- :mod:`fexsdk.video.config`: :class:`DemoConfig`, the options (its Transfer's in a
  :class:`~fexsdk.options.TransferOptions`);
- :mod:`fexsdk.video.reader`: frames in (:class:`FrameReader`: camera, file or stream URL, bounded waits);
- :mod:`fexsdk.video.tracking`: face tracks between detections (:class:`FaceTracker`);
- :mod:`fexsdk.video.loop`: the loop (:class:`DemoLoop`, :func:`run_demo`);
- :mod:`fexsdk.video.window`: the window and its overlay;
- :mod:`fexsdk.video.writer`: frames out to a file (ffmpeg, or OpenCV's VideoWriter);
- :mod:`fexsdk.video.live`: live outputs (a stream through ffmpeg, a virtual camera);
- :mod:`fexsdk.video.stats`: what a run did (:class:`DemoStats`).

The names below are importable from ``fexsdk.video`` itself.
"""

from fexsdk.faces import box_iou
from fexsdk.video.config import DemoConfig
from fexsdk.video.live import (
    STREAM_FORMATS,
    StreamSink,
    VirtualCameraSink,
    VirtualCameraUnavailable,
    check_stream_url,
    virtual_camera_setup,
)
from fexsdk.video.loop import DemoLoop, run_demo
from fexsdk.video.reader import Frame, FrameReader, FrameTimeout, VideoSourceError
from fexsdk.video.stats import DemoStats
from fexsdk.video.tracking import Box, FaceTracker, Track
from fexsdk.video.window import KEY_HELP, CvWindow, GuiUnavailable, draw_overlay, draw_track_ids, gui_support
from fexsdk.video.writer import (
    FFMPEG_SUFFIXES,
    FOURCC_BY_SUFFIX,
    FfmpegSink,
    VideoSink,
    find_ffmpeg,
    open_video_sink,
    probe_audio,
)

__all__ = [
    "FFMPEG_SUFFIXES",
    "FOURCC_BY_SUFFIX",
    "KEY_HELP",
    "STREAM_FORMATS",
    "Box",
    "CvWindow",
    "DemoConfig",
    "DemoLoop",
    "DemoStats",
    "FaceTracker",
    "FfmpegSink",
    "Frame",
    "FrameReader",
    "FrameTimeout",
    "GuiUnavailable",
    "StreamSink",
    "Track",
    "VideoSink",
    "VideoSourceError",
    "VirtualCameraSink",
    "VirtualCameraUnavailable",
    "box_iou",
    "check_stream_url",
    "draw_overlay",
    "draw_track_ids",
    "find_ffmpeg",
    "gui_support",
    "open_video_sink",
    "probe_audio",
    "run_demo",
    "virtual_camera_setup",
]
