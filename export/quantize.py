"""INT8 static quantization of an fexsdk ONNX generator for onnxruntime on the CPU.

    from fexsdk.export.quantize import quantize_onnx
    report = quantize_onnx("model.onnx", "model.int8.onnx", faces)   # faces: uint8 (N, 48, 48)
    Transfer("model.int8.onnx")                                        # loads like any fexsdk model

The weights of every Conv and ConvTranspose are quantized per output channel to
int8 and their activations to uint8 (onnxruntime's fast U8S8 path on x86), with
activation ranges calibrated (MinMax) on the crops given.

The weights use 7 bits of the int8 range (``reduce_range``, -64..64). On x86 CPUs
without VNNI (AVX2, and AVX-512 before Cascade Lake) onnxruntime's U8S8 kernels
add pairs of uint8 x int8 products in int16 with saturation (``vpmaddubsw``):
255 * 127 * 2 overflows int16 and the output goes wrong where activations are
large (max |int8 - fp32| 0.85 vs 0.12 on AVX-512 VNNI for the test model).
255 * 64 * 2 fits, so no CPU saturates and int8 output is the same on every x86
CPU; the cost is one bit of weight precision. The result is a QDQ
model: QuantizeLinear/DequantizeLinear pairs around the convolutions, which
onnxruntime fuses into integer kernels; everything else (InstanceNorm, the
activations, tanh) stays float32. The graph's inputs and outputs do not change,
so the runtime feeds it exactly like the float model.

The fexsdk metadata (``metadata_props['fexsdk']``) is carried over with
``precision`` set to ``"int8"``; how it was quantized is recorded under the
``fexsdk.quantization`` key.

Calibration runs the generator with its test-time dropout on, with the noise the
runtime gives crop i under the seed (:func:`fexsdk.noise.noise_for`), and with the target emotions cycled over the crops.
Needs the ``onnx`` package (the [train] extra) besides onnxruntime.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from fexsdk._extras import require
from fexsdk.metadata import ONNX_KEY, ModelMetadata, from_props
from fexsdk.noise import noise_for

__all__ = ["QUANT_KEY", "QuantizeReport", "quantize_onnx"]

#: metadata_props key holding how the model was quantized (JSON).
QUANT_KEY = "fexsdk.quantization"
#: The operators quantized by default: they hold nearly all of the generator's arithmetic.
DEFAULT_OP_TYPES = ("Conv", "ConvTranspose")


@dataclass
class QuantizeReport:
    path: Path
    metadata: ModelMetadata
    calibration_count: int
    quantized_nodes: int
    size_bytes: int


def _model_crops(crops, meta: ModelMetadata) -> np.ndarray:
    """uint8 (N, s, s) / (N, C, s, s) pixels, or float (N, C, s, s) in [-1, 1] -> float32 (N, C, s, s)."""
    arr = np.asarray(crops)
    if arr.ndim == 3 and meta.channels == 1:
        arr = arr[:, None]
    want = (meta.channels, meta.image_size, meta.image_size)
    if arr.ndim != 4 or tuple(arr.shape[1:]) != want:
        raise ValueError(f"calibration crops must have shape (N, {meta.image_size}, {meta.image_size}) or "
                         f"(N, {', '.join(map(str, want))}), got {arr.shape}")
    if len(arr) == 0:
        raise ValueError("quantization needs at least one calibration crop")
    if arr.dtype == np.uint8:
        return meta.to_model(arr)
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"calibration crops must be uint8 pixels or floats in [-1, 1], got {arr.dtype}")
    x = arr.astype(np.float32)
    if not np.isfinite(x).all() or x.min() < -1.0001 or x.max() > 1.0001:
        raise ValueError("float calibration crops must be finite and in the model's [-1, 1] range ({meta.normalization})")
    return x


def _read_meta(model) -> tuple[ModelMetadata, dict[str, str]]:
    props = {p.key: p.value for p in model.metadata_props}
    return from_props(props), props


def quantize_onnx(src: str | os.PathLike, dst: str | os.PathLike, calibration_crops, *, batch_size: int = 16,
                  seed: int = 0, per_channel: bool = True, reduce_range: bool = True, op_types: Sequence[str] = DEFAULT_OP_TYPES,
                  exclude: Optional[Sequence[str]] = None) -> QuantizeReport:
    """Write an int8 (QDQ) copy of the fexsdk model ``src`` to ``dst``, calibrated on ``calibration_crops``.

    Args:
        calibration_crops: faces framed like the model's inputs: uint8 (N, s, s) for gray models or
            (N, C, s, s), or float32 in [-1, 1]. A few hundred FER2013 faces are plenty.
        batch_size: crops per calibration run.
        seed: seeds the dropout noise drawn for calibration.
        per_channel: per-output-channel weight scales (more accurate, same speed).
        reduce_range: 7-bit weights, which never saturate onnxruntime's int16 accumulation on
            x86 CPUs without VNNI (see the module docstring). False gives 8-bit weights: a little more
            accurate on VNNI CPUs (AVX-512 VNNI, AVX-VNNI) and ARM, wrong by up to ~0.8 on AVX2-only ones.
        op_types: operator types to quantize.
        exclude: node names to keep in float32.
    """
    onnx = require("onnx", "train", "quantizing a model")
    ort_quant = require("onnxruntime.quantization", "train", "quantizing a model")
    from fexsdk.formats import ONNX_SUFFIXES
    from fexsdk.export.paths import check_output_file

    src = Path(src)
    if not src.is_file():
        raise FileNotFoundError(f"model file not found: {src}")
    dst = check_output_file(dst, [src], ONNX_SUFFIXES, "ONNX model", option="output")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    try:
        model = onnx.load(str(src))
    except Exception as exc:  # protobuf's DecodeError and friends: a cut or foreign file
        raise ValueError(f"{src} is not a readable ONNX model ({type(exc).__name__}: the file is truncated, "
                         "damaged or not ONNX); quantize the .onnx file `fex export onnx` wrote") from None
    meta, props = _read_meta(model)
    if meta.precision not in ("fp32", ""):
        raise ValueError(f"{src} is a {meta.precision} model; quantize the fp32 export")
    x = _model_crops(calibration_crops, meta)
    n = len(x)
    k = len(meta.emotions)
    labels = meta.label_for(np.eye(k, dtype=np.float32)[np.arange(n) % k])
    noise = noise_for(meta, seed, range(n))

    class _Reader(ort_quant.CalibrationDataReader):
        def __init__(self) -> None:
            self.start = 0

        def get_next(self):
            if self.start >= n:
                return None
            a, b = self.start, min(self.start + batch_size, n)
            self.start = b
            feeds = {"image": x[a:b], "label": labels[a:b]}
            if noise is not None:
                feeds["noise"] = noise[a:b]
            return feeds

        def rewind(self) -> None:
            self.start = 0

    dst.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fexsdk-quant-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        # Shape inference and graph clean-up, as onnxruntime recommends before static quantization.
        ort_quant.quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        out_tmp = Path(tmp) / "int8.onnx"
        ort_quant.quantize_static(
            str(pre), str(out_tmp), _Reader(),
            quant_format=ort_quant.QuantFormat.QDQ,
            activation_type=ort_quant.QuantType.QUInt8,
            weight_type=ort_quant.QuantType.QInt8,
            per_channel=per_channel,
            reduce_range=bool(reduce_range),
            op_types_to_quantize=list(op_types),
            nodes_to_exclude=list(exclude or []),
            calibrate_method=ort_quant.CalibrationMethod.MinMax,
        )
        qmodel = onnx.load(str(out_tmp))

    quantized = sum(1 for node in qmodel.graph.node if node.op_type == "QuantizeLinear")
    if quantized == 0:
        raise RuntimeError(f"onnxruntime quantized nothing in {src} (op types {list(op_types)})")
    qmeta = ModelMetadata.from_json(props[ONNX_KEY])
    qmeta.precision = "int8"
    info = {
        "format": "QDQ", "activations": "uint8", "weights": "int7 (reduce_range)" if reduce_range else "int8", "per_channel": bool(per_channel),
        "calibration": "MinMax", "calibration_count": n, "op_types": list(op_types),
        "excluded_nodes": list(exclude or []), "source": src.name,
    }
    # Keep every property of the source (its metadata first), replace fexsdk's, add the quantization record.
    keep = {p.key: p.value for p in qmodel.metadata_props}
    keep.update(props)
    keep[ONNX_KEY] = qmeta.to_json()
    keep[QUANT_KEY] = json.dumps(info, sort_keys=True)
    del qmodel.metadata_props[:]
    for key, value in keep.items():
        entry = qmodel.metadata_props.add()
        entry.key, entry.value = key, value
    qmodel.producer_name = "fexsdk"
    onnx.save(qmodel, str(dst))
    return QuantizeReport(dst, qmeta, n, quantized, dst.stat().st_size)
