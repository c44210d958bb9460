"""ONNX export: every preset, metadata, parity with PyTorch, seeded noise, dynamic batch, errors."""

import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from fexsdk.export.onnx_export import FP16_TOLERANCE, FP32_TOLERANCE, export_onnx, parity, read_onnx_metadata  # noqa: E402
from fexsdk._trt import BatchProfile, import_tensorrt  # noqa: E402
from fexsdk.backends import OnnxBackend  # noqa: E402
from fexsdk.metadata import ModelMetadata, NoiseSite, pack_engine, unpack_engine  # noqa: E402
from fexsdk.noise import draw_noise  # noqa: E402
from fexsdk.training.checkpoint import generator_from_checkpoint, load_checkpoint, save_checkpoint  # noqa: E402
from fexsdk.training.models import Generator  # noqa: E402
from fexsdk.training.presets import get_preset, list_presets  # noqa: E402


def _checkpoint_for(preset: str, path):
    """A checkpoint of an untrained preset generator: export does not care about training."""
    p = get_preset(preset)
    torch.manual_seed(0)
    G = Generator(**p.generator.__dict__)
    save_checkpoint(path, {"generator_config": G.config.__dict__, "G": G.state_dict(), "preset": preset, "step": 0,
                           "domains": ["fer2013"]})
    return path


@pytest.mark.parametrize("preset", list_presets())
def test_every_preset_exports_with_parity(preset, tmp_path):
    ckpt = _checkpoint_for(preset, tmp_path / "g.pt")
    report = export_onnx(ckpt, tmp_path / "g.onnx")
    assert report.max_abs_diff <= FP32_TOLERANCE
    meta = read_onnx_metadata(report.path)
    assert meta.preset == preset
    G = generator_from_checkpoint(ckpt)
    assert meta.noise_size == G.noise_size()
    assert [s.name for s in meta.noise_sites] == [m.name for m in G.dropout_sites()]


def test_fp16_export_parity(tiny_checkpoint, tmp_path):
    report = export_onnx(tiny_checkpoint, tmp_path / "h.onnx", fp16=True)
    assert report.metadata.precision == "fp16"
    assert report.max_abs_diff <= FP16_TOLERANCE
    assert report.max_abs_diff > 0  # really half precision inside


def test_metadata_round_trip(tiny_onnx, tiny_checkpoint):
    meta = read_onnx_metadata(tiny_onnx)
    ckpt = load_checkpoint(tiny_checkpoint)
    assert meta.emotions == ckpt["emotions"]
    assert (meta.image_size, meta.channels, meta.label_dim) == (48, 1, 7)
    assert meta.training_step == ckpt["step"] == 4
    assert meta.dropout_p == 0.5 and meta.noise_size > 0
    assert ModelMetadata.from_json(meta.to_json()) == meta
    backend = OnnxBackend(tiny_onnx)
    assert backend.meta == meta


def test_engine_header_round_trip():
    meta = ModelMetadata(preset="x", dropout_p=0.5, noise_sites=[NoiseSite("res0", (8, 12, 12))],
                         engine={"gpu": "NVIDIA RTX 4090", "tensorrt_version": "1.7.0", "profile": [1, 4, 16]})
    blob = pack_engine(meta, b"\x00engine-bytes")
    back, engine = unpack_engine(blob)
    assert back == meta and engine == b"\x00engine-bytes"
    with pytest.raises(ValueError, match="not an fexsdk engine"):
        unpack_engine(b"\x00engine-bytes")
    with pytest.raises(ValueError, match="truncated"):
        unpack_engine(blob[:20])


def test_seeded_noise_and_noise_off(tiny_onnx, tiny_checkpoint):
    backend = OnnxBackend(tiny_onnx)
    meta = backend.meta
    x = np.random.default_rng(0).uniform(-1, 1, (2, 1, 48, 48)).astype(np.float32)
    lab = np.eye(7, dtype=np.float32)[[3, 5]]
    a = backend.run(x, lab, draw_noise(meta, 2, seed=1))
    b = backend.run(x, lab, draw_noise(meta, 2, seed=1))
    c = backend.run(x, lab, draw_noise(meta, 2, seed=2))
    assert np.array_equal(a, b)
    assert np.abs(a - c).max() > 1e-3
    # Noise off (all ones) is exactly what an eval-mode PyTorch model with ordinary dropout computes.
    G = generator_from_checkpoint(tiny_checkpoint)
    plain = Generator(**{**G.config.__dict__, "dropout_at": []})
    plain.load_state_dict(G.state_dict())
    with torch.no_grad():
        ref = plain.eval()(torch.from_numpy(x), torch.from_numpy(lab)).numpy()
    off = backend.run(x, lab, draw_noise(meta, 2, enabled=False))
    assert np.abs(off - ref).max() < FP32_TOLERANCE


