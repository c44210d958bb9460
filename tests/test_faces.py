"""Face detectors (fexsdk.faces) and FER-like crops (fexsdk.crops).

Detector tests place real FER2013 PublicTest faces in larger frames (skipped
when ../shared/data is absent); YuNet and SSD tests also need ../shared/models.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from benchmarks.detectors import place_face
from fexsdk import faces as faces_mod
from fexsdk.crops import (
    DEFAULT_MARGIN,
    DEFAULT_OFFSET,
    CropBox,
    crop_box_for,
    extract_crops,
    square_box,
)
from fexsdk.faces import (
    Face,
    box_iou,
    FaceDetector,
    HaarDetector,
    SSDDetector,
    YuNetDetector,
    make_detector,
)

N_FACES = 30
FACE_PX = 160
FRAME = (400, 300)  # W, H


# --------------------------------------------------------------------------- helpers


def best_match(found: list[Face], gt) -> tuple[float, Face | None]:
    if not found:
        return 0.0, None
    scores = [box_iou(f.box, gt) for f in found]
    i = int(np.argmax(scores))
    return scores[i], found[i]


# --------------------------------------------------------------------------- fixtures

_CACHE: dict[str, FaceDetector] = {}


@pytest.fixture(params=["haar", "yunet", "ssd"])
def detector(request) -> FaceDetector:
    name = request.param
    if name not in _CACHE:
        if name == "haar":
            _CACHE[name] = HaarDetector()
        else:
            if name == "yunet":
                _CACHE[name] = YuNetDetector()  # the bundled model, default settings
            else:
                models = request.getfixturevalue("shared_models")
                _CACHE[name] = SSDDetector(models / "opencv_face_detector_uint8.pb")
    return _CACHE[name]


@pytest.fixture(scope="module")
def placed(fer_sample):
    """N_FACES frames, each with one FER face, and the faces and true squares."""
    images, _ = fer_sample
    rng = np.random.default_rng(123)
    frames, gts = zip(*(place_face(f, FACE_PX, rng, frame=FRAME) for f in images[:N_FACES]))
    return list(frames), [(x, y, s, s) for x, y, s in gts], images[:N_FACES]


# --------------------------------------------------------------------------- detectors


def test_detector_finds_fer_faces(detector, placed):
    frames, gts, _ = placed
    found = 0
    for frame, gt in zip(frames, gts):
        faces = detector.detect(frame)
        assert all(isinstance(f, Face) for f in faces)
        scores = [f.score for f in faces]
        assert scores == sorted(scores, reverse=True)
        found += best_match(faces, gt)[0] > 0.5
    assert found > N_FACES // 2, f"{detector.name} found {found}/{N_FACES} faces"


def test_detector_output_fields(detector, placed):
    frames, gts, _ = placed
    h, w = frames[0].shape[:2]
    faces = [f for frame in frames[:8] for f in detector.detect(frame)]
    assert faces
    for f in faces:
        x, y, bw, bh = f.box
        assert 0 <= x and 0 <= y and x + bw <= w + 1e-3 and y + bh <= h + 1e-3 and bw > 0 and bh > 0
        assert 0.0 <= f.score <= 1.0
        if detector.name == "yunet":
            assert f.landmarks is not None and f.landmarks.shape == (5, 2)
            # landmarks lie inside (or right at) the face box
            assert np.all(f.landmarks[:, 0] > x - 0.2 * bw) and np.all(f.landmarks[:, 0] < x + 1.2 * bw)
        else:
            assert f.landmarks is None


def test_multiple_faces_all_found(detector, placed):
    frames, gts, _ = placed
    # three faces that this detector finds on their own, in a 2x2 grid (one tile blank)
    chosen = []
    for frame, gt in zip(frames, gts):
        if best_match(detector.detect(frame), gt)[0] > 0.5:
            chosen.append((frame, gt))
        if len(chosen) == 3:
            break
    assert len(chosen) == 3
    W, H = FRAME
    blank = np.full_like(chosen[0][0], 128)
    group = np.block([[[chosen[0][0]], [chosen[1][0]]], [[chosen[2][0]], [blank]]])
    assert group.shape == (2 * H, 2 * W, 3)
    offsets = [(0, 0), (W, 0), (0, H)]
    truths = [(gt[0] + dx, gt[1] + dy, gt[2], gt[3]) for (_, gt), (dx, dy) in zip(chosen, offsets)]
    found = detector.detect(group)
    for gt in truths:
        assert best_match(found, gt)[0] > 0.5, f"{detector.name} missed {gt} among {found}"
    assert len(found) <= 4


def test_no_face_gives_empty_list(detector):
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    gray = np.full((480, 640, 3), 128, np.uint8)
    assert detector.detect(noise) == []
    assert detector.detect(gray) == []
    assert detector.detect(np.zeros((10, 10), np.uint8)) == []


def test_gray_and_bgra_inputs(detector, placed):
    frames, gts, _ = placed
    frame = next(f for f, gt in zip(frames, gts) if best_match(detector.detect(f), gt)[0] > 0.5)
    ref = detector.detect(frame)
    gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
    bgra = cv2.cvtColor(frame, cv2.COLOR_BGR2BGRA)
    bgra[:, :, 3] = 7  # alpha must not matter
    for img in (gray, gray[:, :, None], bgra):
        got = detector.detect(img)
        assert len(got) == len(ref)
        for a, b in zip(got, ref):
            np.testing.assert_allclose(a.box, b.box, atol=1.0)


def test_bad_image_raises(detector):
    with pytest.raises(ValueError, match="uint8"):
        detector.detect(np.zeros((100, 100, 3), np.float32))
    with pytest.raises(ValueError, match="shape"):
        detector.detect(np.zeros((100, 100, 2), np.uint8))
    with pytest.raises(ValueError, match="numpy"):
        detector.detect([[0, 1], [2, 3]])


def test_yunet_sees_a_downscaled_copy(placed):
    """A frame larger than input_size is shrunk for the network: the same scene at 2x gives the same boxes x2."""
    frames, gts, _ = placed
    det = YuNetDetector(input_size=FRAME[0])
    frame, gt = next((f, gt) for f, gt in zip(frames, gts) if best_match(det.detect(f), gt)[0] > 0.5)
    small = det.detect(frame)
    big = det.detect(cv2.resize(frame, None, fx=2, fy=2, interpolation=cv2.INTER_CUBIC))
    assert len(big) == len(small)
    for a, b in zip(small, big):
        assert box_iou(a.box, tuple(v / 2 for v in b.box)) > 0.9
    # a frame smaller than input_size is not enlarged: the same result as at its own scale
    native = YuNetDetector(input_size=None).detect(frame)
    assert [f.box for f in YuNetDetector(input_size=4 * FRAME[0]).detect(frame)] == [f.box for f in native]


def test_yunet_input_size_maps_boxes_back(placed):
    frames, gts, _ = placed
    det = YuNetDetector(input_size=200)
    hits = sum(best_match(det.detect(f), gt)[0] > 0.5 for f, gt in zip(frames[:10], gts[:10]))
    assert hits >= 5


def test_yunet_leaves_small_and_unlikely_faces_alone(placed):
    frames, gts, _ = placed
    frame, gt = next((f, gt) for f, gt in zip(frames, gts) if YuNetDetector().detect(f))
    face = YuNetDetector().detect(frame)[0]
    assert face.score >= 0.8 and max(face.box[2:]) >= 40
    # the same face is dropped when it is under min_face, or scores under the threshold
    assert YuNetDetector(min_face=max(face.box[2:]) + 1).detect(frame) == []
    assert YuNetDetector(score_threshold=min(1.0, face.score + 0.01)).detect(frame) == [] or face.score > 0.99
    # shrunk to a 24-px face in a 640x480 frame it is left alone by the default min_face (40 px)
    small = cv2.resize(frame, None, fx=0.15, fy=0.15, interpolation=cv2.INTER_AREA)
    canvas = np.full((480, 640, 3), 128, np.uint8)
    canvas[: small.shape[0], : small.shape[1]] = small
    assert all(max(f.box[2:]) >= 40 for f in YuNetDetector().detect(canvas))
    with pytest.raises(ValueError, match="min_face"):
        YuNetDetector(min_face=-1)
    with pytest.raises(ValueError, match="input_size"):
        YuNetDetector(input_size=8)


def test_face_dataclass():
    lm = np.zeros((5, 2), np.float32)
    a = Face((1.0, 2.0, 3.0, 4.0), 0.9, lm)
    b = Face((1.0, 2.0, 3.0, 4.0), 0.9, lm + 1)
    assert a == b and hash(a) == hash(b)  # landmarks are not compared
    assert a.center == (2.5, 4.0)
    with pytest.raises(AttributeError):
        a.score = 0.1  # frozen


# --------------------------------------------------------------------------- make_detector


def test_make_detector_default_is_the_bundled_yunet():
    from importlib import resources

    bundled = resources.files("fexsdk") / "models" / faces_mod.YUNET_FILE
    assert bundled.is_file()
    for det in (make_detector(), make_detector(None), make_detector("yunet"), make_detector("YuNet")):
        assert isinstance(det, YuNetDetector) and det.name == "yunet"
        assert det.path == Path(str(bundled)) == faces_mod.bundled_yunet()
        assert det.input_size == 960 and det.min_face == 40 and det.score_threshold == 0.8


def test_bundled_yunet_is_the_published_file_with_its_licence():
    import hashlib

    path = faces_mod.bundled_yunet()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == (
        "8f2383e4dd3cfbb4553ea8718107fc0423210dc964f9f4280604804ed2552fa4")
    licence = path.with_name("face_detection_yunet_2023mar.LICENSE").read_text()
    assert "MIT License" in licence and "Copyright (c) 2020 Shiqi Yu" in licence


def test_bundled_yunet_is_package_data():
    """pyproject's package-data patterns take the model and its licence into wheels and installs."""
    import fnmatch

    tomllib = pytest.importorskip("tomllib")
    conf = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    patterns = conf["tool"]["setuptools"]["package-data"]["fexsdk"]
    for name in ("models/face_detection_yunet_2023mar.onnx", "models/face_detection_yunet_2023mar.LICENSE"):
        assert any(fnmatch.fnmatch(name, p) for p in patterns), name


