"""One Transfer shared by several threads gives exactly the single-threaded results."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from fexsdk.transfer import Transfer
from tests.conftest import face_scene


@pytest.fixture(scope="module")
def scenes(fer_sample):
    faces, _ = fer_sample
    # Scenes of 1-3 faces at different sizes: the detector's scale pyramid differs from call to call.
    out = []
    for i in range(6):
        n = 1 + i % 3
        img, _ = face_scene(faces[3 * i: 3 * i + n], size=(150, 120, 180)[i % 3], seed=i)
        out.append(img)
    return out


def _jobs(scenes, repeats=4):
    targets = ("happy", "surprise", "sad", "angry")
    return [(i, s, targets[(i + r) % 4], 10 * i + r) for r in range(repeats) for i, s in enumerate(scenes)]


def test_four_threads_sharing_a_transfer_match_one_thread(scenes):
    tr = Transfer(device="cpu", threads=1)
    jobs = _jobs(scenes)
    expected = [tr.apply(scenes[i], t, seed=seed, return_faces=True) for i, _, t, seed in jobs]
    assert sum(len(f) for _, f in expected) > len(jobs)  # faces were found and changed

    def run(job):
        i, _, t, seed = job
        return tr.apply(scenes[i], t, seed=seed, return_faces=True)

    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(run, jobs))
    mismatches = [k for k, ((a, fa), (b, fb)) in enumerate(zip(expected, got)) if fa != fb or not np.array_equal(a, b)]
    assert not mismatches, f"{len(mismatches)} of {len(jobs)} results differ from the single-threaded ones"


def test_a_given_detector_object_is_never_called_by_two_threads_at_once(scenes):
    class Fragile:
        """Like an OpenCV detector: breaks when two threads use it at the same time."""

        name = "fragile"
        crop_margin = 0.0
        crop_offset = 0.0

        def __init__(self):
            self.inside = 0
            self.overlaps = 0
            self.calls = 0
            self.guard = threading.Lock()

        def detect(self, image):
            with self.guard:
                self.inside += 1
                self.calls += 1
                if self.inside > 1:
                    self.overlaps += 1
            time.sleep(0.005)
            with self.guard:
                self.inside -= 1
            return []

    det = Fragile()
    tr = Transfer(device="cpu", threads=1, detector=det)
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda img: tr.apply(img, "happy"), scenes * 4))
    assert det.calls == 4 * len(scenes) and det.overlaps == 0
    assert tr.detector.name == "fragile"


def test_onnxruntime_pools_do_not_spin():
    from fexsdk.backends import MAX_DEFAULT_THREADS, default_threads

    tr = Transfer(device="cpu")
    opts = tr.backend.session.get_session_options()
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert opts.get_session_config_entry("session.inter_op.allow_spinning") == "0"
    assert opts.intra_op_num_threads == default_threads() <= MAX_DEFAULT_THREADS
    assert Transfer(device="cpu", threads=1).backend.session.get_session_options().intra_op_num_threads == 1


def test_fex_sets_passive_openmp_waiting_unless_told_otherwise(monkeypatch, capsys):
    import os

    from fexsdk.cli import main

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert main(["train", "--list-presets"]) in (0, 2)  # 2 where torch is not installed
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    main(["train", "--list-presets"])
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
    capsys.readouterr()
