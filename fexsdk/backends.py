"""Inference backends, picked from the model file's suffix (like ultralytics' AutoBackend).

``.onnx`` -> onnxruntime (CUDA, then CPU); ``.engine``/``.plan`` -> TensorRT or
TensorRT for RTX; ``.pt``/``.pth``/``.ckpt`` -> PyTorch (training checkpoints,
needs the [train] extra). Every backend reads :class:`ModelMetadata` from the
file and runs ``(image, label[, noise]) -> output`` on float32 numpy arrays.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Protocol

import numpy as np

from fexsdk._extras import require
from fexsdk.metadata import ONNX_KEY, ModelMetadata

ONNX_SUFFIXES = (".onnx",)
ENGINE_SUFFIXES = (".engine", ".plan")
TORCH_SUFFIXES = (".pt", ".pth", ".ckpt")
DEVICES = ("auto", "cpu", "cuda")


class Backend(Protocol):
    meta: ModelMetadata
    #: e.g. "onnxruntime/CPUExecutionProvider", "tensorrt/NVIDIA GeForce RTX 4090", "torch/cpu".
    name: str

    def run(self, image: np.ndarray, label: np.ndarray, noise: Optional[np.ndarray]) -> np.ndarray: ...


def _feeds(meta: ModelMetadata, image: np.ndarray, label: np.ndarray, noise: Optional[np.ndarray]) -> dict[str, np.ndarray]:
    feeds = {"image": np.ascontiguousarray(image, np.float32), "label": np.ascontiguousarray(label, np.float32)}
    if meta.noise_size:
        if noise is None:
            raise ValueError("this model has test-time dropout: pass its noise (see fexsdk.noise.draw_noise)")
        feeds["noise"] = np.ascontiguousarray(noise, np.float32)
    return feeds


class OnnxBackend:
    """onnxruntime with the CUDA provider when asked for and available, else the CPU."""

    def __init__(self, path: str | os.PathLike, device: str = "auto", threads: Optional[int] = None) -> None:
        import onnxruntime as ort

        path = Path(path)
        available = ort.get_available_providers()
        wants_cuda = device == "auto" or device.startswith("cuda")
        if device.startswith("cuda") and "CUDAExecutionProvider" not in available:
            raise RuntimeError(f"device={device!r} needs onnxruntime with CUDA: pip install 'fexsdk[gpu]' (and an NVIDIA GPU)")
        providers: list = ["CPUExecutionProvider"]
        if wants_cuda and "CUDAExecutionProvider" in available:
            device_id = int(device.split(":")[1]) if ":" in device else 0
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": device_id}))
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = threads or default_threads()
        opts.inter_op_num_threads = 1
        # Idle pool threads sleep instead of spinning: a spinning pool on cores that other processes
        # share makes everything on the machine crawl (the test suite took 30 min beside one busy core).
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ValueError(f"{path} is not a loadable ONNX model: {exc}") from None
        props = self.session.get_modelmeta().custom_metadata_map
        if ONNX_KEY not in props:
            raise ValueError(f"{path} has no fexsdk metadata (emotions, size, noise layout); export it with `fex export onnx`")
        self.meta = ModelMetadata.from_json(props[ONNX_KEY])
        inputs = {i.name for i in self.session.get_inputs()}
        expected = {"image", "label"} | ({"noise"} if self.meta.noise_size else set())
        if inputs != expected:
            raise ValueError(f"{path}: graph inputs {sorted(inputs)} do not match its metadata ({sorted(expected)})")
        self.name = f"onnxruntime/{self.session.get_providers()[0]}"

    def run(self, image, label, noise):
        return self.session.run(["output"], _feeds(self.meta, image, label, noise))[0]


class TorchBackend:
    """A training checkpoint run by PyTorch (for checking a model before exporting it)."""

    def __init__(self, path: str | os.PathLike, device: str = "auto", threads: Optional[int] = None) -> None:
        torch = require("torch", "train", "running a training checkpoint")
        if threads:
            torch.set_num_threads(threads)  # process-wide in PyTorch
        from export.onnx_export import metadata_for
        from training.checkpoint import generator_from_checkpoint, load_checkpoint

        ckpt = load_checkpoint(path)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.torch = torch
        self.device = torch.device(device)
        self.G = generator_from_checkpoint(ckpt).eval().to(self.device)
        self.meta = metadata_for(self.G, ckpt)
        self.name = f"torch/{self.device}"

    def run(self, image, label, noise):
        t = self.torch
        with t.no_grad():
            args = [t.from_numpy(a).to(self.device) for a in _feeds(self.meta, image, label, noise).values()]
            return self.G(*args).float().cpu().numpy()


#: Upper bound of the default CPU thread count: more threads hardly speed up a 48x48 generator.
MAX_DEFAULT_THREADS = 4


def default_threads() -> int:
    """CPU threads when none are asked for: the CPUs this process may use, at most 4."""
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        usable = os.cpu_count() or 1
    return max(1, min(MAX_DEFAULT_THREADS, usable))


def check_threads(threads) -> Optional[int]:
    """None or an int >= 1; anything else is a ValueError."""
    if threads is None:
        return None
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 1:
        raise ValueError(f"threads must be an integer >= 1 (or None for the default), got {threads!r}")
    return int(threads)


def load_backend(model: str | os.PathLike, device: str = "auto", threads: Optional[int] = None) -> Backend:
    """Open a model file with the backend its suffix names."""
    if not isinstance(device, str) or (device not in DEVICES and not device.startswith("cuda:")):
        raise ValueError(f"device must be one of {DEVICES} or 'cuda:N', got {device!r}")
    threads = check_threads(threads)
    if isinstance(model, bytes) or not isinstance(model, (str, os.PathLike)):
        raise ValueError(f"model must be a path to a model file (.onnx, .engine, .pt) or None for the bundled "
                         f"model, got {type(model).__name__} {model!r}")
    path = Path(model)
    if path.is_dir():
        raise ValueError(f"model {path} is a folder; give the model file (.onnx, .engine, .pt)")
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    suffix = path.suffix.lower()
    if suffix in ONNX_SUFFIXES:
        return OnnxBackend(path, device, threads)
    if suffix in ENGINE_SUFFIXES:
        if device == "cpu":
            raise ValueError(f"{path} is a TensorRT engine and runs on a GPU only; use the .onnx model with device='cpu'")
        from fexsdk.trt_backend import TensorRTBackend

        return TensorRTBackend(path)
    if suffix in TORCH_SUFFIXES:
        return TorchBackend(path, device, threads)
    raise ValueError(
        f"cannot tell the backend from {path.name!r}: use .onnx (onnxruntime), .engine/.plan (TensorRT) "
        "or .pt/.pth/.ckpt (a PyTorch training checkpoint)"
    )