def test_dynamic_batch_in_one_session(tiny_onnx):
    backend = OnnxBackend(tiny_onnx)
    for n in (1, 5):
        x = np.zeros((n, 1, 48, 48), np.float32)
        out = backend.run(x, np.eye(7, dtype=np.float32)[np.arange(n) % 7], draw_noise(backend.meta, n, seed=0))
        assert out.shape == (n, 1, 48, 48)


def test_parity_helper_detects_a_different_model(tiny_onnx, tiny_checkpoint):
    G = generator_from_checkpoint(tiny_checkpoint)
    assert parity(G, tiny_onnx) < FP32_TOLERANCE
    with torch.no_grad():
        for p in G.parameters():
            p.add_(0.1)
    assert parity(G, tiny_onnx) > 1e-2


def test_corrupt_and_foreign_checkpoints(tmp_path, tiny_checkpoint):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x80garbage")
    with pytest.raises(ValueError, match="not a readable fexsdk checkpoint"):
        export_onnx(bad, tmp_path / "x.onnx")
    ckpt = load_checkpoint(tiny_checkpoint)
    ckpt["generator_config"] = {**ckpt["generator_config"], "conv_dim": 16}  # another architecture
    save_checkpoint(tmp_path / "other.pt", {k: v for k, v in ckpt.items() if k != "checkpoint_version"})
    with pytest.raises(ValueError, match="do not fit"):
        export_onnx(tmp_path / "other.pt", tmp_path / "y.onnx")


def test_batch_profile():
    assert BatchProfile.parse("1,4,16") == BatchProfile(1, 4, 16)
    assert BatchProfile.parse("8") == BatchProfile(8, 8, 8)
    assert BatchProfile(1, 4, 16).shapes((1, 48, 48)) == ((1, 1, 48, 48), (4, 1, 48, 48), (16, 1, 48, 48))
    assert BatchProfile(1, 2, 4).chunks(10) == [(0, 4), (4, 8), (8, 10)]
    with pytest.raises(ValueError, match="min <= opt <= max"):
        BatchProfile(4, 2, 8)
    with pytest.raises(ValueError, match="MIN,OPT,MAX"):
        BatchProfile.parse("1,x,3")


def test_tensorrt_missing_is_a_clear_error(tiny_onnx, tmp_path):
    try:
        import_tensorrt()
        pytest.skip("TensorRT is installed here")
    except ImportError as exc:
        assert "fexsdk[trt]" in str(exc)
    proc = subprocess.run([sys.executable, "-m", "fexsdk.cli", "export", "engine", str(tiny_onnx), "-o",
                           str(tmp_path / "m.engine")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "fexsdk[trt]" in proc.stderr


def test_cli_export_prints_parity_and_next_command(tiny_checkpoint, tmp_path):
    out = tmp_path / "cli.onnx"
    proc = subprocess.run([sys.executable, "-m", "fexsdk.cli", "export", "onnx", str(tiny_checkpoint), "-o", str(out)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "parity: max |PyTorch - onnxruntime|" in proc.stdout
    assert f"--model {out}" in proc.stdout
    assert out.is_file()


def test_bundle_grid_shows_each_class_and_every_target(tiny_onnx, tmp_path):
    import cv2

    from fexsdk.export.bundle import draw_grid

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(7), 3)
    images = rng.integers(0, 256, (len(labels), 48, 48), dtype=np.uint8)
    usage = np.ones(len(labels), np.int64)  # all PublicTest
    np.savez(tmp_path / "mini.npz", images=images, labels=labels, usage=usage)
    out = draw_grid(tiny_onnx, str(tmp_path / "mini.npz"), tmp_path / "grid.png", per_class=2, scale=1)
    grid = cv2.imread(str(out), cv2.IMREAD_GRAYSCALE)
    assert grid.shape == (22 + 7 * 2 * 48, 8 * 48)  # header + 2 faces per class; input + 7 targets
    body = grid[22:]
    # Column 0 holds the inputs, the first two of each class, in class order.
    first = np.concatenate([images[labels == k][:2] for k in range(7)])
    assert np.array_equal(body[:, :48], np.concatenate(list(first), axis=0))
    # The generated columns differ from one another (the target label is used).
    assert not np.array_equal(body[:, 48:96], body[:, 96:144])
