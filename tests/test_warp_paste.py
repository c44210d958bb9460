"""Warp paste-back (issue 13): zero flow is the identity, a constant flow moves a pattern by the expected pixels."""

import cv2
import numpy as np
import pytest

from fexsdk.crops import CropBox
from fexsdk.warp_paste import flow_to_pixels, paste_warp


def _photo(h=300, w=400, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_zero_flow_and_zero_residual_give_the_input_exactly():
    img = _photo()
    boxes = [CropBox(50, 40, 200), CropBox(300, 100, 150)]  # the second crosses the right edge
    out = paste_warp(img, boxes, np.zeros((2, 2, 48, 48), np.float32), np.zeros((2, 1, 48, 48), np.float32))
    assert out.dtype == img.dtype and np.array_equal(out, img)


def test_constant_flow_moves_a_pattern_by_the_expected_pixels():
    img = np.full((400, 400, 3), 100, np.uint8)
    img[195:205, 195:205] = 250  # a bright square at the box centre
    box = CropBox(100, 100, 200)
    flow = np.zeros((1, 2, 48, 48), np.float32)
    flow[:, 0] = 0.1  # dx = 0.1 grid units = 0.1 * 200 / 2 = 10 px: output(p) = input(p + 10)
    out = paste_warp(img, [box], flow, np.zeros((1, 1, 48, 48), np.float32), feather=0.0)
    cols = np.flatnonzero(out[200, :, 0] > 200)
    assert cols.min() == 185 and cols.max() == 194  # moved 10 px to the left
    # strength scales the flow: half strength, half the shift.
    out = paste_warp(img, [box], flow, np.zeros((1, 1, 48, 48), np.float32), strength=0.5, feather=0.0)
    cols = np.flatnonzero(out[200, :, 0] > 200)
    assert cols.min() == 190 and cols.max() == 199


def test_pixels_outside_boxes_unchanged_and_residual_adds_shading():
    img = _photo()
    box = CropBox(100, 50, 120)
    flow = np.random.default_rng(1).uniform(-0.05, 0.05, (1, 2, 48, 48)).astype(np.float32)
    res = np.full((1, 1, 48, 48), 0.1, np.float32)  # +12.75 grey levels
    out = paste_warp(img, [box], flow, res)
    outside = np.ones(img.shape[:2], bool)
    outside[50:170, 100:220] = False
    assert np.array_equal(out[outside], img[outside])
    centre = paste_warp(np.full_like(img, 100), [box], np.zeros_like(flow), res)[110, 160]
    assert np.all(np.abs(centre.astype(int) - 113) <= 1)


def test_flow_upsampling_to_pixels():
    flow = np.zeros((2, 48, 48), np.float32)
    flow[1] = -0.2
    px = flow_to_pixels(flow, 96)
    assert px.shape == (96, 96, 2) and np.allclose(px[..., 1], -9.6) and np.allclose(px[..., 0], 0)


@pytest.mark.parametrize("bad", [np.zeros((1, 3, 48, 48)), np.zeros((2, 2, 48, 48)), np.full((1, 2, 48, 48), np.nan)])
def test_bad_flows_are_refused(bad):
    with pytest.raises(ValueError, match="flows"):
        paste_warp(_photo(), [CropBox(0, 0, 50)], bad.astype(np.float32), np.zeros((1, 1, 48, 48), np.float32))


def test_warp_paste_back_keeps_the_skin_detail_of_a_real_photo():
    """Bilinear resampling of sub-pixel shifts softened faces to ~0.7 of their Laplacian variance."""
    data = pytest.importorskip("skimage.data")
    import fexsdk

    img = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)
    tr = fexsdk.Transfer("warp")
    x, y, w, h = (int(v) for v in tr.detect(img)[0].box)

    def detail(im):
        return cv2.Laplacian(cv2.cvtColor(im, cv2.COLOR_BGR2GRAY)[y:y + h, x:x + w].astype(np.float32), cv2.CV_32F).var()

    for target in ("surprise", "sad"):
        assert detail(tr.apply(img, target, seed=0, strength=0.5)) > 0.85 * detail(img)


def test_faces_apart_pasted_side_by_side_equal_one_after_another(monkeypatch):
    """Faces whose boxes share no pixel are pasted in parallel threads: the result is the sequential one, bit for bit;
    overlapping boxes are blended in order (each over the ones before it)."""
    import fexsdk.warp_paste as wp

    img = _photo(300, 700, seed=3)
    rng = np.random.default_rng(4)
    boxes = [CropBox(10, 20, 200), CropBox(250, 40, 180, angle=12.0), CropBox(480, 30, 190)]
    flows = rng.normal(0, 0.02, (3, 2, 48, 48)).astype(np.float32)
    res = rng.normal(0, 0.05, (3, 1, 48, 48)).astype(np.float32)
    parallel = paste_warp(img, boxes, flows, res)
    monkeypatch.setattr(wp, "_overlap", lambda windows: True)  # force one after another
    assert np.array_equal(parallel, paste_warp(img, boxes, flows, res))
    monkeypatch.undo()
    windows = [(slice(0, 10), slice(0, 10)), (slice(5, 15), slice(9, 20))]
    assert wp._overlap(windows) and not wp._overlap([windows[0], (slice(10, 20), slice(0, 10))])
