"""What the TensorRT engine builder (export/) and runtime (fexsdk/) share: imports, GPU facts, profiles.

Both ``tensorrt`` (data-centre and desktop GPUs, NVIDIA's index) and
``tensorrt_rtx`` (TensorRT for RTX, wheels on PyPI) expose the same API for
what fexsdk uses; whichever is installed is taken, ``tensorrt`` first.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

TRT_MODULES = ("tensorrt", "tensorrt_rtx")


def import_tensorrt(prefer: str | None = None) -> ModuleType:
    """Import TensorRT (or TensorRT for RTX); ``prefer`` names the module an engine was built with."""
    order = [prefer] if prefer else list(TRT_MODULES)
    errors = []
    for name in order:
        try:
            return importlib.import_module(name)
        except ImportError as exc:
            errors.append(f"{name}: {exc}")
    hint = "pip install 'fexsdk[trt-rtx]'" if prefer == "tensorrt_rtx" else "pip install 'fexsdk[trt]' (or 'fexsdk[trt-rtx]' on GeForce/RTX GPUs)"
    raise ImportError(f"TensorRT is not installed ({'; '.join(errors)}): {hint}")


@dataclass(frozen=True)
class GpuInfo:
    name: str
    compute_capability: str


def cuda_runtime() -> ModuleType:
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # older cuda-python
        except ImportError:
            raise ImportError("TensorRT in fexsdk needs cuda-python for GPU buffers: pip install 'fexsdk[trt]'") from None
    return cudart


def check_cuda(result):
    """cuda-python calls return (error, *values): raise on error, return the values."""
    err, *values = result
    code = int(err) if not hasattr(err, "value") else int(err.value)
    if code != 0:
        raise RuntimeError(f"CUDA error {err}")
    return values[0] if len(values) == 1 else tuple(values)


def current_gpu() -> GpuInfo:
    """The GPU TensorRT will use; a clear error when there is none."""
    cudart = cuda_runtime()
    err, count = cudart.cudaGetDeviceCount()
    if int(getattr(err, "value", err)) != 0 or count == 0:
        raise RuntimeError("TensorRT needs an NVIDIA GPU with a working driver, and none was found; use the ONNX model on the CPU")
    props = check_cuda(cudart.cudaGetDeviceProperties(0))
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    return GpuInfo(name.strip("\x00 "), f"{props.major}.{props.minor}")


@dataclass(frozen=True)
class BatchProfile:
    """The optimisation profile over batch sizes: MIN,OPT,MAX."""

    min: int = 1
    opt: int = 4
    max: int = 16

    def __post_init__(self) -> None:
        if not 1 <= self.min <= self.opt <= self.max:
            raise ValueError(f"batch profile must satisfy 1 <= min <= opt <= max, got {self.min},{self.opt},{self.max}")

    @classmethod
    def parse(cls, text: str) -> "BatchProfile":
        """``"1,4,16"`` -> BatchProfile(1, 4, 16); a single number N means N,N,N."""
        try:
            parts = [int(p) for p in str(text).split(",")]
        except ValueError:
            raise ValueError(f"batch profile must be MIN,OPT,MAX integers, got {text!r}") from None
        if len(parts) == 1:
            parts *= 3
        if len(parts) != 3:
            raise ValueError(f"batch profile must be MIN,OPT,MAX, got {text!r}")
        return cls(*parts)

    def shapes(self, dims: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        """(min, opt, max) shapes of an input whose per-sample dims are ``dims``."""
        return (self.min, *dims), (self.opt, *dims), (self.max, *dims)

    def chunks(self, batch: int) -> list[tuple[int, int]]:
        """Split a batch into (start, stop) pieces no larger than ``max`` (the engine's limit)."""
        return [(i, min(i + self.max, batch)) for i in range(0, batch, self.max)]