def test_make_detector_haar_choices():
    assert isinstance(make_detector("haar"), HaarDetector)
    assert isinstance(make_detector("HAAR"), HaarDetector)
    xml = Path(cv2.data.haarcascades) / "haarcascade_frontalface_alt2.xml"
    assert isinstance(make_detector(xml), HaarDetector)


def test_make_detector_paths(shared_models):
    yn = make_detector(shared_models / "face_detection_yunet_2023mar.onnx")
    assert isinstance(yn, YuNetDetector) and yn.name == "yunet"
    ssd = make_detector(str(shared_models / "opencv_face_detector_uint8.pb"))
    assert isinstance(ssd, SSDDetector) and ssd.name == "ssd"
    assert ssd.pbtxt_path == shared_models / "opencv_face_detector.pbtxt"
    assert make_detector(yn) is yn
    assert isinstance(yn, FaceDetector)


def test_make_detector_passes_custom_detector_through():
    class Mine:
        name = "mine"

        def detect(self, image):
            return []

    d = Mine()
    assert make_detector(d) is d


@pytest.mark.parametrize("spec", ["yunet2", "ssd", "face.tflite", "model.pt", 42, object()])
def test_make_detector_unknown_lists_choices(spec):
    with pytest.raises(ValueError) as err:
        make_detector(spec)
    msg = str(err.value)
    assert "haar" in msg and ".onnx" in msg and ".pb" in msg


