"""Issue 34: `fex demo --output` keeps picture and sound together when the input's video starts after its audio.

The input is built with the ffmpeg binary imageio-ffmpeg ships: a black clip with a white flash and a
1 kHz beep at the same moment (2.0 s), whose video stream starts 1 s after its audio (as
``ffmpeg -itsoffset 1.0 -i v.mp4 -i a.m4a -c copy`` makes it, and as many real files are). The
demo's output must play the flash and the beep together; before the fix they came out 1 s apart.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from fexsdk.cli import main

imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")

#: When the flash and the beep happen in the input (its own timeline).
EVENT_S = 2.0
#: How far the input's video starts after its audio.
OFFSET_S = 1.0


def _ffmpeg() -> str:
    return imageio_ffmpeg.get_ffmpeg_exe()


def _run(*args: str, stdin: bytes | None = None) -> str:
    r = subprocess.run([_ffmpeg(), "-hide_banner", *args], input=stdin, capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    return r.stderr.decode(errors="replace")


def make_offset_clip(folder: Path) -> Path:
    """in.mp4: 3 s of 160x120 video starting at 1.0 s, 4 s of audio from 0; flash and beep both at 2.0 s."""
    fps, n = 25, 75
    frames = np.zeros((n, 120, 160, 3), np.uint8)
    first = round((EVENT_S - OFFSET_S) * fps)  # the flash's frame in the video's own timeline
    frames[first : first + 3] = 255
    _run("-loglevel", "error", "-y", "-f", "rawvideo", "-pix_fmt", "bgr24", "-s", "160x120", "-framerate", str(fps),
         "-i", "pipe:0", "-c:v", "libx264", "-pix_fmt", "yuv420p", str(folder / "v.mp4"), stdin=frames.tobytes())
    beep = f"if(between(t,{EVENT_S},{EVENT_S + 0.1}),0.8*sin(2*PI*1000*t),0)"
    _run("-loglevel", "error", "-y", "-f", "lavfi", "-i", f"aevalsrc='{beep}':s=16000:d=4", "-c:a", "aac",
         str(folder / "a.m4a"))
    out = folder / "in.mp4"
    _run("-loglevel", "error", "-y", "-itsoffset", str(OFFSET_S), "-i", str(folder / "v.mp4"), "-i", str(folder / "a.m4a"),
         "-map", "0:v", "-map", "1:a", "-c", "copy", str(out))
    return out


def flash_and_beep(path: Path) -> tuple[float, float]:
    """Presentation times (s) of the first bright frame and the first loud 10 ms of audio, as a player shows them."""
    text = _run("-i", str(path), "-vf", "signalstats,metadata=print:key=lavfi.signalstats.YAVG",
                "-af", "asetnsamples=160,astats=metadata=1:reset=1,ametadata=print:key=lavfi.astats.Overall.RMS_level",
                "-f", "null", "-")
    flash = beep = None
    time = {}
    for line in text.splitlines():
        m = re.search(r"\[Parsed_(a?)metadata.*pts_time:(-?[\d.]+)", line)
        if m:
            time[m.group(1)] = float(m.group(2))
            continue
        m = re.search(r"lavfi\.signalstats\.YAVG=([\d.]+)", line)
        if m and flash is None and float(m.group(1)) > 128:
            flash = time[""]
        m = re.search(r"lavfi\.astats\.Overall\.RMS_level=(-?[\d.]+|-inf)", line)
        if m and beep is None and m.group(1) != "-inf" and float(m.group(1)) > -30:
            beep = time["a"]
    assert flash is not None and beep is not None, f"no flash ({flash}) or beep ({beep}) found in {path}"
    return flash, beep


def test_demo_output_keeps_video_start_offset(tmp_path, capsys):
    src = make_offset_clip(tmp_path)
    flash, beep = flash_and_beep(src)
    assert abs(flash - beep) < 0.05 and abs(beep - EVENT_S) < 0.05  # the input itself is in sync

    out = tmp_path / "out.mp4"
    rc = main(["demo", "--input", str(src), "--output", str(out), "--threads", "1"])
    capsys.readouterr()
    assert rc == 0
    flash, beep = flash_and_beep(out)
    assert abs(flash - beep) < 0.1, f"flash at {flash:.3f} s, beep at {beep:.3f} s: out of sync"
    assert abs(beep - EVENT_S) < 0.1


def test_writer_offsets_video_only_when_the_input_has_one(tmp_path):
    """The offset read from the input: 1 s for the shifted file, 0 for its video-only source."""
    from fexsdk.video.writer import video_start_offset

    src = make_offset_clip(tmp_path)
    assert video_start_offset(src, _ffmpeg()) == pytest.approx(OFFSET_S, abs=0.02)
    assert video_start_offset(tmp_path / "v.mp4", _ffmpeg()) == 0.0
