"""fex demo's live outputs: ``--stream`` received and decoded on localhost by the bundled ffmpeg,
``--virtual-camera`` with a stand-in camera class (pyvirtualcam is an optional extra), the messages
when either cannot run, and the capture-to-output latency and FPS in the summary and ``--stats`` JSON.

Loopback only and bounded in time: a 30-frame 320x240 clip at 25 fps (paced, so about 1.2 s a run),
the receiver stops 3 s after the last datagram and is killed after 60 s in any case.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from fexsdk.video import live, loop
from fexsdk.video.live import STREAM_FORMATS, VirtualCameraUnavailable, check_stream_url, find_ffmpeg, virtual_camera_setup
from fexsdk.cli import main
from fexsdk.video import DemoConfig, run_demo
from tests.conftest import REPO, face_scene

W, H = 320, 240
FPS = 25
N_FRAMES = 30
ERRORS_MD = REPO / "docs" / "errors.md"


@pytest.fixture(scope="module")
def ffmpeg() -> str:
    exe = find_ffmpeg()
    if exe is None:
        pytest.skip("no ffmpeg: imageio-ffmpeg (a base dependency) is not installed")
    return exe


@pytest.fixture(scope="module")
def clip(fer_sample, tmp_path_factory) -> tuple[Path, list[np.ndarray]]:
    """A FER2013 face (100 px) sliding 2 px/frame over a texture: 30 frames, 320x240, 25 fps, lossless (FFV1)."""
    faces, _ = fer_sample
    still, _ = face_scene(faces[[0]], size=100, canvas=(H, W))
    frames = [np.roll(still, 2 * i - 30, axis=1) for i in range(N_FRAMES)]
    path = tmp_path_factory.mktemp("stream_clip") / "clip.mkv"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"FFV1"), FPS, (W, H))
    if not writer.isOpened():
        pytest.skip("this OpenCV cannot write FFV1")
    for f in frames:
        writer.write(f)
    writer.release()
    return path, frames


@pytest.fixture(scope="module")
def bundled():
    from fexsdk.transfer import Transfer

    return Transfer(device="cpu", threads=1)


def _decode(path: Path) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    out = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        out.append(f)
    cap.release()
    return out


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_listening(port: int, proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """Until a UDP socket is bound to ``port`` (Linux: /proc/net/udp; elsewhere a short wait)."""
    table = Path("/proc/net/udp")
    if not table.exists():  # pragma: no cover
        time.sleep(1.0)
        return
    needle = f":{port:04X} "
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the receiving ffmpeg exited: {proc.stderr.read()}"
        if any(needle in line.split()[1] + " " for line in table.read_text().splitlines()[1:]):
            return
        time.sleep(0.05)
    raise AssertionError(f"the receiving ffmpeg did not listen on udp port {port} within {timeout} s")


class FakeCamera:
    """Stands in for pyvirtualcam.Camera: keeps how it was opened and every frame sent."""

    opened: list["FakeCamera"] = []

    def __init__(self, width, height, fps, **kwargs):
        self.width, self.height, self.fps, self.kwargs = width, height, fps, kwargs
        self.device = kwargs.get("device", "/dev/video42")
        self.backend = "fake"
        self.frames: list[np.ndarray] = []
        self.closed = False
        FakeCamera.opened.append(self)

    def send(self, frame):
        assert not self.closed
        self.frames.append(np.array(frame, copy=True))

    def close(self):
        self.closed = True


class NoDevice:
    """pyvirtualcam.Camera where no backend finds a device (its message on Linux)."""

    def __init__(self, width, height, fps, **kwargs):
        raise RuntimeError("'v4l2loopback' backend: No v4l2 loopback device found at /dev/video[0-99]. "
                           "Did you run 'modprobe v4l2loopback'?")


# -- --stream ------------------------------------------------------------------------------------


def test_stream_is_received_and_decoded_on_localhost(ffmpeg, clip, tmp_path, capsys):
    path, frames = clip
    port = _free_udp_port()
    url = f"udp://127.0.0.1:{port}"
    received = tmp_path / "received.mkv"
    rx = subprocess.Popen([ffmpeg, "-hide_banner", "-loglevel", "error", "-nostdin",
                           "-i", f"{url}?timeout=3000000&overrun_nonfatal=1&fifo_size=100000",
                           "-map", "0:v", "-c:v", "ffv1", "-y", str(received)],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait_listening(port, rx)
        out, stats_file = tmp_path / "out.mkv", tmp_path / "stats.json"
        rc = main(["demo", "--input", str(path), "--stream", url, "--output", str(out), "--headless",
                   "--threads", "1", "--stats", str(stats_file)])
        printed = capsys.readouterr().out
        assert rc == 0, printed
        rx.wait(60)
    finally:
        if rx.poll() is None:
            rx.kill()
            rx.wait()
    assert f"streamed {N_FRAMES} frames to {url}" in printed and f"wrote {out} ({N_FRAMES} frames)" in printed
    assert "latency capture to output: p50 " in printed and "(paced at the source's 25 fps)" in printed

    got, written = _decode(received), _decode(out)
    assert len(written) == N_FRAMES
    # every datagram arrives on loopback; allow the first GOP (0.5 s) in case the receiver joined late
    assert N_FRAMES - FPS // 2 <= len(got) <= N_FRAMES, f"{len(got)} frames received"
    assert all(f.shape == (H, W, 3) for f in got)
    # each received frame is a changed frame (H.264 at crf 20: a few levels off), in order
    offset = N_FRAMES - len(got)
    for i, f in enumerate(got):
        sent = written[offset + i].astype(np.int16)
        err = np.abs(f.astype(np.int16) - sent).mean()
        assert err < 3.0, f"received frame {i}: mean |error| {err:.2f} against the frame sent"
    changed = [np.abs(written[i].astype(np.int16) - frames[i]).mean() for i in range(N_FRAMES)]
    assert max(changed) > 0.3, "the face was not changed: the test would not tell stream from source"

    stats = json.loads(stats_file.read_text())
    assert stats["frames"] == stats["streamed"] == stats["written"] == N_FRAMES
    assert stats["stream"] == url and stats["realtime"] is True and stats["source_fps"] == FPS
    lat = stats["latency_ms"]
    assert 0 < lat["p50"] <= lat["p95"] <= lat["max"]
    # paced at 25 fps: the run takes at least the clip's length, and holds at most its rate
    assert stats["seconds"] >= (N_FRAMES - 1) / FPS and stats["fps"] <= FPS * 1.05


def test_stream_command_is_low_latency_h264(ffmpeg, tmp_path):
    port = _free_udp_port()  # nothing listens: UDP is sent all the same
    sink = live.StreamSink(f"udp://127.0.0.1:{port}", 30, (161, 121), ffmpeg=ffmpeg)
    try:
        for _ in range(3):
            sink.write(np.zeros((121, 161, 3), np.uint8))
    finally:
        sink.close()
    cmd = " ".join(sink.command)
    for part in ("-f rawvideo -pix_fmt bgr24", "-c:v libx264 -preset ultrafast -tune zerolatency", "-g 15",
                 "-bf 0", "pad=ceil(iw/2)*2", "-f mpegts", f"udp://127.0.0.1:{port}?pkt_size=1316"):
        assert part in cmd, part
    assert sink.frames == 3 and sink.gop == 15 and "MPEG-TS" in sink.codec
    assert check_stream_url("rtmp://127.0.0.1/live/key", ffmpeg)[1] == "flv"
    assert check_stream_url("srt://127.0.0.1:9000?mode=caller", ffmpeg)[1] == "mpegts"


@pytest.mark.parametrize("url, fragment", [
    ("http://127.0.0.1:8080/live", "the bundled ffmpeg cannot stream to http://; it streams to udp://"),
    ("127.0.0.1:23000", "--stream takes a URL such as udp://127.0.0.1:23000"),
    ("udp://127.0.0.1", "a udp:// URL needs a host and a port"),
])
def test_stream_refuses_what_it_cannot_send(ffmpeg, clip, url, fragment, capsys):
    rc = main(["demo", "--input", str(clip[0]), "--stream", url])
    err = capsys.readouterr().err
    assert rc == 2 and fragment in err, err
    assert fragment.replace(" ", "") in ERRORS_MD.read_text().replace(" ", "")


def test_a_scheme_this_ffmpeg_lacks_is_refused_naming_the_ones_it_has(ffmpeg, clip, monkeypatch, capsys):
    monkeypatch.setitem(live._PROTOCOLS, ffmpeg, frozenset({"file", "pipe", "udp", "rtmp"}))
    rc = main(["demo", "--input", str(clip[0]), "--stream", "srt://127.0.0.1:9000"])
    err = capsys.readouterr().err
    assert rc == 2 and "the bundled ffmpeg cannot stream to srt://; it streams to udp://, rtmp://" in err, err
    # this one has every scheme fex demo knows a container for
    monkeypatch.delitem(live._PROTOCOLS, ffmpeg)
    assert set(live.stream_schemes(ffmpeg)) == set(STREAM_FORMATS)


# -- --virtual-camera ---------------------------------------------------------------------------------


def test_virtual_camera_gets_rgb_frames_at_the_source_size_and_rate(bundled, clip, tmp_path):
    path, _ = clip
    FakeCamera.opened.clear()
    out = tmp_path / "out.mkv"
    cfg = DemoConfig(input=str(path), output=str(out), virtual_camera=True, virtual_camera_device="/dev/video10",
                     quiet=True)
    assert not cfg.show_window
    stats = run_demo(cfg, transfer=bundled, camera_class=FakeCamera)
    assert len(FakeCamera.opened) == 1
    cam = FakeCamera.opened[0]
    assert (cam.width, cam.height, cam.fps) == (W, H, FPS) and cam.kwargs == {"device": "/dev/video10"}
    assert cam.closed and stats.camera_frames == N_FRAMES and stats.virtual_camera == "/dev/video10"
    written = _decode(out)  # FFV1: the same frames, lossless, in BGR
    assert len(cam.frames) == len(written) == N_FRAMES
    for sent, bgr in zip(cam.frames, written):
        assert sent.shape == (H, W, 3) and sent.dtype == np.uint8
        assert np.array_equal(sent, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)), "frames go to the camera as RGB"
    assert stats.realtime and stats.seconds >= (N_FRAMES - 1) / FPS
    assert len(stats.latencies) == N_FRAMES and stats.latency_ms(50) <= stats.latency_ms(95)


def test_virtual_camera_without_pyvirtualcam_says_what_to_install(clip, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "pyvirtualcam", None)  # import pyvirtualcam -> ImportError
    rc = main(["demo", "--input", str(clip[0]), "--virtual-camera"])
    err = capsys.readouterr().err
    assert rc == 2
    assert '--virtual-camera needs pyvirtualcam: pip install "fexsdk[vcam]"' in err, err
    assert virtual_camera_setup() in err


def test_virtual_camera_without_a_device_says_how_to_make_one(bundled, clip, monkeypatch, capsys):
    with pytest.raises(VirtualCameraUnavailable, match="no virtual camera device") as info:
        run_demo(DemoConfig(input=str(clip[0]), virtual_camera=True, quiet=True), transfer=bundled,
                 camera_class=NoDevice)
    assert "No v4l2 loopback device found" in str(info.value) and virtual_camera_setup() in str(info.value)
    # on the command line: exit 2 and one line (pyvirtualcam there, no device)
    fake = lambda: (NoDevice, {})  # noqa: E731
    monkeypatch.setattr(live, "_pyvirtualcam_camera", fake)
    monkeypatch.setattr(loop, "_pyvirtualcam_camera", fake)
    rc = main(["demo", "--input", str(clip[0]), "--virtual-camera"])
    err = capsys.readouterr().err
    assert rc == 2 and "fex demo: error: --virtual-camera: no virtual camera device" in err, err
    assert "no virtual camera device" in ERRORS_MD.read_text()


def test_virtual_camera_setup_per_os():
    assert "sudo modprobe v4l2loopback" in virtual_camera_setup("linux")
    for platform in ("win32", "darwin"):
        assert "OBS" in virtual_camera_setup(platform) and "Virtual Camera" in virtual_camera_setup(platform)


# -- statistics ------------------------------------------------------------------------------------------


def test_headless_run_prints_latency_and_writes_stats(clip, tmp_path, capsys):
    stats_file = tmp_path / "s.json"
    rc = main(["demo", "--input", str(clip[0]), "--headless", "--threads", "1", "--max-frames", "8",
               "--stats", str(stats_file)])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    assert "latency capture to output: p50 " in printed and "paced" not in printed  # a file, not streamed: as fast as it goes
    stats = json.loads(stats_file.read_text())
    assert stats["frames"] == 8 and stats["realtime"] is False and stats["stream"] is None
    assert set(stats["latency_ms"]) == {"p50", "p95", "max", "mean"} and stats["fps"] > 0


def test_stats_file_in_a_missing_folder_is_refused_before_any_work(clip, tmp_path, capsys):
    rc = main(["demo", "--input", str(clip[0]), "--headless", "--stats", str(tmp_path / "missing" / "s.json")])
    err = capsys.readouterr().err
    assert rc == 2 and "--stats" in err and "folder does not exist" in err, err
