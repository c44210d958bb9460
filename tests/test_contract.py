"""One model contract: one noise policy everywhere, metadata-driven normalisation and labels,
checkpoints that carry their metadata, and warp-head models through Transfer's stages."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from fexsdk.emotions import emotion_index
from fexsdk.faces import Face
from fexsdk.metadata import ModelMetadata, label_layout, read_metadata


def _faces(n: int, seed: int = 0) -> np.ndarray:
    """Smooth random 48x48 gray 'faces' (uint8)."""
    rng = np.random.default_rng(seed)
    return np.stack([cv2.GaussianBlur(rng.integers(30, 220, (48, 48), dtype=np.uint8), (0, 0), 2) for _ in range(n)])


class _Boxes:
    """A detector that finds the given boxes (no margin: each box is the crop)."""

    name = "fixed"
    crop_margin = 0.0
    crop_offset = 0.0

    def __init__(self, boxes):
        self.boxes = boxes

    def detect(self, image):
        return [Face(b, 1.0) for b in self.boxes]


def test_same_seed_same_face_gives_the_same_output_in_apply_demo_and_eval(tiny_onnx):
    pytest.importorskip("torch")
    from fexsdk.training.evaluate import generated
    from fexsdk.transfer import Transfer
    from fexsdk.video import DemoConfig, DemoLoop

    faces = _faces(3)
    canvas = np.repeat(np.concatenate(list(faces), axis=1)[..., None], 3, axis=2)  # 48 x 144 BGR, three faces
    boxes = [(48 * i, 0, 48, 48) for i in range(3)]
    # fex eval scores the model itself on FER2013 crops; the runtime's exposure fit (tests/test_exposure.py)
    # would stretch these synthetic low-contrast faces first, so it is off for this comparison.
    tr = Transfer(tiny_onnx, device="cpu", detector=_Boxes(boxes), exposure=False)
    assert tr.meta.noise_size > 0, "the test needs a model with test-time dropout"
    seed = 5

    res = tr.process(canvas, "happy", faces=boxes, seed=seed)
    assert np.array_equal(res.inputs, tr.meta.to_model(faces[:, None]))  # each crop is the face itself
    # fex eval: image i of the test set is face i
    ev = generated(tr.backend, tr.meta.to_model(faces[:, None]), np.full(3, emotion_index("happy")), seed)
    np.testing.assert_allclose(ev, res.outputs, rtol=0, atol=1e-6)
    # fex demo's first frame: track i is face i
    loop = DemoLoop(DemoConfig(seed=seed, emotion="happy", headless=True, overlay=False, quiet=True), transfer=tr)
    first = loop.process(canvas)
    assert [t.id for t in loop.tracker.tracks] == [0, 1, 2]
    assert np.array_equal(first, res.image)
    # and a face's noise does not depend on the other faces of the call
    alone = tr.process(canvas, "happy", faces=boxes[:1], seed=seed)
    assert np.array_equal(alone.outputs[0], res.outputs[0])
    other = tr.process(canvas, "happy", faces=boxes, seed=seed + 1)
    assert not np.array_equal(other.outputs, res.outputs)


def test_stages_fill_the_face_records(tiny_onnx):
    from fexsdk.transfer import STAGES, Transfer

    faces = _faces(2, seed=1)
    canvas = np.repeat(np.concatenate(list(faces), axis=1)[..., None], 3, axis=2)
    boxes = [(0, 0, 48, 48), (48, 0, 48, 48)]
    tr = Transfer(tiny_onnx, device="cpu", detector=_Boxes(boxes))
    records = tr.frame(canvas, tr.detect(canvas), face_ids=[4, 9])
    assert [r.face_id for r in records] == [4, 9] and all(r.crop is None for r in records)
    tr.crop(canvas, records)
    assert all(r.crop.shape == (1, 48, 48) and r.output is None for r in records)
    tr.generate_faces(records, "surprise", seed=3)
    out = tr.paste(canvas, records)
    res = tr.process(canvas, "surprise", seed=3)  # detector path: ids 0, 1
    assert not np.array_equal(out, res.image)  # ids 4 and 9 drew other noise
    # ids 0, 1 through the stages by hand == process
    again = tr.generate_faces(tr.crop(canvas, tr.frame(canvas, boxes)), "surprise", seed=3)
    assert np.array_equal(tr.paste(canvas, again), res.image)
    for r in res.records:
        assert set(STAGES) <= set(r.timings) and r.output.shape == (1, 48, 48)
    assert set(res.timings) == set(STAGES)


def test_normalisation_and_labels_come_from_the_metadata():
    meta = ModelMetadata()
    px = np.array([0, 1, 127, 128, 254, 255], np.uint8)
    assert np.array_equal(meta.to_pixels(meta.to_model(px)), px)
    assert meta.to_model(px).min() == -1.0 and meta.to_model(px).max() == 1.0
    other = ModelMetadata(normalization="pixel/255-0")
    assert other.to_model(np.array([255], np.uint8))[0] == 1.0 and other.pixel_scale == 255.0
    with pytest.raises(ValueError, match="normalization"):
        ModelMetadata(normalization="zscore").validate()
    two = ModelMetadata(domains=["fer2013", "ferg"], label_dim=16)
    lab = two.label_for(np.eye(7, dtype=np.float32)[[3]], domain=1)
    assert lab.shape == (1, 16) and lab[0, 7 + 3] == 1 and lab[0, 14 + 1] == 1 and lab.sum() == 2
    assert np.array_equal(label_layout(np.eye(7)[[3]], 1, 2), lab)


def test_trainer_uses_the_runtime_label_layout():
    torch = pytest.importorskip("torch")
    from fexsdk.training.trainer import domain_label

    emo = torch.tensor([0, 6, 2])
    for n_domains, domain in ((1, 0), (2, 0), (2, 1), (3, 2)):
        want = label_layout(np.eye(7, dtype=np.float32)[emo.numpy()], domain, n_domains)
        assert np.array_equal(domain_label(emo, domain, n_domains).numpy(), want)


def test_checkpoints_carry_the_metadata_the_export_writes(tiny_checkpoint, tiny_onnx):
    torch = pytest.importorskip("torch")
    ckpt = torch.load(tiny_checkpoint, map_location="cpu", weights_only=True)
    saved = ModelMetadata.from_json(ckpt["metadata"])
    exported = read_metadata(tiny_onnx)
    from_ckpt = read_metadata(tiny_checkpoint)  # the .pt reader registered by fexsdk.training
    assert saved.to_json() == from_ckpt.to_json()
    assert exported.to_json() == saved.to_json()
    assert exported.generator_config["conv_dim"] == 8 and exported.noise_size > 0


def test_warp_model_through_the_stages_moves_only_the_face(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("onnx")
    from fexsdk.export.onnx_export import export_onnx
    from fexsdk.training.trainer import TrainConfig, Trainer
    from fexsdk.transfer import Transfer
    from fexsdk.warp_paste import paste_warp

    Trainer(TrainConfig(preset="fex-small-warp", synthetic=32, out=str(tmp_path / "run"), batch_size=4, max_steps=2,
                        ckpt_every=2, sample_every=1000, progress=False, conv_dim=8, n_res=1, threads=1)).fit()
    ckpt = tmp_path / "run" / "last.pt"
    path = export_onnx(ckpt, tmp_path / "warp.onnx").path
    rng = np.random.default_rng(0)
    img = cv2.GaussianBlur(rng.integers(40, 220, (160, 200, 3), dtype=np.uint8), (0, 0), 2)
    box = (60, 40, 80, 80)
    for model in (path, ckpt):  # onnxruntime and the PyTorch checkpoint backend
        tr = Transfer(model, device="cpu")
        assert tr.meta.is_warp
        res = tr.process(img, "surprise", faces=[box], seed=0)
        r = res.records[0]
        assert set(r.parts) == {"flow", "residual", "mask"} and r.parts["flow"].shape == (2, 48, 48)
        outside = np.ones(img.shape[:2], bool)
        b = res.boxes[0]
        outside[max(b.y, 0): b.y2, max(b.x, 0): b.x2] = False
        assert np.array_equal(res.image[outside], img[outside])
        inside = ~outside
        assert np.abs(res.image[inside].astype(int) - img[inside]).mean() > 0.05
        # the paste stage of a warp model is paste_warp on its flow and residual
        want = paste_warp(img, res.boxes, r.parts["flow"][None], r.parts["residual"][None])
        assert np.array_equal(res.image, want)


def test_every_bundled_model_card_holds_the_metadata_of_its_file():
    import json

    from fexsdk.transfer import BUNDLED_DIR, bundled_models

    assert "default" in bundled_models()
    for name in bundled_models():
        path = BUNDLED_DIR / f"{name}.onnx"
        card = json.loads(path.with_suffix(".json").read_text())
        meta = read_metadata(path)
        assert ModelMetadata.from_json(json.dumps(card["metadata"])).to_json() == meta.to_json(), name
        assert card["steps"] == meta.training_step and card["model"] == path.name
        assert card["size_bytes"] == path.stat().st_size


def test_bundle_writes_a_named_option_that_transfer_finds_by_name(tiny_checkpoint, tmp_path, monkeypatch):
    pytest.importorskip("torch")
    import json

    import fexsdk.export.bundle as bundle_mod
    import fexsdk.transfer as transfer_mod

    monkeypatch.setattr(bundle_mod, "BUNDLED_DIR", tmp_path)
    monkeypatch.setattr(transfer_mod, "BUNDLED_DIR", tmp_path)
    path = bundle_mod.bundle(str(tiny_checkpoint), name="option")
    assert path == tmp_path / "option.onnx"
    assert json.loads((tmp_path / "option.json").read_text())["model"] == "option.onnx"
    assert transfer_mod.bundled_models() == ["option"]
    assert transfer_mod.Transfer("option").meta == read_metadata(path)
    with pytest.raises(ValueError, match="plain word"):
        bundle_mod.bundle(str(tiny_checkpoint), name="../escape")
