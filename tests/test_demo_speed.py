"""fex demo's speed levers change how fast, not what: the detector thread, late detections in the
tracker, the detector's smaller copy, and their options (behaviour only; no timings)."""

import subprocess
import sys
import threading

import numpy as np
import pytest

from fexsdk.faces import Face
from fexsdk.options import TransferOptions
from fexsdk.video.tracking import FaceTracker
from fexsdk.video import DemoConfig, DemoLoop, run_demo
from tests.conftest import REPO, face_scene


@pytest.fixture(scope="module")
def bundled():
    from fexsdk.transfer import Transfer

    return Transfer(device="cpu", threads=1)


class ScriptedTransfer:
    """A Transfer stand-in whose detector reports ``boxes[i]`` on its i-th call and which records the boxes
    it is asked to change per frame."""

    backend = None

    def __init__(self, boxes):
        self.boxes = list(boxes)
        self.calls = 0
        self.changed = []

    def detect(self, image):
        box = self.boxes[min(self.calls, len(self.boxes) - 1)]
        self.calls += 1
        return [] if box is None else [Face(box, 0.9)]

    def frame(self, image, faces, face_ids=None):
        self.changed.append([tuple(f.box) for f in faces])
        return []

    def crop(self, image, records):
        return records

    def mark_unsuitable(self, records):
        return records

    def generate_faces(self, records, target, seed=None):
        return records

    def paste(self, image, records, strength=1.0):
        return image.copy()


def test_detector_thread_gives_the_inline_results_on_a_still_face(bundled, fer_sample):
    faces, _ = fer_sample
    img, _ = face_scene(faces[[0]], size=150)
    results = {}
    for threaded in (False, True):
        loop = DemoLoop(DemoConfig(headless=True, overlay=False, detect_every=2, detect_thread=threaded, quiet=True),
                        transfer=bundled)
        outs = [loop.process(img) for _ in range(7)]
        results[threaded] = (outs, [(t.id, t.box) for t in loop.tracker.tracks], loop.detections)
        loop.close()
    (inline, inline_tracks, n_inline), (threaded, threaded_tracks, n_threaded) = results[False], results[True]
    assert len(inline_tracks) == 1 and threaded_tracks == inline_tracks
    assert n_inline == n_threaded == 4
    for i, (a, b) in enumerate(zip(inline, threaded)):
        assert np.array_equal(a, b), f"frame {i} differs between inline and threaded detection"
    assert not np.array_equal(inline[0], img), "the face was not changed"


def test_threaded_detections_arrive_one_detection_late_whatever_the_timing():
    # the first detection is awaited (no track yet); later ones update the tracks on the next detection frame
    boxes = [(100.0, 100.0, 80.0, 80.0)] * 3 + [None] * 10  # the face leaves after the third detection
    runs = []
    for _ in range(2):
        fake = ScriptedTransfer(boxes)
        loop = DemoLoop(DemoConfig(headless=True, overlay=False, detect_every=2, drop_after=1, quiet=True),
                        transfer=fake)
        frame = np.zeros((240, 320, 3), np.uint8)
        for _ in range(10):
            loop.process(frame)
        loop.close()
        runs.append([len(c) for c in fake.changed])
    # detections on frames 0, 2, 4 see the face; the one on frame 6 does not and is applied on frame 8
    assert runs[0] == runs[1] == [1] * 8


def test_late_detections_are_matched_where_the_track_was():
    """A face moving 4 px/frame, detected every 3 frames and delivered 3 frames late: corrected for the
    lag, the track's box stays on the face; taken as current, it trails behind."""
    speed, every = 4.0, 3

    def truth(i):
        return (50.0 + speed * i, 60.0, 80.0, 80.0)

    late, naive = FaceTracker(smoothing=0.5, velocity=0.3), FaceTracker(smoothing=0.5, velocity=0.3)
    late.update([truth(0)], 0)
    naive.update([truth(0)], 0)
    for k in range(every, 100, every):
        late.update([truth(k - every)], k, observed=k - every)
        naive.update([truth(k - every)], k)
    err_late = abs(late.tracks[0].box[0] - truth(k)[0])
    err_naive = abs(naive.tracks[0].box[0] - truth(k)[0])
    assert err_late < 1.0, "corrected for the lag, the box converges onto the face"
    assert err_naive > 10.0, "taken as current, it trails by the lag times the speed (12 px)"
    assert late.tracks[0].last_seen == k - every


def test_a_late_detection_leaves_the_track_as_an_on_time_one_would():
    kw = dict(smoothing=0.5, velocity=0.3)
    on_time, late = FaceTracker(**kw), FaceTracker(**kw)
    for t in (on_time, late):
        t.update([(100.0, 50.0, 80.0, 80.0)], 0)
    on_time.update([(112.0, 51.0, 82.0, 81.0)], 3)
    on_time.predict(6)
    late.predict(3)
    late.update([(112.0, 51.0, 82.0, 81.0)], 6, observed=3)
    a, b = on_time.tracks[0], late.tracks[0]
    assert np.allclose(a.box, b.box) and np.allclose(a.velocity, b.velocity) and a.last_seen == b.last_seen == 3


def test_late_detection_of_a_new_face_starts_a_track_from_its_own_frame():
    t = FaceTracker()
    t.update([], 0)
    tracks = t.update([(10, 10, 50, 50)], 6, observed=3)
    assert len(tracks) == 1 and tracks[0].first_frame == 3 and tracks[0].updated == 6
    with pytest.raises(ValueError, match="observed must be <= frame_index"):
        t.update([], 7, observed=8)