@pytest.mark.parametrize("name", ["missing_yunet.onnx", "missing_ssd.pb", "missing.xml"])
def test_make_detector_missing_file(tmp_path, name):
    with pytest.raises(FileNotFoundError, match=name):
        make_detector(tmp_path / name)


def test_ssd_missing_pbtxt(tmp_path, shared_models):
    pb = tmp_path / "opencv_face_detector_uint8.pb"
    shutil.copy(shared_models / "opencv_face_detector_uint8.pb", pb)
    with pytest.raises(FileNotFoundError, match="opencv_face_detector.pbtxt"):
        SSDDetector(pb)
    det = SSDDetector(pb, shared_models / "opencv_face_detector.pbtxt", confidence=0.7)
    assert det.detect(np.full((300, 300, 3), 128, np.uint8)) == []


def test_haar_without_cascade_support_says_what_to_install(monkeypatch):
    monkeypatch.delattr(faces_mod.cv2, "CascadeClassifier")
    with pytest.raises(RuntimeError, match=r"opencv-python-headless<5.*YuNet"):
        HaarDetector()


def test_haar_without_cascade_data_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setattr(faces_mod.cv2.data, "haarcascades", str(tmp_path) + "/")
    with pytest.raises(RuntimeError, match=r"opencv-python-headless<5.*YuNet"):
        HaarDetector()


