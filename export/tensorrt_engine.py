"""ONNX -> TensorRT engine with the TensorRT (or TensorRT for RTX) Python API.

Three steps, like TensorRT's own samples: parse the network, set precision and
profile, build. The engine file starts with fexsdk's metadata header (see
:func:`fexsdk.metadata.pack_engine`), which records the GPU and TensorRT version
the engine was built for; the runtime refuses any other.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from fexsdk._trt import BatchProfile, current_gpu, import_tensorrt
from fexsdk.metadata import pack_engine, read_onnx_metadata

VERBOSITY = ("error", "warning", "info", "verbose")


@dataclass
class EngineOptions:
    precision: str = "fp16"
    profile: BatchProfile = field(default_factory=BatchProfile)
    #: Reused across builds: a second build of a similar network skips most kernel timing.
    timing_cache: Optional[str] = "timing.cache"
    verbosity: str = "warning"
    workspace_mib: int = 1024

    def validate(self) -> None:
        if self.precision not in ("fp16", "fp32"):
            raise ValueError(f"precision must be 'fp16' or 'fp32', got {self.precision!r}")
        if self.verbosity not in VERBOSITY:
            raise ValueError(f"verbosity must be one of {VERBOSITY}, got {self.verbosity!r}")


class EngineBuilder:
    """Builds an fexsdk engine file from an fexsdk ONNX file."""

    def __init__(self, options: EngineOptions) -> None:
        options.validate()
        self.options = options
        self.trt = import_tensorrt()
        self.gpu = current_gpu()
        severity = getattr(self.trt.Logger, options.verbosity.upper())
        self.logger = self.trt.Logger(severity)
        self.builder = self.trt.Builder(self.logger)
        self.config = self.builder.create_builder_config()
        self.config.set_memory_pool_limit(self.trt.MemoryPoolType.WORKSPACE, options.workspace_mib << 20)
        self.network = None
        self.meta = None

    def create_network(self, onnx_path: str | os.PathLike) -> None:
        """Step 1: parse the ONNX file and read its metadata."""
        self.meta = read_onnx_metadata(onnx_path)
        self.network = self.builder.create_network(0)
        parser = self.trt.OnnxParser(self.network, self.logger)
        if not parser.parse_from_file(str(onnx_path)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise ValueError(f"TensorRT could not parse {onnx_path}: {errors}")

    def configure(self) -> None:
        """Step 2: precision and the batch-size optimisation profile."""
        opts = self.options
        if opts.precision == "fp16":
            flag = getattr(self.trt.BuilderFlag, "FP16", None)
            if flag is not None and self.builder.platform_has_fast_fp16:
                self.config.set_flag(flag)
            elif self.meta.precision != "fp16":
                raise ValueError(
                    f"{self.trt.__name__} {self.trt.__version__} takes precision from the model: export an FP16 ONNX "
                    "(`fex export onnx CKPT --fp16`) for an FP16 engine, or pass --precision fp32")
        profile = self.builder.create_optimization_profile()
        for i in range(self.network.num_inputs):
            tensor = self.network.get_input(i)
            dims = tuple(tensor.shape)[1:]
            profile.set_shape(tensor.name, *opts.profile.shapes(dims))
        self.config.add_optimization_profile(profile)

    def build(self, output: str | os.PathLike) -> Path:
        """Step 3: build (reusing the timing cache), prepend the metadata header, write."""
        opts = self.options
        cache_path = Path(opts.timing_cache) if opts.timing_cache else None
        blob = cache_path.read_bytes() if cache_path and cache_path.exists() else b""
        cache = self.config.create_timing_cache(blob)
        self.config.set_timing_cache(cache, ignore_mismatch=False)
        serialized = self.builder.build_serialized_network(self.network, self.config)
        if serialized is None:
            raise RuntimeError("TensorRT failed to build the engine; rerun with --verbosity verbose for the builder log")
        if cache_path:
            cache_path.write_bytes(bytes(memoryview(self.config.get_timing_cache().serialize())))
        meta = self.meta
        meta.precision = opts.precision
        meta.engine = {
            "module": self.trt.__name__,
            "tensorrt_version": self.trt.__version__,
            "gpu": self.gpu.name,
            "compute_capability": self.gpu.compute_capability,
            "profile": [opts.profile.min, opts.profile.opt, opts.profile.max],
        }
        output = Path(output)
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_bytes(pack_engine(meta, bytes(memoryview(serialized))))
        return output


def build_engine(onnx_path: str | os.PathLike, output: str | os.PathLike, options: EngineOptions | None = None) -> Path:
    builder = EngineBuilder(options or EngineOptions())
    builder.create_network(onnx_path)
    builder.configure()
    return builder.build(output)
