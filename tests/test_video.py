"""fex demo without a window: tracking, per-track noise, the reader thread, headless runs and bad input."""

import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from fexsdk import video
from fexsdk.faces import Face
from fexsdk.options import TransferOptions
from fexsdk.video import (
    DemoConfig,
    DemoLoop,
    FaceTracker,
    FrameReader,
    FrameTimeout,
    GuiUnavailable,
    VideoSourceError,
    box_iou,
    run_demo,
)
from tests.conftest import REPO, face_scene

W, H = 320, 240
N_FRAMES = 20
FACE = 100  # px
FACE_Y = 110


# -- helpers -------------------------------------------------------------------


def _write_video(stem: Path, frames):
    """Write frames losslessly (FFV1 .mkv) where this OpenCV can, else MJPG .avi; returns (path, lossless)."""
    for suffix, fourcc, lossless in ((".mkv", "FFV1", True), (".avi", "MJPG", False), (".mp4", "mp4v", False)):
        path = stem.with_suffix(suffix)
        w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 10, (W, H))
        if not w.isOpened():
            continue
        for f in frames:
            w.write(f)
        w.release()
        return path, lossless
    pytest.skip("this OpenCV can write no video (FFV1, MJPG, mp4v)")


def _decode(path) -> list:
    cap = cv2.VideoCapture(str(path))
    out = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        out.append(f)
    cap.release()
    return out


class FakeCapture:
    """A camera that gives ``n`` numbered frames (then ends), optionally blocking forever after ``block_after``."""

    def __init__(self, n=5, block_after=None, delay=0.0):
        self.n, self.block_after, self.delay = n, block_after, delay
        self.i = 0
        self.release_event = threading.Event()
        self.released = False

    def read(self):
        if self.block_after is not None and self.i >= self.block_after:
            self.release_event.wait(30)
            return False, None
        if self.i >= self.n:
            return False, None
        if self.delay:
            time.sleep(self.delay)
        frame = np.full((H, W, 3), self.i % 256, np.uint8)
        self.i += 1
        return True, frame

    def release(self):
        self.released = True


class FakeDisplay:
    """Stands in for the OpenCV window: returns scripted keys and keeps what it was shown."""

    def __init__(self, keys):
        self.keys = list(keys)
        self.shown = []
        self.closed_called = False

    def show(self, frame):
        self.shown.append(frame.copy())
        return self.keys.pop(0) if self.keys else -1

    def closed(self):
        return False

    def close(self):
        self.closed_called = True


# -- fixtures ------------------------------------------------------------------


@pytest.fixture(scope="module")
def tr(tiny_onnx):
    from fexsdk.transfer import Transfer

    return Transfer(tiny_onnx, device="cpu", threads=1)


@pytest.fixture(scope="module")
def clip(fer_sample, tmp_path_factory):
    """~20 frames, 320x240: a FER2013 face moving 2 px/frame over a textured background."""
    faces, _ = fer_sample
    rng = np.random.default_rng(0)
    background = cv2.GaussianBlur(rng.integers(60, 200, (H, W, 3), dtype=np.uint8), (0, 0), 3)
    big = cv2.resize(faces[0], (FACE, FACE), interpolation=cv2.INTER_CUBIC)[..., None]
    frames, boxes = [], []
    for i in range(N_FRAMES):
        x = 40 + 2 * i
        f = background.copy()
        f[FACE_Y : FACE_Y + FACE, x : x + FACE] = big
        frames.append(f)
        boxes.append((x, FACE_Y, FACE, FACE))
    path, lossless = _write_video(tmp_path_factory.mktemp("clip") / "clip", frames)
    return path, lossless, boxes


def _far_mask(box, margin=30):
    x, y, s, _ = box
    m = np.ones((H, W), bool)
    m[max(0, y - margin) : y + s + margin, max(0, x - margin) : x + s + margin] = False
    return m


# -- tracker -------------------------------------------------------------------


def test_box_iou():
    assert box_iou((0, 0, 10, 10), (0, 0, 10, 10)) == pytest.approx(1.0)
    assert box_iou((0, 0, 10, 10), (5, 0, 10, 10)) == pytest.approx(50 / 150)
    assert box_iou((0, 0, 10, 10), (20, 20, 5, 5)) == 0.0