def test_runtime_does_not_import_torch():
    import subprocess
    import sys

    code = (
        "import sys, fexsdk.faces, fexsdk.crops, fexsdk.paste; "
        "sys.exit(1 if 'torch' in sys.modules else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


# --------------------------------------------------------------------------- square_box


def test_square_box_geometry():
    b = square_box((100, 50, 40, 60), margin=0.5)
    assert b == CropBox(75, 35, 90)  # side 60*1.5 centred on (120, 80)
    b = square_box((100, 50, 40, 60), margin=0.0, offset=0.1)
    assert b.size == 60 and b.x == 90 and b.y == 56  # centre moved down by 6
    b = square_box((10, 10, 100, 100), margin=-0.2)
    assert b == CropBox(20, 20, 80)
    assert square_box((10, 10, 30, 30)) == square_box((10, 10, 30, 30), DEFAULT_MARGIN, offset=DEFAULT_OFFSET)


def test_square_box_accepts_face_and_detector_defaults():
    face = Face((100.0, 50.0, 77.0, 100.0), 0.9)
    assert square_box(face, 0.0) == square_box(face.box, 0.0)
    b = crop_box_for(face, YuNetDetector)
    assert b == square_box(face.box, YuNetDetector.crop_margin, offset=YuNetDetector.crop_offset)
    assert crop_box_for(face) == square_box(face.box)
    for cls in (HaarDetector, YuNetDetector, SSDDetector):
        assert -0.2 < cls.crop_margin < 0.2 and -0.1 < cls.crop_offset < 0.1


def test_square_box_at_border_keeps_face_centred_unless_image_shape():
    b = square_box((-10, -5, 40, 40), margin=0.0)
    assert b == CropBox(-10, -5, 40)  # runs off the image; extract_crops pads
    b = square_box((-10, -5, 40, 40), margin=0.0, image_shape=(100, 200, 3))
    assert b == CropBox(0, 0, 40)
    b = square_box((180, 90, 40, 40), margin=0.0, image_shape=(100, 200))
    assert b == CropBox(160, 60, 40)
    b = square_box((0, 0, 150, 150), margin=0.0, image_shape=(100, 200))
    assert b.size == 150 and b.y == -25 and b.x == 0  # too tall: centred on that axis


@pytest.mark.parametrize(
    "box, kw",
    [
        ((0, 0, 0, 10), {}),
        ((0, 0, 10, -1), {}),
        ((0, 0, 10), {}),
        ((0, 0, float("nan"), 10), {}),
        ("abcd", {}),
        ((0, 0, 10, 10), {"margin": -1.0}),
        ((0, 0, 10, 10), {"margin": float("inf")}),
        ((0, 0, 10, 10), {"offset": float("nan")}),
    ],
)
def test_square_box_bad_args(box, kw):
    with pytest.raises(ValueError):
        square_box(box, **kw)


def test_cropbox_validation():
    assert CropBox(np.int64(1), np.int32(2), np.int16(3)) == CropBox(1, 2, 3)
    with pytest.raises(ValueError):
        CropBox(0, 0, 0)
    with pytest.raises(ValueError):
        CropBox(0.5, 0, 10)


# --------------------------------------------------------------------------- extract_crops


def _test_image(h=120, w=160):
    rng = np.random.default_rng(1)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_extract_crops_inside_is_exact():
    img = _test_image()
    crops = extract_crops(img, [CropBox(10, 20, 48), CropBox(100, 0, 48)], 48, 1)
    assert crops.shape == (2, 1, 48, 48) and crops.dtype == np.uint8
    gray = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    np.testing.assert_array_equal(crops[0, 0], gray[20:68, 10:58])
    np.testing.assert_array_equal(crops[1, 0], gray[0:48, 100:148])
    rgb = extract_crops(img, [CropBox(10, 20, 48)], 48, 3)
    assert rgb.shape == (1, 3, 48, 48)
    np.testing.assert_array_equal(rgb[0].transpose(1, 2, 0), img[20:68, 10:58, ::-1])


def test_extract_crops_resizes():
    img = _test_image()
    crops = extract_crops(img, [CropBox(0, 0, 96), CropBox(0, 0, 24)], 48, 1)
    gray = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    np.testing.assert_array_equal(crops[0, 0], cv2.resize(gray[:96, :96], (48, 48), interpolation=cv2.INTER_AREA))
    assert crops.shape == (2, 1, 48, 48)


def test_extract_crops_pads_by_replication():
    img = _test_image(60, 80)
    gray = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    c = extract_crops(img, [CropBox(-10, -5, 30)], 30, 1)[0, 0]
    np.testing.assert_array_equal(c[5:, 10:], gray[0:25, 0:20])
    np.testing.assert_array_equal(c[5:, :10], np.repeat(gray[0:25, :1], 10, axis=1))  # left pad
    np.testing.assert_array_equal(c[:5, 10:], np.repeat(gray[:1, 0:20], 5, axis=0))  # top pad
    assert np.all(c[:5, :10] == gray[0, 0])  # corner
    c = extract_crops(img, [CropBox(70, 50, 20)], 20, 1)[0, 0]  # bottom-right corner
    np.testing.assert_array_equal(c[:10, :10], gray[50:, 70:])
    assert np.all(c[10:, 10:] == gray[-1, -1])
    # a box wholly outside the image takes the nearest edge pixel everywhere
    c = extract_crops(img, [CropBox(200, -100, 16)], 16, 1)[0, 0]
    assert np.all(c == gray[0, -1])


def test_extract_crops_empty_and_formats():
    img = _test_image()
    assert extract_crops(img, [], 48, 1).shape == (0, 1, 48, 48)
    assert extract_crops(img, [], 64, 3).shape == (0, 3, 64, 64)
    gray = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    bgra = cv2.cvtColor(img, cv2.COLOR_BGR2BGRA)
    box = [CropBox(5, 5, 50)]
    ref = extract_crops(img, box, 48, 1)
    np.testing.assert_array_equal(extract_crops(gray, box, 48, 1), ref)
    np.testing.assert_array_equal(extract_crops(gray[:, :, None], box, 48, 1), ref)
    np.testing.assert_array_equal(extract_crops(bgra, box, 48, 1), ref)
    np.testing.assert_array_equal(extract_crops(bgra, box, 48, 3), extract_crops(img, box, 48, 3))
    g3 = extract_crops(gray, box, 48, 3)
    assert np.all(g3[:, 0] == g3[:, 1]) and np.all(g3[:, 1] == g3[:, 2])


def test_extract_crops_rgb_order():
    img = np.zeros((20, 20, 3), np.uint8)
    img[:, :, 0] = 255  # blue in BGR
    c = extract_crops(img, [CropBox(0, 0, 20)], 8, 3)
    assert np.all(c[0, 2] == 255) and np.all(c[0, :2] == 0)


@pytest.mark.parametrize(
    "image, boxes, size, channels",
    [
        (np.zeros((10, 10, 3), np.float32), [], 48, 1),
        (np.zeros((10, 10, 2), np.uint8), [], 48, 1),
        (np.zeros((10, 10, 3), np.uint8), [], 0, 1),
        (np.zeros((10, 10, 3), np.uint8), [], 48, 2),
        (np.zeros((10, 10, 3), np.uint8), [(0, 0, 5)], 48, 1),
    ],
)
def test_extract_crops_bad_args(image, boxes, size, channels):
    with pytest.raises(ValueError):
        extract_crops(image, boxes, size, channels)


# --------------------------------------------------------------------------- the FER framing


def test_default_crop_framing_reproduces_fer_crops(detector, placed):
    """Cropping a detected face with the detector's measured margin gives back
    (close to) the original FER2013 face, and clearly better than a loose crop."""
    frames, gts, originals = placed
    errs, loose = [], []
    for frame, gt, face in zip(frames, gts, originals):
        score, best = best_match(detector.detect(frame), gt)
        if score <= 0.5:
            continue
        for margin, out in ((detector.crop_margin, errs), (0.3, loose)):
            box = square_box(best, margin, offset=detector.crop_offset)
            crop = extract_crops(frame, [box], 48, 1)[0, 0].astype(np.float32)
            out.append(np.abs(crop - face).mean())
    assert len(errs) > N_FACES // 2
    assert np.mean(errs) < 0.85 * np.mean(loose)


# --------------------------------------------------------------------------- the default detector on real images


def _textures() -> list[np.ndarray]:
    """Face-free textured images: drawn shapes on blurred noise, and scikit-image's textures where installed."""
    rng = np.random.default_rng(3)
    drawn = cv2.GaussianBlur(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8), (0, 0), 2)
    for _ in range(60):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        x, y = (int(v) for v in rng.integers(0, 600, 2))
        if rng.random() < 0.5:
            cv2.circle(drawn, (x, y % 480), int(rng.integers(5, 60)), colour, -1)
        else:
            cv2.line(drawn, (x, y % 480), (int(rng.integers(0, 640)), int(rng.integers(0, 480))), colour, 3)
    out = [drawn]
    try:
        import skimage.data
    except ImportError:
        return out
    # Not "text": stretched to 1280x720 it gets one frame-sized box scoring 0.84 (the "Face detectors" table of
    # docs/benchmarks.md counts it).
    for name in ("brick", "grass", "gravel", "coffee", "rocket"):
        im = np.asarray(getattr(skimage.data, name)())
        im = cv2.cvtColor(im, cv2.COLOR_GRAY2BGR) if im.ndim == 2 else cv2.cvtColor(im, cv2.COLOR_RGB2BGR)
        out.append(im)
        out.append(cv2.resize(im, (1280, 720), interpolation=cv2.INTER_CUBIC))
    return out


