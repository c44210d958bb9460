"""TensorRT: the engine builder (export) and the engine backend (runtime), where a GPU and TensorRT exist.

Skipped here without them; run on a machine with an NVIDIA GPU and the [trt] or [trt-rtx] extra.
"""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def gpu():
    from fexsdk._trt import cuda_runtime, current_gpu, import_tensorrt

    try:
        trt = import_tensorrt()
        cuda_runtime()
        info = current_gpu()
    except (ImportError, RuntimeError, OSError) as exc:
        pytest.skip(f"no TensorRT or no CUDA GPU here: {exc}")
    return trt, info


@pytest.mark.parametrize("precision, tol", [("fp32", 1e-3), ("fp16", 5e-2)])
def test_engine_matches_onnxruntime(gpu, tiny_onnx, tmp_path, precision, tol):
    from fexsdk._trt import BatchProfile
    from fexsdk.backends import OnnxBackend, load_backend
    from fexsdk.export.onnx_export import sample_inputs
    from fexsdk.export.tensorrt_engine import EngineOptions, build_engine
    from fexsdk.metadata import read_metadata

    path = build_engine(tiny_onnx, tmp_path / f"tiny-{precision}.engine",
                        EngineOptions(precision=precision, profile=BatchProfile(1, 4, 8), timing_cache=None))
    meta = read_metadata(path)
    assert meta.engine["gpu"] == gpu[1].name and meta.noise_size == read_metadata(tiny_onnx).noise_size
    engine, ref = load_backend(path, device="cuda"), OnnxBackend(tiny_onnx, device="cpu")
    feeds = sample_inputs(ref.meta, 11, seed=3)  # 11 > the profile's max: run in chunks
    args = (feeds["image"], feeds["label"], feeds.get("noise"))
    out, want = engine.run(*args), ref.run(*args)
    assert out.shape == want.shape and np.abs(out - want).max() < tol
    assert set(engine.run_outputs(*args)) == set(meta.outputs)
