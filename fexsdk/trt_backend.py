"""TensorRT engines at run time, with device buffers from cuda-python (no torch)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import numpy as np

from fexsdk.backends import Backend
from fexsdk._trt import BatchProfile, check_cuda, cuda_runtime, current_gpu, import_tensorrt
from fexsdk.formats import ONNX_SUFFIXES
from fexsdk.metadata import unpack_engine


class TensorRTBackend(Backend):
    """Runs an fexsdk engine file; refuses one built for another GPU or TensorRT version."""

    def __init__(self, path: str | os.PathLike) -> None:
        path = Path(path)
        self.meta, engine_bytes = unpack_engine(path.read_bytes())
        info = self.meta.engine
        self.trt = import_tensorrt(info.get("module"))
        gpu = current_gpu()
        built = (info.get("gpu"), info.get("tensorrt_version"))
        here = (gpu.name, self.trt.__version__)
        if built != here:
            raise RuntimeError(
                f"{path} was built for {built[0]} with {info.get('module')} {built[1]}, but this machine has "
                f"{here[0]} with {self.trt.__version__}: rebuild it here with `fex export engine MODEL{ONNX_SUFFIXES[0]} -o {path.name}`")
        self.cudart = cuda_runtime()
        logger = self.trt.Logger(self.trt.Logger.WARNING)
        self.engine = self.trt.Runtime(logger).deserialize_cuda_engine(engine_bytes)
        if self.engine is None:
            raise RuntimeError(f"TensorRT could not load {path}; rebuild it with `fex export engine`")
        self.context = self.engine.create_execution_context()
        self.profile = BatchProfile(*info.get("profile", [1, 1, 1]))
        self.stream = check_cuda(self.cudart.cudaStreamCreate())
        self._buffers: dict[str, tuple[int, int]] = {}  # name -> (pointer, bytes)
        self.name = f"{self.trt.__name__}/{gpu.name}"

    def _buffer(self, name: str, nbytes: int) -> int:
        ptr, size = self._buffers.get(name, (0, 0))
        if size < nbytes:
            if ptr:
                check_cuda(self.cudart.cudaFree(ptr))
            ptr = check_cuda(self.cudart.cudaMalloc(nbytes))
            self._buffers[name] = (ptr, nbytes)
        return ptr

    def _output_shape(self, name: str, n: int) -> tuple[int, ...]:
        m = self.meta
        channels = {"flow": 2, "mask": 1}.get(name, m.channels)
        return (n, channels, m.image_size, m.image_size)

    def _run_chunk(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rt, kind = self.cudart, self.cudart.cudaMemcpyKind
        n = next(iter(feeds.values())).shape[0]
        for name, arr in feeds.items():
            ptr = self._buffer(name, arr.nbytes)
            self.context.set_input_shape(name, arr.shape)
            self.context.set_tensor_address(name, ptr)
            check_cuda(rt.cudaMemcpyAsync(ptr, arr.ctypes.data, arr.nbytes, kind.cudaMemcpyHostToDevice, self.stream))
        outs = {name: np.empty(self._output_shape(name, n), np.float32) for name in self.meta.outputs}
        ptrs = {}
        for name, out in outs.items():
            ptrs[name] = self._buffer(name, out.nbytes)
            self.context.set_tensor_address(name, ptrs[name])
        if not self.context.execute_async_v3(self.stream):
            raise RuntimeError("TensorRT execution failed")
        for name, out in outs.items():
            check_cuda(rt.cudaMemcpyAsync(out.ctypes.data, ptrs[name], out.nbytes, kind.cudaMemcpyDeviceToHost, self.stream))
        check_cuda(rt.cudaStreamSynchronize(self.stream))
        return outs

    def run_outputs(self, image: np.ndarray, label: np.ndarray, noise: Optional[np.ndarray]) -> dict[str, np.ndarray]:
        feeds = self.meta.feeds(image, label, noise)
        pieces = [self._run_chunk({k: np.ascontiguousarray(v[a:b]) for k, v in feeds.items()})
                  for a, b in self.profile.chunks(image.shape[0])]
        if not pieces:
            return {name: np.zeros(self._output_shape(name, 0), np.float32) for name in self.meta.outputs}
        return {name: np.concatenate([p[name] for p in pieces]) for name in self.meta.outputs}

    def run(self, image: np.ndarray, label: np.ndarray, noise: Optional[np.ndarray]) -> np.ndarray:
        return self.run_outputs(image, label, noise)["output"]

    def __del__(self) -> None:
        for ptr, _ in getattr(self, "_buffers", {}).values():
            try:
                self.cudart.cudaFree(ptr)
            except Exception:
                pass