def test_default_detector_finds_no_face_in_textures():
    det = make_detector()
    for im in _textures():
        assert det.detect(im) == [], im.shape


def test_default_detector_finds_a_real_face():
    """The astronaut photo (scikit-image), or, without scikit-image, FER2013 faces placed large on a photo."""
    det = make_detector()
    try:
        import skimage.data
    except ImportError:
        skimage = None
    if skimage is not None:
        photo = cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR)  # 512x512, her face near (225, 120)
        found = det.detect(photo)
        assert len(found) == 1
        assert box_iou(found[0].box, (180, 65, 90, 110)) > 0.6, found[0].box
        big = cv2.resize(photo, (2048, 2048), interpolation=cv2.INTER_CUBIC)  # same face, 4x: same box scaled
        found4 = det.detect(big)
        assert len(found4) == 1 and box_iou(tuple(v / 4 for v in found4[0].box), found[0].box) > 0.8
    else:
        from tests.conftest import FER_NPZ, face_scene

        if not FER_NPZ.is_file():
            pytest.skip("needs scikit-image or ../shared/data/fer2013.npz")
        with np.load(FER_NPZ) as d:
            faces = d["images"][np.flatnonzero(d["usage"] == 1)[:3]]
        scene, boxes = face_scene(faces)
        found = det.detect(scene)
        assert sum(best_match(found, b)[0] > 0.5 for b in boxes) >= 2