def test_tracker_ids_stable_new_face_gets_new_id():
    t = FaceTracker(velocity=0.0)
    a, b = (10, 10, 50, 50), (200, 10, 50, 50)
    tracks = t.update([Face(a, 0.9), Face(b, 0.8)], 0)
    assert [x.id for x in tracks] == [0, 1]
    for f in (3, 6, 9):  # small moves, detections in the other order
        tracks = t.update([(b[0] + f, 12, 50, 50), (a[0] + f, 11, 50, 50)], f)
        assert [x.id for x in tracks] == [0, 1]
        assert tracks[0].box[0] < 100 < tracks[1].box[0]
    tracks = t.update([(a[0] + 9, 11, 50, 50), (b[0] + 9, 12, 50, 50), (120, 150, 40, 40)], 12)
    assert [x.id for x in tracks] == [0, 1, 2]
    assert t.created == 3


def test_tracker_greedy_iou_matching():
    t = FaceTracker(iou_threshold=0.3, smoothing=0.0, velocity=0.0)
    t.update([(0, 0, 40, 40), (30, 0, 40, 40)], 0)
    # closer to track 1 than to track 0: track 1 takes it, track 0 is missed
    tracks = t.update([(28, 0, 40, 40)], 1)
    assert tracks[1].box == (28, 0, 40, 40) and tracks[1].misses == 0
    assert tracks[0].misses == 1 and tracks[0].box == (0, 0, 40, 40)
    # overlapping too little (IoU < 0.3) starts a new track
    tracks = t.update([(28, 0, 40, 40), (200, 200, 40, 40), (50, 0, 40, 40)], 2)
    assert [x.id for x in tracks] == [0, 1, 2, 3]


def test_tracker_holds_then_drops_lost_track():
    t = FaceTracker(drop_after=2, velocity=0.0)
    t.update([(10, 10, 50, 50)], 0)
    held = t.update([], 3)
    assert len(held) == 1 and held[0].box == (10, 10, 50, 50) and held[0].misses == 1
    assert t.predict(4)[0].box == (10, 10, 50, 50)
    assert t.update([], 6) == []
    new = t.update([(10, 10, 50, 50)], 9)
    assert new[0].id == 1, "a face that comes back after its track was dropped is a new track"
    t.update([(10, 10, 50, 50)], 12)
    t.update([], 15)
    assert t.update([(11, 10, 50, 50)], 18)[0].misses == 0, "one miss is bridged"


def test_tracker_smoothing_is_a_moving_average():
    t = FaceTracker(smoothing=0.5, velocity=0.0)
    t.update([(0, 0, 100, 100)], 0)
    assert t.update([(10, 0, 100, 100)], 1)[0].box == pytest.approx((5, 0, 100, 100))
    assert t.update([(10, 0, 100, 100)], 2)[0].box == pytest.approx((7.5, 0, 100, 100))
    assert t.tracks[0].raw_box == (10, 0, 100, 100)
    t0 = FaceTracker(smoothing=0.0, velocity=0.0)
    t0.update([(0, 0, 100, 100)], 0)
    assert t0.update([(10, 0, 100, 100)], 1)[0].box == pytest.approx((10, 0, 100, 100))


def test_tracker_velocity_moves_boxes_between_detections():
    held = FaceTracker(velocity=0.0)
    moving = FaceTracker(velocity=0.3)
    for f in range(0, 31, 3):  # a face moving 2 px/frame, detected every 3 frames
        for t in (held, moving):
            t.update([(2.0 * f, 0, 80, 80)], f)
    last = held.tracks[0].box
    for f in (31, 32):
        truth = 2.0 * f
        assert held.predict(f)[0].box == last, "velocity 0 holds the box still between detections"
        assert abs(moving.predict(f)[0].box[0] - truth) < abs(last[0] - truth) - 1.0
    with pytest.raises(ValueError, match="backwards"):
        moving.update([], 10)


