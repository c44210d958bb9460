"""benchmarks/believable.py on two small real colour photos (scikit-image's astronaut, matplotlib's Grace Hopper)."""

import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("torch")
skimage_data = pytest.importorskip("skimage.data")
cbook = pytest.importorskip("matplotlib.cbook")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import believable  # noqa: E402

CLASSIFIER = Path(__file__).resolve().parents[1] / "training" / "weights" / "resnet18_fer2013.safetensors"


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    astronaut = cv2.cvtColor(skimage_data.astronaut(), cv2.COLOR_RGB2BGR)
    hopper = cv2.imread(str(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)))
    cv2.imwrite(str(folder / "astronaut.jpg"), cv2.resize(astronaut, (256, 256), interpolation=cv2.INTER_AREA))
    cv2.imwrite(str(folder / "hopper.jpg"), cv2.resize(hopper, (192, 240), interpolation=cv2.INTER_AREA))
    return folder


def test_geometry_of_a_pure_similarity_is_zero_and_an_opened_mouth_is_seen():
    rng = np.random.default_rng(0)
    pts = rng.uniform(0, 100, (68, 2)).astype(np.float32)
    pts[36:42] = [30, 40]
    pts[42:48] = [70, 40]
    turned = (pts - 50) @ np.array([[0.96, -0.28], [0.28, 0.96]], np.float32).T * 1.3 + 80
    assert believable.geometry(pts, turned)["still_move"] == pytest.approx(0.0, abs=1e-3)
    opened = pts.copy()
    opened[[65, 66, 67], 1] += 8.0  # the lower inner lip drops by a fifth of the eye distance
    g = believable.geometry(pts, opened)
    assert g["lip_gap"] == pytest.approx(20.0, abs=0.5)
    assert g["still_move"] < 0.5


def test_the_benchmark_measures_real_edits_and_zero_for_none(photos, tmp_path):
    pytest.importorskip("dlib", reason="identity and geometry need the bench extra (dlib-bin)")
    out = tmp_path / "res.json"
    assert believable.main(["warp", "--photos", str(photos), "--classifier", str(CLASSIFIER), "--no-dim",
                            "--sheets", str(tmp_path), "--json", str(out), "--strength", "1"]) == 0
    res = json.loads(out.read_text())["warp"]
    s = res["summary"]
    assert s["n"] == 2 * 7 and 0 <= s["recognised"] <= 100
    assert s["identity"] > 0.05 and s["still_move"] > 0.3 and s["shading"] > 0.5  # the edit is seen
    sheet = cv2.imread(str(tmp_path / "warp-s1.jpg"))
    assert sheet.shape[1] == 8 * 128 and sheet.shape[0] >= 2 * 128
    # Strength 0 writes the photo unchanged: no identity change, no movement, no shading.
    assert believable.main(["warp", "--photos", str(photos), "--classifier", str(CLASSIFIER), "--no-dim",
                            "--json", str(out), "--strength", "0"]) == 0
    s0 = json.loads(out.read_text())["warp"]["summary"]
    assert s0["identity"] == pytest.approx(0.0, abs=1e-6) and s0["same_person"] == 100.0
    assert s0["still_move"] == pytest.approx(0.0, abs=1e-3) and s0["shading"] == 0.0


def test_default_strength_is_the_most_recognised_that_stays_believable():
    def run(strength, recognised, same, still, shading):
        cases = [believable.Case("p.jpg", i, "as shot", t, i < recognised, shading, shading / 40, "lighter",
                                 0.3 if i < same else 0.7, still)
                 for t in believable.EMOTIONS for i in range(10)]
        return believable.ModelRun("m", "p", strength, cases)

    runs = {1.0: run(1.0, 3, 10, 2.0, 1.5), 1.5: run(1.5, 6, 10, 2.8, 2.5), 2.0: run(2.0, 8, 9, 3.5, 3.0)}
    chosen, table = believable.choose_strengths(runs, max_strength=2.0)
    assert set(chosen.values()) == {1.5}  # 2.0 recognises more but moves the still points too far
    assert "(fails)" in table
    assert "recognised at the chosen strengths: 60.0% (42 of 70)" in table
    chosen, _ = believable.choose_strengths({2.0: runs[2.0]})
    assert set(chosen.values()) == {2.0}  # nothing holds: the smallest strength tried
    chosen, table = believable.choose_strengths(runs)  # the default cap: nothing past strength 1 is chosen
    assert set(chosen.values()) == {1.0} and "(above the cap)" in table
    assert "recognised at the chosen strengths: 30.0% (21 of 70)" in table  # the chosen run's cases, not the best


def test_jittered_landmarks_follow_the_face_box(photos):
    """Landmarks averaged over jittered boxes are placed relative to the box: shift photo and box alike, they shift too."""
    pytest.importorskip("dlib", reason="landmarks need the bench extra (dlib-bin)")
    tools = believable.Dlib(jitter=True)
    img = cv2.imread(str(photos / "astronaut.jpg"))
    box = believable.Transfer("default", device="cpu").detect(img)[0].box
    moved = cv2.copyMakeBorder(img, 5, 0, 7, 0, cv2.BORDER_REPLICATE)
    pts, desc = tools.measure(img, box)
    pts_moved, _ = tools.measure(moved, (box[0] + 7, box[1] + 5, box[2], box[3]))
    np.testing.assert_allclose(pts_moved - pts, np.broadcast_to([7.0, 5.0], pts.shape), atol=1e-4)
    single, desc_single = believable.Dlib(jitter=False).measure(img, box)
    assert np.abs(single - pts).max() < 0.1 * box[2]  # the same face, steadied, not another fit
    np.testing.assert_array_equal(desc, desc_single)  # identity is measured as before


def test_strengths_per_emotion_from_a_file_change_only_those_targets(photos, tmp_path):
    # Only happy gets a strength: every other target writes the photo unchanged (no shading at all).
    chosen = {t: 0.0 for t in believable.EMOTIONS}
    chosen["happy"] = 1.0
    (tmp_path / "chosen.json").write_text(json.dumps(chosen))
    out = tmp_path / "res.json"
    assert believable.main(["warp", "--photos", str(photos), "--classifier", str(CLASSIFIER), "--no-dim",
                            "--strengths", str(tmp_path / "chosen.json"), "--sheets", str(tmp_path),
                            "--json", str(out)]) == 0
    res = json.loads(out.read_text())["warp"]
    assert res["strength"] == chosen
    shading = {t: [c["shading"] for c in res["cases"] if c["target"] == t] for t in believable.EMOTIONS}
    assert all(v > 0.2 for v in shading["happy"])
    assert all(v == 0.0 for t in believable.EMOTIONS if t != "happy" for v in shading[t])
    assert (tmp_path / "warp-chosen.jpg").is_file()


@pytest.mark.parametrize("content, why", [('{"happy": 1}', "exactly the emotions"),
                                          ("[1, 2]", "exactly the emotions"),
                                          ("not json", "cannot read"),
                                          (None, "numbers in")])
def test_a_bad_strengths_file_is_refused_with_what_is_allowed(tmp_path, content, why):
    if content is None:  # every emotion, one of them out of range
        content = json.dumps({t: (3.0 if t == "sad" else 0.5) for t in believable.EMOTIONS})
    f = tmp_path / "s.json"
    f.write_text(content)
    with pytest.raises(ValueError, match=why):
        believable.read_strengths(str(f))
