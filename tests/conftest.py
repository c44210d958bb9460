"""Shared fixtures: the FER2013 archive beside the checkout (skipped when absent)."""

from __future__ import annotations

import os
from pathlib import Path

# Before torch is imported by any test: OpenMP threads that spin while waiting make the suite crawl on
# a machine whose cores other processes share (30 minutes instead of about one). `fex` does the same.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
FER_NPZ = REPO.parent / "shared" / "data" / "fer2013.npz"
MODELS_DIR = REPO.parent / "shared" / "models"


@pytest.fixture(scope="session")
def fer_npz() -> Path:
    """Path to ../shared/data/fer2013.npz; skips the test when it is not there."""
    if not FER_NPZ.is_file():
        pytest.skip(f"FER2013 archive not found at ../shared/data/fer2013.npz")
    return FER_NPZ


@pytest.fixture(scope="session")
def fer_sample(fer_npz):
    """A few hundred PublicTest faces and labels (uint8 48x48, int labels)."""
    with np.load(fer_npz) as d:
        idx = np.flatnonzero(d["usage"] == 1)[:300]
        return d["images"][idx], d["labels"][idx].astype(np.int64)


@pytest.fixture(scope="session")
def shared_models() -> Path:
    if not (MODELS_DIR / "face_detection_yunet_2023mar.onnx").is_file():
        pytest.skip("face detector files not found in ../shared/models")
    return MODELS_DIR


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A 'tiny' preset checkpoint after a few steps on synthetic data (has dropout noise)."""
    pytest.importorskip("torch")
    from fexsdk.training.trainer import TrainConfig, Trainer

    out = tmp_path_factory.mktemp("tiny_run")
    Trainer(TrainConfig(preset="tiny", synthetic=64, out=str(out), batch_size=4, max_steps=4, ckpt_every=4,
                        sample_every=1000, progress=False)).fit()
    return out / "last.pt"


@pytest.fixture(scope="session")
def tiny_onnx(tiny_checkpoint, tmp_path_factory) -> Path:
    """The tiny checkpoint exported to ONNX with metadata."""
    pytest.importorskip("onnx")
    from fexsdk.export.onnx_export import export_onnx

    return export_onnx(tiny_checkpoint, tmp_path_factory.mktemp("onnx") / "tiny.onnx").path


def face_scene(faces: np.ndarray, size: int = 150, canvas=(480, 640), seed: int = 0) -> tuple[np.ndarray, list]:
    """FER2013 faces (N, 48, 48) upscaled and placed side by side on a textured BGR background.

    Returns the image and the ground-truth (x, y, w, h) square of each face.
    """
    import cv2

    rng = np.random.default_rng(seed)
    h, w = canvas
    img = cv2.GaussianBlur(rng.integers(60, 200, (h, w, 3), dtype=np.uint8), (0, 0), 3)
    boxes = []
    step = w // max(1, len(faces))
    for i, face in enumerate(faces):
        x = i * step + (step - size) // 2
        y = (h - size) // 2
        big = cv2.resize(face, (size, size), interpolation=cv2.INTER_CUBIC)
        img[y : y + size, x : x + size] = big[..., None]
        boxes.append((x, y, size, size))
    return img, boxes