def test_tracker_rejects_bad_arguments():
    for kwargs in ({"iou_threshold": 0}, {"smoothing": 1.0}, {"drop_after": 0}, {"velocity": 2}):
        with pytest.raises(ValueError):
            FaceTracker(**kwargs)
    with pytest.raises(ValueError, match="box"):
        FaceTracker().update([(0, 0, -5, 5)], 0)


# -- per-track noise -------------------------------------------------------------


def test_per_track_seeds_fix_the_noise(tr, fer_sample):
    faces, _ = fer_sample
    img, truth = face_scene(faces[[0, 0]], size=100, canvas=(H, W))
    cfg = dict(headless=True, overlay=False, detect_every=2, quiet=True)
    loop = DemoLoop(DemoConfig(seed=7, **cfg), transfer=tr)
    outs = [loop.process(img) for _ in range(4)]
    tracks = loop.tracker.tracks
    assert len(tracks) == 2 and [t.id for t in tracks] == [0, 1]
    for o in outs[1:]:
        assert np.array_equal(o, outs[0]), "a still face with fixed per-track noise must not flicker"
    boxes = [t.box for t in tracks]
    # one noise policy: track i of the demo with seed 7 is face i of Transfer.apply with seed 7
    assert np.array_equal(outs[0], tr.apply(img, "happy", faces=boxes, seed=7))
    # the two (identical) faces get different noise: both with face 0's noise gives another image
    x, y, s, _ = truth[1]
    same = tr.apply(img, "happy", faces=boxes, seed=[7, 7])
    assert np.abs(same[y : y + s, x : x + s].astype(int) - outs[0][y : y + s, x : x + s]).mean() > 0.05
    # fresh noise every frame (seed=None) flickers
    fresh = DemoLoop(DemoConfig(seed=None, **cfg), transfer=tr)
    a, b = fresh.process(img), fresh.process(img)
    assert not np.array_equal(a, b)


# -- headless runs ---------------------------------------------------------------


def test_demo_headless_writes_every_frame_and_changes_only_the_face(tr, clip, tmp_path):
    path, lossless, boxes = clip
    out = tmp_path / ("out.mkv" if lossless else "out.avi")
    stats = run_demo(DemoConfig(input=str(path), output=str(out), headless=True, overlay=False, quiet=True,
                                detect_every=3), transfer=tr)
    assert stats.reason == "end of stream"
    assert stats.frames == stats.written == stats.read == N_FRAMES and stats.dropped == 0
    assert stats.tracks == 1 and stats.detections == 7
    assert set(stats.timings_ms) == {"read", "detect", "crop", "generate", "paste", "write"}
    assert all(v > 0 for v in stats.timings_ms.values())
    src, res = _decode(path), _decode(out)
    assert len(res) == N_FRAMES
    for i, (a, b, box) in enumerate(zip(src, res, boxes)):
        x, y, s, _ = box
        face_change = np.abs(b[y : y + s, x : x + s].astype(int) - a[y : y + s, x : x + s]).mean()
        assert face_change > 0.5, f"frame {i}: the face did not change"
        far = _far_mask(box)
        diff = np.abs(b[far].astype(int) - a[far])
        if lossless:
            assert diff.max() == 0, f"frame {i}: pixels far from the face changed"
        else:
            assert diff.mean() < 3.0


def test_demo_cli_subprocess(tiny_onnx, clip, tmp_path):
    path, _, boxes = clip
    out = tmp_path / "out.mp4"
    cmd = [sys.executable, "-m", "fexsdk.cli", "demo", "--input", str(path), "--output", str(out), "--headless",
           "--model", str(tiny_onnx), "--threads", "1", "--emotion", "surprise"]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert f"{N_FRAMES} frames (end of stream)" in r.stdout and f"({N_FRAMES} frames)" in r.stdout
    res, src = _decode(out), _decode(path)
    assert len(res) == N_FRAMES
    # no overlay in a written file by default (tests/test_video_out.py: --overlay draws it)
    band = (slice(0, 12), slice(0, 100))
    assert np.abs(res[5][band].astype(int) - src[5][band]).mean() < 3.0


