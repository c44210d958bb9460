"""paste_back: transfer the generator's change into the full-resolution frame."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from fexsdk.crops import CropBox, extract_crops
from fexsdk.paste import DEFAULT_FEATHER, face_mask, paste_back

H, W = 160, 200
BOX = CropBox(40, 30, 96)


def make_image(seed: int = 0, lo: int = 60, hi: int = 190) -> np.ndarray:
    """A textured colour image whose values stay clear of 0 and 255 (no clipping)."""
    rng = np.random.default_rng(seed)
    img = rng.integers(lo, hi, (H, W, 3), dtype=np.uint8)
    img[:, :, 2] = np.clip(img[:, :, 2].astype(int) + 30, 0, 255)  # some colour
    return img


def model_in(image, boxes, channels=1, size=48) -> np.ndarray:
    return extract_crops(image, boxes, size, channels).astype(np.float32) / 127.5 - 1.0


def outside_mask(shape, boxes) -> np.ndarray:
    out = np.ones(shape[:2], bool)
    for b in boxes:
        out[max(b.y, 0) : max(b.y2, 0), max(b.x, 0) : max(b.x2, 0)] = False
    return out


# --------------------------------------------------------------------------- residual


def test_residual_changes_inside_only_and_keeps_input():
    img = make_image()
    before = img.copy()
    x = model_in(img, [BOX])
    y = x.copy()
    y[:, :, 20:30, 10:38] += 0.3  # the "mouth" got brighter
    out = paste_back(img, [BOX], x, y)
    assert out.shape == img.shape and out.dtype == np.uint8
    assert out is not img and not np.shares_memory(out, img)
    np.testing.assert_array_equal(img, before)
    outside = outside_mask(img.shape, [BOX])
    np.testing.assert_array_equal(out[outside], img[outside])
    diff = out.astype(int) - img.astype(int)
    assert diff[~outside].max() >= 30  # 0.3 * 127.5 ~ 38 at the mask's core
    assert diff.min() >= -0.15 * 0.3 * 127.5  # brightens; only bicubic ringing (< 15%) goes below


def test_residual_adds_to_luminance_keeps_colour():
    img = make_image()
    x = model_in(img, [BOX])
    y = x + 0.2  # uniform residual
    out = paste_back(img, [BOX], x, y)
    diff = out.astype(int) - img.astype(int)
    # same change on B, G and R = change of Y with Cr, Cb kept (up to rounding)
    assert np.abs(diff[:, :, 0] - diff[:, :, 1]).max() <= 1
    assert np.abs(diff[:, :, 1] - diff[:, :, 2]).max() <= 1
    cy, cx = BOX.y + BOX.size // 2, BOX.x + BOX.size // 2
    assert abs(diff[cy, cx, 0] - 0.2 * 127.5) <= 1  # full strength at the centre
    ycc_in = cv2.cvtColor(img, cv2.COLOR_BGR2YCrCb).astype(int)
    ycc_out = cv2.cvtColor(out, cv2.COLOR_BGR2YCrCb).astype(int)
    assert np.abs(ycc_out[:, :, 1:] - ycc_in[:, :, 1:]).max() <= 2
    assert ycc_out[cy, cx, 0] - ycc_in[cy, cx, 0] >= 24


def test_zero_residual_and_zero_strength_are_identity():
    img = make_image()
    x = model_in(img, [BOX])
    np.testing.assert_array_equal(paste_back(img, [BOX], x, x.copy()), img)
    y = -x
    np.testing.assert_array_equal(paste_back(img, [BOX], x, y, strength=0.0), img)
    np.testing.assert_array_equal(paste_back(img, [BOX], x, y, strength=0, blend="replace"), img)


def test_strength_scales_the_change():
    img = make_image()
    x = model_in(img, [BOX])
    y = x + 0.1
    d1 = paste_back(img, [BOX], x, y, strength=1.0).astype(int) - img
    d2 = paste_back(img, [BOX], x, y, strength=2.0).astype(int) - img
    cy, cx = BOX.y + BOX.size // 2, BOX.x + BOX.size // 2
    assert abs(d2[cy, cx, 0] - 2 * d1[cy, cx, 0]) <= 1


def test_rgb_model_uses_luma_of_residual():
    img = make_image()
    x = model_in(img, [BOX], channels=3)
    y = x.copy()
    y[:, 0] += 0.4  # red only
    out = paste_back(img, [BOX], x, y)
    cy, cx = BOX.y + BOX.size // 2, BOX.x + BOX.size // 2
    d = out[cy, cx].astype(int) - img[cy, cx]
    assert np.all(np.abs(d - 0.299 * 0.4 * 127.5) <= 1)


def test_gray_image_keeps_format():
    img = cv2.cvtColor(make_image(), cv2.COLOR_BGR2GRAY)
    x = model_in(img, [BOX])
    y = x + 0.2
    out = paste_back(img, [BOX], x, y)
    assert out.shape == img.shape and out.dtype == np.uint8
    outside = outside_mask(img.shape, [BOX])
    np.testing.assert_array_equal(out[outside], img[outside])
    assert (out.astype(int) - img)[~outside].max() >= 24
    out1 = paste_back(img[:, :, None], [BOX], x, y)
    assert out1.shape == (H, W, 1)
    np.testing.assert_array_equal(out1[:, :, 0], out)


def test_bgra_keeps_alpha():
    bgr = make_image()
    rng = np.random.default_rng(5)
    img = np.dstack([bgr, rng.integers(0, 256, (H, W), dtype=np.uint8)])
    x = model_in(img, [BOX])
    y = x - 0.2
    for blend in ("residual", "replace"):
        out = paste_back(img, [BOX], x, y, blend=blend)
        assert out.shape == img.shape and out.dtype == np.uint8
        np.testing.assert_array_equal(out[:, :, 3], img[:, :, 3])
        np.testing.assert_array_equal(out[:, :, :3], paste_back(bgr, [BOX], x, y, blend=blend))


def test_mask_feathers_to_zero_at_box_edges():
    img = make_image()
    x = model_in(img, [BOX])
    out = paste_back(img, [BOX], x, x + 0.5)
    b = BOX
    # the box's border rows/columns and corners are untouched
    np.testing.assert_array_equal(out[b.y, b.x : b.x2], img[b.y, b.x : b.x2])
    np.testing.assert_array_equal(out[b.y : b.y2, b.x], img[b.y : b.y2, b.x])
    np.testing.assert_array_equal(out[b.y2 - 1, b.x : b.x2], img[b.y2 - 1, b.x : b.x2])
    np.testing.assert_array_equal(out[b.y : b.y2, b.x2 - 1], img[b.y : b.y2, b.x2 - 1])


def test_face_mask_shape_and_range():
    m = face_mask(101)
    assert m.shape == (101, 101) and m.dtype == np.float32
    assert m[50, 50] == 1.0 and m[0, 0] == 0.0 and m[0, 50] < 0.05 and m[50, 0] == 0.0
    assert m.min() >= 0 and m.max() <= 1
    np.testing.assert_allclose(m, m[::-1], atol=1e-6)
    np.testing.assert_allclose(m, m[:, ::-1], atol=1e-6)
    hard = face_mask(64, feather=0.0)
    assert set(np.unique(hard)) <= {0.0, 1.0}
    assert face_mask(64, DEFAULT_FEATHER).sum() < hard.sum()


# --------------------------------------------------------------------------- geometry


def test_box_partly_and_wholly_outside_image():
    img = make_image()
    boxes = [CropBox(-30, -20, 80), CropBox(150, 120, 90), CropBox(500, 500, 50)]
    x = model_in(img, boxes)
    y = x + 0.3
    out = paste_back(img, boxes, x, y)
    outside = outside_mask(img.shape, boxes)
    np.testing.assert_array_equal(out[outside], img[outside])
    assert (out.astype(int) - img)[5:15, 5:15].min() > 0  # the visible part of box 0 changed
    assert (out.astype(int) - img)[150:158, 190:198].min() > 0  # and of box 1


def test_overlapping_boxes_apply_sequentially():
    img = make_image()
    x = model_in(img, [BOX, BOX])
    y = x + 0.1
    once = paste_back(img, [BOX], x[:1], y[:1])
    twice = paste_back(img, [BOX, BOX], x, y)
    np.testing.assert_array_equal(twice, paste_back(once, [BOX], x[1:], y[1:]))
    cy, cx = BOX.y + BOX.size // 2, BOX.x + BOX.size // 2
    assert abs((int(twice[cy, cx, 0]) - img[cy, cx, 0]) - 2 * 12.75) <= 1


def test_no_boxes_returns_copy():
    img = make_image()
    empty = np.zeros((0, 1, 48, 48), np.float32)
    out = paste_back(img, [], empty, empty)
    np.testing.assert_array_equal(out, img)
    assert out is not img


def test_clipping_at_white():
    img = np.full((H, W, 3), 250, np.uint8)
    x = model_in(img, [BOX])
    out = paste_back(img, [BOX], x, x + 1.0)
    assert out.max() == 255 and out.dtype == np.uint8


# --------------------------------------------------------------------------- replace


def test_replace_pastes_output_with_feathered_mask():
    img = make_image()
    x = model_in(img, [BOX])
    y = np.full_like(x, -1.0)  # black
    out = paste_back(img, [BOX], x, y, blend="replace")
    cy, cx = BOX.y + BOX.size // 2, BOX.x + BOX.size // 2
    assert np.all(out[cy - 10 : cy + 10, cx - 10 : cx + 10] == 0)
    outside = outside_mask(img.shape, [BOX])
    np.testing.assert_array_equal(out[outside], img[outside])
    # gray output replicated to colour: B = G = R where the mask is 1
    y = np.full_like(x, 0.2)
    out = paste_back(img, [BOX], x, y, blend="replace")
    px = out[cy, cx]
    assert px[0] == px[1] == px[2] == round(1.2 * 127.5)
    # half strength blends half way
    out = paste_back(img, [BOX], x, np.full_like(x, -1.0), blend="replace", strength=0.5)
    assert abs(int(out[cy, cx, 1]) - img[cy, cx, 1] / 2) <= 1


def test_replace_rgb_output_goes_back_as_bgr():
    img = make_image()
    x = model_in(img, [BOX], channels=3)
    y = np.full_like(x, -1.0)
    y[:, 0] = 1.0  # pure red in RGB
    out = paste_back(img, [BOX], x, y, blend="replace")
    cy, cx = BOX.y + BOX.size // 2, BOX.x + BOX.size // 2
    assert tuple(out[cy, cx]) == (0, 0, 255)
    gray = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    outg = paste_back(gray, [BOX], x, y, blend="replace")
    assert abs(int(outg[cy, cx]) - 0.299 * 255) <= 1


def test_replace_identity_input_output_roughly_keeps_image():
    """Pasting the crop itself back blurs the face a little but keeps its values."""
    img = make_image()
    x = model_in(img, [BOX])
    out = paste_back(img, [BOX], x, x, blend="replace")
    outside = outside_mask(img.shape, [BOX])
    np.testing.assert_array_equal(out[outside], img[outside])
    gray_in = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY).astype(float)
    gray_out = cv2.cvtColor(out, cv2.COLOR_BGR2GRAY).astype(float)
    assert abs(gray_out[~outside].mean() - gray_in[~outside].mean()) < 3


# --------------------------------------------------------------------------- bad arguments


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"blend": "add"}, "blend"),
        ({"blend": None}, "blend"),
        ({"strength": -0.5}, "strength"),
        ({"strength": float("nan")}, "strength"),
        ({"strength": float("inf")}, "strength"),
        ({"strength": "1"}, "strength"),
        ({"feather": 1.5}, "feather"),
        ({"feather": -0.1}, "feather"),
    ],
)
def test_bad_options(kwargs, match):
    img = make_image()
    x = model_in(img, [BOX])
    with pytest.raises(ValueError, match=match):
        paste_back(img, [BOX], x, x, **kwargs)


def test_bad_shapes_and_types():
    img = make_image()
    x = model_in(img, [BOX])
    with pytest.raises(ValueError, match="2 boxes"):
        paste_back(img, [BOX, BOX], x, x)
    with pytest.raises(ValueError, match="same shape"):
        paste_back(img, [BOX], x, model_in(img, [BOX], size=64))
    with pytest.raises(ValueError, match="same shape"):
        paste_back(img, [BOX], x, model_in(img, [BOX], channels=3))
    with pytest.raises(ValueError, match=r"\(N, C, s, s\)"):
        paste_back(img, [BOX], x[:, 0], x[:, 0])
    with pytest.raises(ValueError, match=r"\(N, C, s, s\)"):
        paste_back(img, [BOX], np.zeros((1, 2, 48, 48), np.float32), np.zeros((1, 2, 48, 48), np.float32))
    with pytest.raises(ValueError, match=r"\(N, C, s, s\)"):
        paste_back(img, [BOX], x[:, :, :40], x[:, :, :40])
    with pytest.raises(ValueError, match="floating"):
        paste_back(img, [BOX], extract_crops(img, [BOX], 48, 1), extract_crops(img, [BOX], 48, 1))
    with pytest.raises(ValueError, match="NaN"):
        paste_back(img, [BOX], x, np.full_like(x, np.nan))
    with pytest.raises(ValueError, match="CropBox"):
        paste_back(img, [(40, 30, 96)], x, x)
    with pytest.raises(ValueError, match="uint8"):
        paste_back(img.astype(np.float32), [BOX], x, x)
    with pytest.raises(ValueError, match="shape"):
        paste_back(img[:, :, :2], [BOX], x, x)
    with pytest.raises(ValueError, match="numpy"):
        paste_back(img.tolist(), [BOX], x, x)


def test_float64_model_arrays_accepted():
    img = make_image()
    x = model_in(img, [BOX]).astype(np.float64)
    out = paste_back(img, [BOX], x, x + 0.1)
    assert out.dtype == np.uint8 and not np.array_equal(out, img)


def test_smoothing_removes_checkerboard_but_keeps_broad_changes():
    from fexsdk.crops import CropBox
    from fexsdk.paste import paste_back

    img = np.full((120, 120, 3), 100, np.uint8)
    box = [CropBox(10, 10, 96)]
    x = np.zeros((1, 1, 48, 48), np.float32)
    yy, xx = np.mgrid[:48, :48]
    checker = (((yy + xx) % 2) * 2 - 1).astype(np.float32) * 0.2  # the transposed-conv artefact
    out_smooth = paste_back(img, box, x, x + checker[None, None])
    out_raw = paste_back(img, box, x, x + checker[None, None], smooth=False)
    assert np.abs(out_smooth.astype(int) - img).max() <= 1
    assert np.abs(out_raw.astype(int) - img).max() > 10
    broad = np.full((1, 1, 48, 48), 0.2, np.float32)  # a smooth change survives
    assert np.abs(paste_back(img, box, x, x + broad).astype(int) - img).max() > 10
