"""fex demo --faces-per-frame: a budget of faces through the generator per frame (fexsdk/video/reuse.py)."""

from pathlib import Path

import cv2
import numpy as np
import pytest

import fexsdk
from fexsdk.cli import build_parser
from fexsdk.transfer import FaceRecord
from fexsdk.video import DemoConfig, DemoLoop
from fexsdk.video.reuse import GenerationBudget

PHOTOS = Path(__file__).resolve().parents[1] / "docs" / "photos"
NAMES = ("astronaut.jpg", "obama-official.jpg", "grace-hopper.jpg", "giunchedi-dark.jpg")


@pytest.fixture(scope="module")
def tr():
    return fexsdk.Transfer(threads=1)  # the bundled default (a warp model)


@pytest.fixture(scope="module")
def four(tr):
    """A 1280x720 frame with four real faces side by side, each a head-and-shoulders square of 300 px."""
    frame = np.full((720, 1280, 3), 90, np.uint8)
    for k, name in enumerate(NAMES):
        img = cv2.imread(str(PHOTOS / name))
        x, y, w, h = (int(v) for v in tr.detect(img)[0].box[:4])
        side = int(1.35 * max(w, h))
        pad = cv2.copyMakeBorder(img, side, side, side, side, cv2.BORDER_REPLICATE)
        x0, y0 = x + w // 2 - side // 2 + side, y + h // 2 - side // 2 + side
        frame[210:510, 10 + 320 * k : 310 + 320 * k] = cv2.resize(pad[y0 : y0 + side, x0 : x0 + side], (300, 300))
    return frame


def _loop(tr, **kw) -> DemoLoop:
    return DemoLoop(DemoConfig(headless=True, overlay=False, quiet=True, detect_thread=False, emotion="surprise", **kw),
                    transfer=tr)


def _records(ids):
    return [FaceRecord(face=None, face_id=i) for i in ids]


def test_budget_regenerates_the_longest_waiting_and_never_holds_back_new_faces_or_new_emotions():
    b = GenerationBudget(2)
    happy = {i: "happy" for i in range(4)}
    due, reused = b.plan(_records(range(4)), happy)
    assert [r.face_id for r in due] == [0, 1, 2, 3] and reused == []  # all new: none waits
    b.keep(due, happy, frame=0)
    for frame, expect in ((1, [0, 1]), (2, [2, 3]), (3, [0, 1])):
        due, reused = b.plan(_records(range(4)), happy)
        assert [r.face_id for r in due] == expect, frame
        b.keep(due, happy, frame)
    mixed = {**happy, 3: "sad"}
    due, _ = b.plan(_records(range(4)), mixed)
    assert [r.face_id for r in due] == [3, 2]  # the changed emotion first, then the longest-waiting
    b.keep(due, mixed, 4)
    due, _ = b.plan(_records([0, 1, 2, 3, 7]), {**mixed, 7: "happy"})
    assert [r.face_id for r in due] == [7, 0]  # a new track never waits
    assert b.generated == 4 + 2 + 2 + 2 + 2 + 2 and b.reused == 2 + 2 + 2 + 2 + 3


def test_reused_records_carry_the_last_outputs_at_their_new_box():
    b = GenerationBudget(1)
    first = _records([5, 6])
    for r, v in zip(first, (1.0, 2.0)):
        r.output, r.parts, r.box = np.full((1, 4, 4), v, np.float32), {"flow": np.full((2, 4, 4), v)}, f"old box {v}"
    emo = {5: "fear", 6: "fear"}
    due, _ = b.plan(first, emo)
    b.keep(due, emo, 0)
    now = _records([5, 6])
    now[0].box, now[1].box = "new box 5", "new box 6"
    due, reused = b.plan(now, emo)
    assert [r.face_id for r in due] == [5] and [r.face_id for r in reused] == [6]
    assert reused[0].box == "new box 6" and reused[0].output[0, 0, 0] == 2.0 and reused[0].parts["flow"][0, 0, 0] == 2.0


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_bad_budgets_are_refused(bad):
    with pytest.raises(ValueError, match="faces_per_frame must be an integer >= 1"):
        GenerationBudget(bad)
    with pytest.raises(ValueError, match="faces_per_frame must be an integer >= 1"):
        DemoConfig(headless=True, faces_per_frame=bad).validate()


def test_cli_flag():
    args = build_parser().parse_args(["demo", "--input", "x.mp4", "--faces-per-frame", "2"])
    assert args.faces_per_frame == 2
    assert build_parser().parse_args(["demo", "--input", "x.mp4"]).faces_per_frame is None


def test_on_a_still_scene_a_budget_gives_the_same_frames_with_half_the_generator_work(tr, four):
    """The same face, box and noise give the same edit: reusing it changes nothing on a still frame."""
    full, budget = _loop(tr), _loop(tr, faces_per_frame=2)
    for i in range(5):
        a, b = full.transform(four), budget.transform(four)
        assert np.array_equal(a, b), i
        assert np.abs(a.astype(int) - four).max() > 10  # the four faces are edited
    assert full.budget.generated == 20 and full.budget.reused == 0
    assert budget.budget.generated == 4 + 2 * 4 and budget.budget.reused == 2 * 4


def test_a_reused_edit_follows_its_face(tr, four):
    """Frame 1 moves the scene 4 px right (120 px/s at 30 fps, a brisk head turn). The two faces regenerated equal the
    every-frame result; the two pasted with frame 0's edit at their new boxes come most of the way to it
    (their boxes sit a little differently on the face after a new detection); pixels outside the faces stay."""
    budget, full = (_loop(tr, smoothing=0.0, detect_every=1, **kw) for kw in ({"faces_per_frame": 2}, {}))
    for shift in (0, 4):
        moved = np.roll(four, shift, axis=1)
        a, b = budget.transform(moved), full.transform(moved)
    cols = np.flatnonzero((np.abs(a.astype(int) - moved).max(axis=2) > 0).any(axis=0))
    assert cols.min() > 4 and cols.max() < 1280 - 4
    reused = [k for k, v in budget.budget._last.items() if v.frame == 0]
    assert len(reused) == 2 and budget.budget.reused == 2
    for t in budget.tracker.tracks:
        x, y, w, h = (int(v) for v in t.box)
        inside = [img[y : y + h, x : x + w].astype(int) for img in (a, b, moved)]
        off, edit = np.abs(inside[0] - inside[1]).mean(), np.abs(inside[2] - inside[1]).mean()
        assert edit > 5, t.id  # the face is edited
        assert (off < 0.35 * edit) if t.id in reused else off == 0, (t.id, off, edit)