def test_keys_and_fake_window(tr, clip, tmp_path):
    path, _, boxes = clip
    keys = [ord("3"), ord("n"), ord(" "), ord("s"), -1, ord("q")]
    display = FakeDisplay(keys)
    loop = DemoLoop(DemoConfig(input=str(path), overlay=False, save_dir=str(tmp_path / "saved"), quiet=True),
                    transfer=tr, display=display)
    stats = loop.run()
    assert stats.reason == "quit" and stats.frames == len(keys) and display.closed_called
    assert loop.target == "happy" and loop.show_original  # 3 -> fear, n -> happy; space -> original
    src = _decode(path)
    assert np.array_equal(display.shown[3], src[3]), "after space the original frame is shown"
    assert not np.array_equal(display.shown[1], src[1])
    assert len(stats.saved) == 1 and cv2.imread(stats.saved[0]) is not None
    assert loop.handle_key(ord("p")) and loop.target == "fear"
    loop.emotion = 0
    assert loop.handle_key(ord("p")) and loop.target == "neutral"
    assert loop.handle_key(ord("1")) and loop.target == "angry" and not loop.show_original
    assert loop.handle_key(-1) and not loop.handle_key(27)


def test_max_frames(tr, clip):
    stats = run_demo(DemoConfig(input=str(clip[0]), headless=True, max_frames=4, quiet=True), transfer=tr)
    assert stats.frames == 4 and stats.reason == "max frames" and stats.written == 0


# -- the reader ------------------------------------------------------------------


def test_file_reader_gives_every_frame_in_order(clip):
    with FrameReader(str(clip[0]), buffer=2) as reader:
        assert not reader.live and reader.size == (W, H)
        got = []
        while (f := reader.read(timeout=5)) is not None:
            time.sleep(0.002)  # a slow consumer must not lose frames
            got.append(f.index)
    assert got == list(range(N_FRAMES)) and reader.frames_dropped == 0


def test_live_reader_keeps_only_the_newest_frame():
    cap = FakeCapture(n=10)
    reader = FrameReader(0, capture_factory=lambda src: cap).start()
    deadline = time.monotonic() + 5
    while not reader.ended and time.monotonic() < deadline:
        time.sleep(0.01)
    frame = reader.read(timeout=1)
    assert frame.index == 9 and int(frame.image[0, 0, 0]) == 9
    assert reader.frames_dropped == 9 and reader.read(timeout=1) is None
    assert cap.released


def test_stream_that_ends_exits_cleanly(tr):
    cap = FakeCapture(n=6, delay=0.01)
    reader = FrameReader(0, capture_factory=lambda src: cap)
    stats = DemoLoop(DemoConfig(headless=True, quiet=True), transfer=tr, reader=reader).run()
    assert stats.reason == "end of stream" and stats.read == 6
    assert stats.frames >= 1 and stats.frames + stats.dropped == 6


def test_reader_waits_are_bounded():
    cap = FakeCapture(n=100, block_after=1)  # one frame, then read() hangs
    reader = FrameReader(0, capture_factory=lambda src: cap).start()
    assert reader.read(timeout=1).index == 0
    t0 = time.monotonic()
    with pytest.raises(FrameTimeout, match="no frame from camera 0"):
        reader.read(timeout=0.3)
    assert time.monotonic() - t0 < 2
    reader.stop(join_timeout=0.1)
    cap.release_event.set()

    gate = threading.Event()

    def slow_open(src):
        gate.wait(30)
        return FakeCapture()

    t0 = time.monotonic()
    with pytest.raises(VideoSourceError, match="did not open"):
        FrameReader(1, capture_factory=slow_open, open_timeout=0.3).start()
    assert time.monotonic() - t0 < 2
    gate.set()


# -- bad input -------------------------------------------------------------------


def test_camera_that_cannot_be_opened_fails_fast(capsys):
    from fexsdk.cli import main

    t0 = time.monotonic()
    with pytest.raises(VideoSourceError, match="could not open camera 99"):
        FrameReader(99, open_timeout=5).start()
    assert main(["demo", "--camera", "99", "--headless"]) == 2
    assert "could not open camera 99" in capsys.readouterr().err
    assert time.monotonic() - t0 < 10


