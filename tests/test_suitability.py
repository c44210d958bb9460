"""Faces turned far from frontal or too blurred are left unchanged by default, and their records say why."""

import cv2
import numpy as np
import pytest

import fexsdk
from fexsdk.faces import Face
from fexsdk.suitability import MAX_YAW_RATIO, sharpness, yaw_ratio

skimage_data = pytest.importorskip("skimage.data")


@pytest.fixture(scope="module")
def astronaut():
    return cv2.cvtColor(skimage_data.astronaut(), cv2.COLOR_RGB2BGR)


def _face(eyes=((40, 50), (60, 50)), nose=(50, 62)):
    pts = np.array([*eyes, nose, (42, 75), (58, 75)], np.float32)
    return Face((30, 30, 40, 60), 0.9, pts)


def test_yaw_ratio_of_frontal_turned_and_tilted_faces():
    assert yaw_ratio(_face()) == pytest.approx(0.0)
    assert yaw_ratio(_face(nose=(58, 62))) == pytest.approx(0.8)
    # The eye line tilted by 30 degrees, nose on its perpendicular bisector: still frontal.
    c, s = np.cos(np.radians(30)), np.sin(np.radians(30))
    eyes = ((50 - 10 * c, 50 - 10 * s), (50 + 10 * c, 50 + 10 * s))
    assert yaw_ratio(_face(eyes, nose=(50 - 12 * s, 50 + 12 * c))) == pytest.approx(0.0, abs=1e-5)
    assert yaw_ratio(Face((0, 0, 10, 10), 1.0)) is None


def test_sharpness_does_not_depend_on_contrast_but_on_blur():
    rng = np.random.default_rng(0)
    face = cv2.GaussianBlur(rng.integers(0, 256, (48, 48)).astype(np.float32), (0, 0), 0.7)
    assert sharpness(face / 4) == pytest.approx(sharpness(face), rel=1e-3)
    assert sharpness(cv2.GaussianBlur(face, (0, 0), 2.0)) < sharpness(face) / 5


def test_turned_and_blurred_faces_are_left_alone_and_reported(astronaut):
    tr = fexsdk.Transfer("warp")
    found = tr.detect(astronaut)[0]
    turned = Face(found.box, found.score, found.landmarks.copy())
    eye_r, eye_l = turned.landmarks[0], turned.landmarks[1]
    turned.landmarks[2] = (eye_r + eye_l) / 2 + (eye_l - eye_r) / 2 * (MAX_YAW_RATIO + 0.2) + [0, 30]
    res = tr.process(astronaut, "surprise", faces=[turned], seed=0)
    assert res.records[0].skipped == "turned"
    assert np.array_equal(res.image, astronaut)

    blurred = cv2.GaussianBlur(astronaut, (0, 0), 8)
    res = tr.process(blurred, "surprise", faces=[found], seed=0)
    assert res.records[0].skipped == "blurred"
    assert np.array_equal(res.image, blurred)

    res = tr.process(astronaut, "surprise", faces=[found], seed=0)  # the face itself is editable
    assert res.records[0].skipped is None and not np.array_equal(res.image, astronaut)
    # skip_unsuitable=False edits them anyway
    forced = fexsdk.Transfer("warp", skip_unsuitable=False).process(astronaut, "surprise", faces=[turned], seed=0)
    assert forced.records[0].skipped is None and not np.array_equal(forced.image, astronaut)


def test_a_skipped_face_does_not_change_the_others(astronaut):
    """Each face keeps its own noise and target: skipping one leaves the other bit-identical."""
    tr = fexsdk.Transfer("warp")
    found = tr.detect(astronaut)[0]
    pair = np.hstack([astronaut, astronaut])  # the same face twice, the right one given turned landmarks
    x, y, w, h = found.box
    right = found.landmarks + [512, 0]
    right[2] = (right[0] + right[1]) / 2 + (right[1] - right[0]) / 2 * (MAX_YAW_RATIO + 0.2) + [0, 30]
    faces = [found, Face((x + 512, y, w, h), found.score, right)]
    res = tr.process(pair, ["happy", "sad"], faces=faces, seed=3)
    assert [r.skipped for r in res.records] == [None, "turned"]
    assert np.array_equal(res.image[:, 512:], astronaut)
    plain = fexsdk.Transfer("warp", skip_unsuitable=False).process(pair, ["happy", "sad"], faces=faces, seed=3)
    assert np.array_equal(res.image[:, :512], plain.image[:, :512])
    assert not np.array_equal(plain.image[:, 512:], astronaut)
