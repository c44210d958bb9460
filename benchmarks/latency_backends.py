"""The backends a latency run times (PyTorch, CUDA graphs, onnxruntime fp32/int8/CUDA, TensorRT) and the timer.

Part of ``benchmarks/latency.py`` (see its docstring for what is timed and how).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import onnxruntime as ort

from fexsdk.backends import OnnxBackend
from fexsdk.metadata import ModelMetadata
from fexsdk.noise import noise_for

from latency_models import Models, TRAIN_HINT, onnx_metadata


ALL_BACKENDS = ("torch-cpu", "torch-cuda", "torch-cuda-graph", "ort-cpu", "ort-cpu-int8", "ort-cuda", "trt-fp32", "trt-fp16")


class Skip(Exception):
    """A backend that cannot run here; the message says why."""


@dataclass
class Built:
    key: str
    backend: Any  # has .run(image, label, noise), .meta, .name
    device: str
    precision: str
    #: How fexsdk.Transfer would open the same thing: (model path, device); None where it cannot.
    transfer_spec: Optional[tuple[Path, str]] = None
    notes: list[str] = field(default_factory=list)


class CudaGraphBackend:
    """A generator on the GPU replayed as a captured CUDA graph, one per batch size."""

    def __init__(self, torch_backend) -> None:
        import torch

        self.torch = torch
        self.G = torch_backend.G
        self.meta = torch_backend.meta
        self.device = torch_backend.device
        self.graphs: dict[int, tuple[Any, list, Any]] = {}
        self.name = f"torch/{torch.cuda.get_device_name(self.device)} (CUDA graph)"

    def _capture(self, arrays: list[np.ndarray]):
        t = self.torch
        static = [t.from_numpy(a).to(self.device) for a in arrays]
        stream = t.cuda.Stream()
        stream.wait_stream(t.cuda.current_stream())
        with t.no_grad(), t.cuda.stream(stream):
            for _ in range(3):  # warm-up on a side stream before capture, as PyTorch asks
                self.G(*static)
        t.cuda.current_stream().wait_stream(stream)
        graph = t.cuda.CUDAGraph()
        with t.no_grad(), t.cuda.graph(graph):
            out = self.G(*static)
        return graph, static, out

    def run(self, image, label, noise):
        arrays = list(self.meta.feeds(image, label, noise).values())
        n = image.shape[0]
        if n not in self.graphs:
            self.graphs[n] = self._capture(arrays)
        graph, static, out = self.graphs[n]
        for dst, src in zip(static, arrays):
            dst.copy_(self.torch.from_numpy(src))
        graph.replay()
        return out.float().cpu().numpy()


def _torch_backend(models: Models, device: str):
    try:
        import torch
    except ImportError:
        raise Skip(f"PyTorch is not installed ({TRAIN_HINT})") from None
    if models.checkpoint is None:
        raise Skip("needs a training checkpoint: pass --checkpoint PT (or --model PT, or --preset NAME)")
    if device == "cuda" and not torch.cuda.is_available():
        raise Skip(f"torch {torch.__version__} sees no CUDA GPU")
    from fexsdk.training.torch_backend import TorchBackend

    return TorchBackend(models.checkpoint, device)


def build_backend(key: str, models: Models, args, tmp: Path, calib: np.ndarray, calib_desc: str,
                  max_batch: int, report: dict[str, Any]) -> Built:
    threads = args.threads
    if key == "torch-cpu":
        return Built(key, _torch_backend(models, "cpu"), "cpu", "fp32", (models.checkpoint, "cpu"))
    if key == "torch-cuda":
        return Built(key, _torch_backend(models, "cuda"), "cuda", "fp32", (models.checkpoint, "cuda"))
    if key == "torch-cuda-graph":
        return Built(key, CudaGraphBackend(_torch_backend(models, "cuda")), "cuda", "fp32",
                     notes=["one CUDA graph captured per batch size"])
    if models.onnx is None:
        raise Skip("no ONNX model (" + "; ".join(models.notes or ["pass --model MODEL.onnx"]) + ")")
    meta = onnx_metadata(models.onnx)
    if key == "ort-cpu":
        return Built(key, OnnxBackend(models.onnx, "cpu", threads), "cpu", meta.precision, (models.onnx, "cpu"))
    if key == "ort-cpu-int8":
        try:
            from fexsdk.export.quantize import quantize_onnx
        except ImportError as exc:
            raise Skip(str(exc)) from None
        if meta.precision != "fp32":
            raise Skip(f"the model is {meta.precision}; int8 quantization starts from an fp32 export")
        dst = tmp / (models.onnx.stem + ".int8.onnx")
        t0 = time.perf_counter()
        try:
            q = quantize_onnx(models.onnx, dst, calib)
        except ImportError as exc:
            raise Skip(str(exc)) from None
        report.update({"path": str(dst), "calibration": calib_desc, "calibration_count": q.calibration_count,
                       "quantized_tensors": q.quantized_nodes, "size_bytes": q.size_bytes,
                       "fp32_size_bytes": models.onnx.stat().st_size, "seconds": time.perf_counter() - t0})
        return Built(key, OnnxBackend(dst, "cpu", threads), "cpu", "int8", (dst, "cpu"),
                     [f"QDQ int8, per-channel 7-bit weights (reduce_range), calibrated on {q.calibration_count} {calib_desc}"])
    if key == "ort-cuda":
        available = ort.get_available_providers()
        if "CUDAExecutionProvider" not in available:
            raise Skip(f"onnxruntime {ort.__version__} has no CUDAExecutionProvider (providers: {', '.join(available)}); "
                       "pip install 'fexsdk[gpu]' on a machine with an NVIDIA GPU")
        b = OnnxBackend(models.onnx, "cuda", threads)
        if b.session.get_providers()[0] != "CUDAExecutionProvider":
            raise Skip("onnxruntime lists the CUDA provider but the session fell back to the CPU (CUDA/cuDNN libraries missing?)")
        return Built(key, b, "cuda", meta.precision, (models.onnx, "cuda"))
    if key in ("trt-fp32", "trt-fp16"):
        from fexsdk._trt import BatchProfile, current_gpu, import_tensorrt

        try:
            trt = import_tensorrt()
        except ImportError as exc:
            raise Skip(str(exc)) from None
        try:
            gpu = current_gpu()
        except (ImportError, RuntimeError) as exc:
            raise Skip(str(exc)) from None
        from fexsdk.export.tensorrt_engine import EngineOptions, build_engine
        from fexsdk.trt_backend import TensorRTBackend

        precision = key.split("-")[1]
        opt = max([b for b in args.gpu_batches if b <= 16] or [1])
        profile = BatchProfile(1, min(opt, max_batch), max_batch)
        engine = tmp / f"{models.onnx.stem}.{precision}.engine"
        t0 = time.perf_counter()
        build_engine(models.onnx, engine, EngineOptions(precision=precision, profile=profile,
                                                         timing_cache=str(tmp / "timing.cache"), verbosity="error"))
        took = time.perf_counter() - t0
        return Built(key, TensorRTBackend(engine), "cuda", precision, (engine, "cuda"),
                     [f"{trt.__name__} {trt.__version__} on {gpu.name}, profile {profile.min},{profile.opt},{profile.max}, "
                      f"built in {took:.0f} s"])
    raise ValueError(key)


def time_calls(fn: Callable[[], Any], warmup: int, iters: int, min_iters: int, max_seconds: float) -> list[float]:
    """Seconds per call: ``warmup`` untimed calls, then up to ``iters`` timed ones (at least
    ``min_iters``; fewer than ``iters`` once ``max_seconds`` have passed)."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < iters:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if len(times) >= min_iters and time.perf_counter() - start > max_seconds:
            break
    return times


def stats_ms(times: list[float]) -> dict[str, float]:
    a = np.asarray(times) * 1000.0
    return {"p50_ms": float(np.percentile(a, 50)), "p95_ms": float(np.percentile(a, 95)),
            "mean_ms": float(a.mean()), "min_ms": float(a.min()), "n": int(a.size)}


def model_inputs(meta: ModelMetadata, faces: np.ndarray, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
    idx = np.arange(n) % len(faces)
    x = meta.to_model(faces[idx][:, None])
    if meta.channels != 1:
        x = np.repeat(x, meta.channels, axis=1)
    k = len(meta.emotions)
    label = meta.label_for(np.eye(k, dtype=np.float32)[np.arange(n) % k])
    return np.ascontiguousarray(x), label, noise_for(meta, seed, range(n))