def test_not_a_video_and_missing_file(tmp_path, capsys):
    from fexsdk.cli import main

    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n")
    with pytest.raises(ValueError, match="not a video"):
        run_demo(DemoConfig(input=str(text), headless=True, quiet=True))
    image = tmp_path / "photo.png"
    cv2.imwrite(str(image), np.zeros((40, 40, 3), np.uint8))
    with pytest.raises(ValueError, match="is an image"):
        run_demo(DemoConfig(input=str(image), headless=True, quiet=True))
    with pytest.raises(FileNotFoundError, match="not found"):
        run_demo(DemoConfig(input=str(tmp_path / "missing.mp4"), headless=True, quiet=True))
    assert main(["demo", "--input", str(text), "--headless"]) == 2
    assert "not a video" in capsys.readouterr().err


def test_window_without_gui_support_is_a_clear_error(clip, monkeypatch, capsys):
    from fexsdk.cli import main

    monkeypatch.setattr(video.window, "gui_support", lambda: (False, "this OpenCV was built without GUI support"))
    with pytest.raises(GuiUnavailable) as info:
        run_demo(DemoConfig(input=str(clip[0])))
    msg = str(info.value)
    assert "--output" in msg and "--headless" in msg and "pip install" in msg and "opencv-python" in msg
    assert main(["demo", "--input", str(clip[0])]) == 2
    assert "--headless" in capsys.readouterr().err


def test_this_opencv_reports_its_gui_support_honestly():
    ok, reason = video.gui_support()
    if "GUI:                           NONE" in cv2.getBuildInformation():
        assert not ok and "GUI" in reason


@pytest.mark.parametrize("kwargs, match", [
    ({"camera": 0, "input": "a.mp4"}, "not both"),
    ({"detect_every": 0}, "detect_every"),
    ({"max_frames": 0}, "max_frames"),
    ({"emotion": "bored"}, "unknown emotion"),
    ({"transfer": TransferOptions(strength=-1.0)}, "strength"),
    ({"transfer": TransferOptions(strength=100.0)}, "strength"),
    ({"output": "out.png"}, "video file name"),
    ({"output": "/no/such/folder/out.mp4"}, "does not exist"),
    ({"fourcc": "H26"}, "4 characters"),
    ({"overlay": "yes"}, "overlay must be"),
])
def test_config_is_checked(kwargs, match):
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        DemoConfig(headless=True, **kwargs).validate()


def test_bad_output_codec_is_a_clear_error(tr, clip, tmp_path):
    with pytest.raises(ValueError, match="could not open"):
        run_demo(DemoConfig(input=str(clip[0]), output=str(tmp_path / "out.mp4"), fourcc="ZZZZ", quiet=True),
                 transfer=tr)


def test_video_runtime_does_not_import_torch():
    code = "import sys, fexsdk.video, fexsdk.cli; fexsdk.cli.build_parser(); assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=60)


def test_a_track_that_drifts_off_the_frame_is_skipped_not_an_error():
    from fexsdk.video import DemoConfig, DemoLoop

    class Fake:
        """A Transfer stand-in that records the boxes it is asked to change."""

        backend = None

        def __init__(self):
            self.calls = []

        def detect(self, image):
            from fexsdk.faces import Face

            return [Face((600.0, 100.0, 80.0, 80.0), 1.0)]

        def frame(self, image, faces, face_ids=None):  # the stages the demo runs
            self.calls.append([f.box for f in faces])
            return []

        def crop(self, image, records):
            return records

        def mark_unsuitable(self, records):
            return records

        def generate_faces(self, records, target, seed=None):
            return records

        def paste(self, image, records, strength=1.0):
            return image.copy()

    fake = Fake()
    loop = DemoLoop(DemoConfig(headless=True, overlay=False, detect_every=100, velocity=1.0, smoothing=0.0), transfer=fake)
    frame = np.zeros((480, 640, 3), np.uint8)
    loop.process(frame)  # detection: a face at x=600
    loop.tracker.tracks[0].velocity = (40.0, 0.0, 0.0, 0.0)  # moving right, 40 px/frame
    for _ in range(3):
        loop.process(frame)  # predicted at 640, 680, 720: off the 640-px frame
    assert [len(c) for c in fake.calls] == [1]
    assert fake.calls[0][0][0] == 600.0
