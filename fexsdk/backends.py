"""Inference backends: the :class:`Backend` interface and onnxruntime's implementation.

:func:`load_backend` opens a model file with the format its suffix names in :mod:`fexsdk.formats`
(ONNX -> onnxruntime, CUDA then CPU; TensorRT engines -> TensorRT or TensorRT for RTX; the formats
the packages above the runtime register, such as PyTorch training checkpoints). Every backend reads
:class:`ModelMetadata` from the file and runs ``(image, label[, noise])`` on float32 numpy arrays:
:meth:`Backend.run` returns the image output, :meth:`Backend.run_outputs` every output the metadata
lists (warp-head models add ``flow``, ``residual`` and ``mask``).
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Optional

import numpy as np

from fexsdk import formats
from fexsdk.formats import ENGINE_SUFFIXES, ONNX_SUFFIXES  # noqa: F401  (re-exported for older callers)
from fexsdk.metadata import ModelMetadata, from_props

DEVICES = ("auto", "cpu", "cuda")


class Backend(ABC):
    """A generator ready to run. Subclasses set :attr:`meta` and :attr:`name` and implement both methods."""

    meta: ModelMetadata
    #: e.g. "onnxruntime/CPUExecutionProvider", "tensorrt/NVIDIA GeForce RTX 4090", "torch/cpu".
    name: str

    @abstractmethod
    def run(self, image: np.ndarray, label: np.ndarray, noise: Optional[np.ndarray]) -> np.ndarray:
        """The image output, (B, C, S, S) in the model's space."""

    @abstractmethod
    def run_outputs(self, image: np.ndarray, label: np.ndarray, noise: Optional[np.ndarray]) -> dict[str, np.ndarray]:
        """Every output named in ``meta.outputs``, by name."""


class OnnxBackend(Backend):
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
        self.meta = from_props(self.session.get_modelmeta().custom_metadata_map, path)
        inputs = {i.name for i in self.session.get_inputs()}
        expected = {"image", "label"} | ({"noise"} if self.meta.noise_size else set())
        if inputs != expected:
            raise ValueError(f"{path}: graph inputs {sorted(inputs)} do not match its metadata ({sorted(expected)})")
        check_input_shapes(path, self.meta, {i.name: i.shape for i in self.session.get_inputs()})
        self.name = f"onnxruntime/{self.session.get_providers()[0]}"

    def run(self, image, label, noise):
        return self.session.run(["output"], self.meta.feeds(image, label, noise))[0]

    def run_outputs(self, image, label, noise):
        values = self.session.run(list(self.meta.outputs), self.meta.feeds(image, label, noise))
        return dict(zip(self.meta.outputs, values))


def check_input_shapes(path: str | os.PathLike, meta: ModelMetadata, shapes: dict[str, list]) -> None:
    """ValueError where the graph's fixed input sizes disagree with the metadata the runtime feeds by:
    found at load time, rather than as onnxruntime's InvalidArgument on the first face."""
    expected = {"image": [meta.channels, meta.image_size, meta.image_size], "label": [meta.label_dim]}
    if meta.noise_size:
        expected["noise"] = [meta.noise_size]
    for name, want in expected.items():
        got = list(shapes.get(name) or [])[1:]  # the batch axis is free
        fixed = [(g, w) for g, w in zip(got, want) if isinstance(g, int)]
        if len(got) != len(want) or any(g != w for g, w in fixed):
            raise ValueError(f"{path}: its metadata says input {name!r} is (batch, {', '.join(map(str, want))}) "
                             f"(image_size {meta.image_size}, channels {meta.channels}) but the graph takes "
                             f"{['batch', *got]}; the file was edited or mis-exported: export it again with "
                             "`fex export onnx`")


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
    """Open a model file with the backend its suffix names (:mod:`fexsdk.formats`)."""
    if not isinstance(device, str) or (device not in DEVICES and not device.startswith("cuda:")):
        raise ValueError(f"device must be one of {DEVICES} or 'cuda:N', got {device!r}")
    threads = check_threads(threads)
    if isinstance(model, bytes) or not isinstance(model, (str, os.PathLike)):
        raise ValueError(f"model must be a path to a model file ({formats.suffix_list()}) or None for the bundled "
                         f"model, got {type(model).__name__} {model!r}")
    path = Path(model)
    if path.is_dir():
        raise ValueError(f"model {path} is a folder; give the model file ({formats.suffix_list()})")
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    fmt = formats.format_of(path)
    if fmt is None:
        raise ValueError(f"cannot tell the backend from {path.name!r}: use {formats.describe()}")
    return fmt.opener(path, device, threads)