def test_detect_size_runs_the_transfers_yunet_on_a_smaller_copy(bundled):
    loop = DemoLoop(DemoConfig(headless=True, transfer=TransferOptions(detect_size=320)), transfer=bundled)
    twin = loop._detector().__self__  # Transfer.clone(detect_size=320): same model, its own detector
    det, own = twin.detector, bundled.detector
    assert twin is not bundled and twin.backend is bundled.backend and own.input_size != 320
    assert det.name == "yunet" and det.input_size == 320 and repr(det).startswith("YuNetDetector(")
    assert (det.path, det.score_threshold, det.nms_threshold, det.top_k, det.min_face) == \
        (own.path, own.score_threshold, own.nms_threshold, own.top_k, own.min_face)
    # None keeps the Transfer's own detector (and its own size rule)
    assert DemoLoop(DemoConfig(headless=True, transfer=TransferOptions(detect_size=None)), transfer=bundled)._detector() == bundled.detect


def test_a_detector_that_is_not_yunet_is_used_as_it_is():
    from fexsdk.transfer import Transfer

    tr = Transfer(device="cpu", detector="haar", threads=1)
    twin = DemoLoop(DemoConfig(headless=True, transfer=TransferOptions(detect_size=320)), transfer=tr)._detector().__self__
    assert twin.detector.name == "haar" and twin.backend is tr.backend


def test_run_stops_the_detector_thread(tmp_path):
    fake = ScriptedTransfer([(100.0, 100.0, 80.0, 80.0)])

    class Reader:
        """Three black frames, then the end."""

        started, live, is_camera, source, fps, size = True, False, False, "frames", 30.0, (320, 240)
        frames_read = frames_dropped = 0
        frame_count = 3

        def __init__(self):
            from fexsdk.video.reader import Frame

            self.frames = [Frame(i, np.zeros((240, 320, 3), np.uint8), 0.0) for i in range(3)]

        def read(self, timeout=None):
            if not self.frames:
                return None
            self.frames_read += 1
            return self.frames.pop(0)

        def stop(self):
            pass

    loop = DemoLoop(DemoConfig(input="frames", headless=True, quiet=True, detect_every=1), transfer=fake, reader=Reader())
    stats = loop.run()
    assert stats.frames == 3 and stats.detections == 3
    assert not [t for t in threading.enumerate() if t.name.startswith("fex-detect")]


@pytest.mark.parametrize("kwargs, match", [
    (dict(transfer=TransferOptions(detect_size=16)), "detect_size must be an integer >= 32"),
    (dict(transfer=TransferOptions(detect_size=480.0)), "detect_size must be an integer >= 32"),
    (dict(transfer=TransferOptions(detect_size=True)), "detect_size must be an integer >= 32"),
    (dict(detect_thread="yes"), "detect_thread must be True or False"),
])
def test_speed_options_are_checked(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DemoConfig(headless=True, **kwargs).validate()


def test_cli_detect_options():
    from fexsdk.cli import build_parser

    p = build_parser()
    args = p.parse_args(["demo", "--input", "x.mp4", "--detect-size", "0", "--detect-inline"])
    assert args.detect_size is None and args.detect_thread is False
    args = p.parse_args(["demo", "--input", "x.mp4"])
    assert args.detect_size == 480 and args.detect_thread is True
    r = subprocess.run([sys.executable, "-m", "fexsdk.cli", "demo", "--input", "x.mp4", "--detect-size", "20"],
                       cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--detect-size: must be 0 (the detector's own size) or an integer >= 32" in r.stderr


def test_demo_fps_benchmark_runs_the_demo_and_names_the_cpu(tmp_path):
    from tests.conftest import FER_NPZ

    if not FER_NPZ.is_file():
        pytest.importorskip("skimage", reason="the clip's face: FER2013 or scikit-image's astronaut")
    out = tmp_path / "demo.json"
    cmd = [sys.executable, str(REPO / "benchmarks" / "demo_fps.py"), "--frames", "12", "--rounds", "1",
           "--sizes", "640x480", "--variants", "before", "480-thread", "--json", str(out)]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    import json

    res = json.loads(out.read_text())
    assert res["machine"]["isa"] and res["machine"]["isa"] in r.stdout
    rows = res["rows"]
    assert [(x["variant"].split(":")[0], x["output"]) for x in rows] == [
        ("before", "none"), ("before", "H.264 .mp4"),
        ("480-px copy + detector thread (default)", "none"), ("480-px copy + detector thread (default)", "H.264 .mp4")]
    for row in rows:
        assert row["frames"] == 12 and row["tracks"] == 1 and row["fps"] > 0
        assert {"read", "detect", "crop", "generate", "paste"} <= set(row["stages_ms"])
    assert rows[1]["ffmpeg_cpu_ms_per_frame"] > 0 and rows[0]["ffmpeg_cpu_ms_per_frame"] == 0


def test_avx2_limits_are_labelled_never_as_an_avx2_machine(monkeypatch):
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import latency_machine as lm
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    cpu = {"isa": "AVX-512, 2 FMA units", "vnni": True}
    for k in lm.AVX2_LIMITS:
        monkeypatch.delenv(k, raising=False)
    assert lm.isa_line(cpu) == "AVX-512 with VNNI"
    for k, v in lm.AVX2_LIMITS.items():
        monkeypatch.setenv(k, v)
    line = lm.isa_line(cpu)
    assert line.startswith("AVX-512 with VNNI CPU with AVX2 limits where settable") and "not an AVX2 machine" in line
