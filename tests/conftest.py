"""Shared fixtures: the FER2013 archive beside the checkout (skipped when absent)."""

from __future__ import annotations

from pathlib import Path

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
