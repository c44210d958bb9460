"""Choosing faces and an emotion per face: "largest", indices left to right, {index: emotion}."""

import cv2
import numpy as np
import pytest

import fexsdk

skimage_data = pytest.importorskip("skimage.data")


@pytest.fixture(scope="module")
def trio():
    """Three real faces left to right, the middle one the largest."""
    face = cv2.cvtColor(skimage_data.astronaut(), cv2.COLOR_RGB2BGR)[:300, 100:400]
    big = cv2.resize(face, (420, 420))
    small = cv2.resize(face, (300, 300))
    canvas = np.full((420, 1020, 3), 200, np.uint8)
    canvas[60:360, 0:300], canvas[:, 300:720], canvas[60:360, 720:1020] = small, big, small
    return canvas


@pytest.fixture(scope="module")
def tr():
    return fexsdk.Transfer("warp", threads=1)


def test_faces_are_numbered_left_to_right(tr, trio):
    _, faces = tr.apply(trio, "happy", seed=0, return_faces=True)
    assert len(faces) == 3
    xs = [f.center[0] for f in faces]
    assert xs == sorted(xs)


def test_chosen_faces_change_the_others_stay_bit_identical(tr, trio):
    everyone = tr.apply(trio, "surprise", seed=1)
    only = tr.apply(trio, "surprise", faces=[0, 2], seed=1)
    assert np.array_equal(only[:, 300:720], trio[:, 300:720])  # face 1 untouched
    for cols in (slice(0, 300), slice(720, 1020)):  # faces 0 and 2 exactly as when all change
        assert np.array_equal(only[:, cols], everyone[:, cols])
        assert not np.array_equal(only[:, cols], trio[:, cols])
    largest = tr.apply(trio, "surprise", faces="largest", seed=1)
    assert np.array_equal(largest[:, :300], trio[:, :300]) and np.array_equal(largest[:, 720:], trio[:, 720:])
    assert np.array_equal(largest[:, 300:720], everyone[:, 300:720])


def test_an_emotion_per_face(tr, trio):
    mixed = tr.apply(trio, {0: "happy", 2: "sad"}, seed=1)
    assert np.array_equal(mixed[:, 300:720], trio[:, 300:720])
    assert np.array_equal(mixed[:, :300], tr.apply(trio, "happy", seed=1)[:, :300])
    assert np.array_equal(mixed[:, 720:], tr.apply(trio, "sad", seed=1)[:, 720:])


@pytest.mark.parametrize("kwargs, message", [
    ({"faces": [3]}, "face index 3 is out of range: 3 face(s) found"),
    ({"faces": "biggest"}, 'faces must be "largest"'),
    ({"faces": [0], "target": {0: "happy"}}, "either faces= or a per-face target"),
    ({"target": {0: "happyy"}}, "unknown emotion 'happyy'"),
])
def test_bad_choices_are_refused(tr, trio, kwargs, message):
    target = kwargs.pop("target", "happy")
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        tr.apply(trio, target, seed=0, **kwargs)


def test_cli_faces_and_per_face_emotions(trio, tmp_path):
    from fexsdk.cli import main

    src = tmp_path / "trio.png"
    cv2.imwrite(str(src), trio)
    assert main(["apply", str(src), "-e", "surprise", "--faces", "0,2", "--model", "warp", "-o", str(tmp_path / "a.png")]) == 0
    assert main(["apply", str(src), "-e", "0:happy,2:sad", "--model", "warp", "-o", str(tmp_path / "b.png")]) == 0
    a, b = cv2.imread(str(tmp_path / "a.png")), cv2.imread(str(tmp_path / "b.png"))
    tr = fexsdk.Transfer("warp")
    assert np.array_equal(a, tr.apply(trio, "surprise", faces=[0, 2], seed=0))
    assert np.array_equal(b, tr.apply(trio, {0: "happy", 2: "sad"}, seed=0))
    assert np.array_equal(b[:, 300:720], trio[:, 300:720])


@pytest.mark.parametrize("text, message", [("0:happy,0:sad", "face 0 is given twice"), ("x:happy", "is not index:emotion"),
                                           ("0:joyful", "unknown emotion 'joyful'")])
def test_per_face_emotion_text_is_checked(text, message):
    from fexsdk.emotions import parse_target

    with pytest.raises(ValueError, match=message):
        parse_target(text)
    assert parse_target("0:happy, 2:sad") == {0: "happy", 2: "sad"}
