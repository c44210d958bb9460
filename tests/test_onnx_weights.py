"""The PyTorch generator rebuilt from an exported ONNX file (the bundled one included) computes the same."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from fexsdk.metadata import read_metadata  # noqa: E402
from fexsdk.transfer import DEFAULT_MODEL  # noqa: E402
from fexsdk.training.checkpoint import checkpoint_from_onnx, generator_from_checkpoint  # noqa: E402


def test_bundled_model_rebuilds_in_pytorch_with_parity():
    ckpt = checkpoint_from_onnx(DEFAULT_MODEL)
    G = generator_from_checkpoint(ckpt).eval()
    meta = read_metadata(DEFAULT_MODEL)
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (4, 1, 48, 48)).astype(np.float32)
    label = np.eye(7, dtype=np.float32)[[0, 3, 5, 6]]
    noise = (rng.random((4, G.noise_size())) > meta.dropout_p).astype(np.float32) / (1 - meta.dropout_p)
    sess = ort.InferenceSession(str(DEFAULT_MODEL), providers=["CPUExecutionProvider"])
    want = sess.run(None, {"image": x, "label": label, "noise": noise})[0]
    with torch.no_grad():
        got = G(torch.from_numpy(x), torch.from_numpy(label), torch.from_numpy(noise)).numpy()
    assert np.abs(got - want).max() < 1e-4
    assert np.abs(want - x).mean() > 1e-3  # the model changes the face: the comparison means something


def test_onnx_without_generator_config_is_refused(tmp_path):
    import onnx

    from fexsdk.metadata import ONNX_KEY

    model = onnx.load(str(DEFAULT_MODEL))
    meta = read_metadata(DEFAULT_MODEL)
    meta.generator_config = {}
    for prop in model.metadata_props:
        if prop.key == ONNX_KEY:
            prop.value = meta.to_json()
    onnx.save(model, str(tmp_path / "old.onnx"))
    with pytest.raises(ValueError, match="no generator_config"):
        checkpoint_from_onnx(tmp_path / "old.onnx")
