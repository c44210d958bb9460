"""Dim, low-contrast faces get a change of their own contrast (fexsdk/exposure.py), and per-emotion default strengths."""

import cv2
import numpy as np
import pytest

import fexsdk
from fexsdk.exposure import TYPICAL_STD, face_ellipse, fit_exposure
from fexsdk.metadata import ModelMetadata

skimage_data = pytest.importorskip("skimage.data", reason="scikit-image's astronaut is the real colour portrait")


def _crops(mean: float, std: float, n: int = 2, size: int = 48, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (mean + std * rng.standard_normal((n, 1, size, size))).astype(np.float32)


def test_typical_faces_pass_unchanged():
    x = _crops(140, 50)
    fit = fit_exposure(x)
    assert np.allclose(fit.gain, 1.0)
    assert np.allclose(fit.apply(x), x, atol=1e-3)


def test_a_dim_flat_face_is_stretched_and_its_change_shrunk_back():
    x = _crops(40, 12)
    fit = fit_exposure(x)
    fed = fit.apply(x)
    inside = fed[:, 0][:, face_ellipse(48)]
    assert inside.std(axis=1) == pytest.approx([TYPICAL_STD] * 2, rel=0.02)
    assert inside.mean(axis=1).min() >= 79.0  # brought into FER2013's brightness range
    change = np.full_like(x, 20.0)
    assert np.allclose(fit.change_back(change), 20.0 / fit.gain[:, None, None, None])
    assert (fit.gain > 3).all()


@pytest.fixture(scope="module")
def astronaut():
    return cv2.cvtColor(skimage_data.astronaut(), cv2.COLOR_RGB2BGR)


def _lowfreq_change(before: np.ndarray, after: np.ndarray, box) -> tuple[float, float, float]:
    """(mean |change|, mean signed change, face std) of the blurred luminance inside the face box."""
    x, y, w, h = (int(v) for v in box)
    a = cv2.cvtColor(before, cv2.COLOR_BGR2GRAY).astype(np.float32)
    b = cv2.cvtColor(after, cv2.COLOR_BGR2GRAY).astype(np.float32)
    d = cv2.GaussianBlur(b, (0, 0), w / 24) - cv2.GaussianBlur(a, (0, 0), w / 24)
    region = (slice(y, y + h), slice(x, x + w))
    return float(np.abs(d[region]).mean()), float(d[region].mean()), float(a[region].std())


@pytest.mark.parametrize("model", ["default", "paint", "warp"])
def test_a_dark_low_contrast_face_gets_no_pale_mask(astronaut, model):
    """The astronaut darkened and flattened to a third of her contrast: the change, relative to the face's own
    contrast, is no larger than on the well-lit photo, and the face is not brightened by more than a few levels."""
    dim = (astronaut.astype(np.float32) / 3 + 10).astype(np.uint8)
    tr = fexsdk.Transfer(model)
    rel = {}
    for name, img in (("lit", astronaut), ("dim", dim)):
        changes = []
        for target in ("surprise", "sad", "fear"):
            res = tr.process(img, target, seed=0, strength=1.0)
            mag, signed, std = _lowfreq_change(img, res.image, res.faces[0].box)
            changes.append(mag / std)
            if name == "dim":
                assert abs(signed) < 3.0, f"{target}: the dim face's mean brightness moved by {signed:.2f} grey levels"
        rel[name] = float(np.mean(changes))
    assert rel["dim"] <= rel["lit"] * 1.05, rel
    # Without the exposure fit the same dim face gets a change twice as large for its contrast: the test can fail.
    off = fexsdk.Transfer(model, exposure=False)
    res = off.process(dim, "surprise", seed=0, strength=1.0)
    mag, _, std = _lowfreq_change(dim, res.image, res.faces[0].box)
    if model == "paint":  # the painting model: its change is added in grey levels
        assert mag / std > 1.5 * rel["lit"]


def test_exposure_must_be_a_bool():
    with pytest.raises(ValueError, match="exposure"):
        fexsdk.Transfer(exposure="yes")


def test_default_strength_comes_from_the_metadata_and_an_explicit_strength_wins(astronaut):
    tr = fexsdk.Transfer("warp")
    full = tr.apply(astronaut, "surprise", seed=0, strength=1.0)
    half = tr.apply(astronaut, "surprise", seed=0, strength=0.5)
    assert not np.array_equal(full, half)
    tr.meta.default_strength = {"surprise": 0.5}
    assert np.array_equal(tr.apply(astronaut, "surprise", seed=0), half)
    assert np.array_equal(tr.apply(astronaut, "surprise", seed=0, strength=1.0), full)
    # An emotion the table does not name is applied at full strength; a mix weighs the strengths by intensity.
    assert np.array_equal(tr.apply(astronaut, "happy", seed=0), tr.apply(astronaut, "happy", seed=0, strength=1.0))
    meta = ModelMetadata(default_strength={"surprise": 0.5, "happy": 0.9})
    assert meta.strength_for(np.array([[0, 0, 0, 0.5, 0, 0.5, 0]], np.float32))[0] == pytest.approx(0.7)


def test_the_bundled_cards_hold_the_default_strengths_their_models_carry():
    import json

    from fexsdk.transfer import BUNDLED_DIR, bundled_models

    for name in bundled_models():
        card = json.loads((BUNDLED_DIR / f"{name}.json").read_text())
        meta = fexsdk.Transfer(name).meta
        assert card["metadata"].get("default_strength", {}) == meta.default_strength, name


@pytest.mark.parametrize("bad", [{"joy": 0.5}, {"happy": 3.0}, {"happy": True}, {"happy": "0.5"}])
def test_bad_default_strengths_are_refused(bad):
    with pytest.raises(ValueError, match="default_strength"):
        ModelMetadata(default_strength=bad).validate()


def test_bundle_writes_default_strengths_into_the_model_file(tiny_onnx, tmp_path):
    pytest.importorskip("onnx")
    import shutil

    from fexsdk.export.bundle import set_default_strength

    model = tmp_path / "m.onnx"
    shutil.copy(tiny_onnx, model)
    set_default_strength(model, {"surprise": 1.5, "happy": 0.8})
    assert fexsdk.Transfer(model).meta.default_strength == {"surprise": 1.5, "happy": 0.8}
    with pytest.raises(ValueError, match="default_strength"):
        set_default_strength(model, {"joy": 1.0})
    assert fexsdk.Transfer(model).meta.default_strength == {"surprise": 1.5, "happy": 0.8}  # a refusal writes nothing
