"""Generator checkpoint -> ONNX with metadata, dynamic batch and a parity check.

Test-time dropout is an explicit ``noise`` input (see :mod:`fexsdk.noise`): random
ops inside the graph could not be seeded per call.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from fexsdk.metadata import ONNX_KEY, ModelMetadata, NoiseSite, read_onnx_metadata  # noqa: F401 (re-exported)
from fexsdk.noise import noise_for
from fexsdk.training.checkpoint import (generator_from_checkpoint, load_checkpoint, metadata_for,  # noqa: F401
                                        metadata_from_checkpoint)
from fexsdk.training.models import Generator

#: Opset 17: InstanceNormalization and everything else the generator uses, and accepted by TensorRT 10.
DEFAULT_OPSET = 17
FP32_TOLERANCE = 1e-4
FP16_TOLERANCE = 3e-2


@dataclass
class ExportReport:
    path: Path
    metadata: ModelMetadata
    max_abs_diff: float
    tolerance: float
    size_bytes: int


class _Graph(torch.nn.Module):
    """The exported signature: (image, label[, noise]) -> output, float32 at the edges.

    With ``fp16`` the weights and activations are half precision inside the graph;
    the runtime feeds the same float32 arrays either way.
    """

    def __init__(self, G: Generator, fp16: bool = False) -> None:
        super().__init__()
        self.G = G.half() if fp16 else G
        self.dtype = torch.float16 if fp16 else torch.float32

    def forward(self, image: torch.Tensor, label: torch.Tensor, noise: Optional[torch.Tensor] = None):
        if noise is not None:
            noise = noise.to(self.dtype)
        args = (image.to(self.dtype), label.to(self.dtype), noise)
        if self.G.config.output == "warp":  # image, flow, residual, mask
            p = self.G.forward_parts(*args)
            return p.image.float(), p.flow.float(), p.residual.float(), p.mask.float()
        return self.G(*args).float()


def sample_inputs(meta: ModelMetadata, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs for the graph: images in [-1, 1], one-hot labels, and the noise faces 0..batch-1 get
    with ``seed`` (:func:`fexsdk.noise.noise_for`, the runtime's policy)."""
    rng = np.random.default_rng(seed)
    feeds = {
        "image": rng.uniform(-1, 1, (batch, meta.channels, meta.image_size, meta.image_size)).astype(np.float32),
        "label": meta.label_for(np.eye(len(meta.emotions), dtype=np.float32)[rng.integers(0, len(meta.emotions), batch)]),
    }
    noise = noise_for(meta, seed, range(batch))
    if noise is not None:
        feeds["noise"] = noise
    return feeds


def export_onnx(checkpoint: str | os.PathLike, output: str | os.PathLike, opset: int = DEFAULT_OPSET,
                fp16: bool = False, check: bool = True) -> ExportReport:
    """Export a training checkpoint's generator; returns the file and the parity it reached."""
    import onnx

    from fexsdk.formats import ONNX_SUFFIXES
    from fexsdk.export.paths import check_output_file

    output = check_output_file(output, [checkpoint], ONNX_SUFFIXES, "ONNX model", option="output")
    ckpt = load_checkpoint(checkpoint)
    G = generator_from_checkpoint(ckpt).eval()
    reference = generator_from_checkpoint(ckpt).eval()  # stays float32 for the parity check
    meta = metadata_from_checkpoint(ckpt, "fp16" if fp16 else "fp32")
    output.parent.mkdir(parents=True, exist_ok=True)

    feeds = sample_inputs(meta, 2)
    names = list(feeds)
    args = tuple(torch.from_numpy(feeds[n]) for n in names)
    with warnings.catch_warnings():
        # InstanceNorm without running stats always uses the input's statistics, which is what we want.
        warnings.filterwarnings("ignore", message=".*instance_norm.*")
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        # The TorchScript-based exporter: it handles the dynamic batch and InstanceNorm of this
        # small convolutional graph directly; the dynamo exporter needs onnxscript and adds nothing here.
        torch.onnx.export(
            _Graph(G, fp16), args, str(output), dynamo=False, opset_version=opset, input_names=names,
            output_names=meta.outputs, dynamic_axes={n: {0: "batch"} for n in names + meta.outputs},
            do_constant_folding=True,
        )
    model = onnx.load(str(output))
    del model.metadata_props[:]
    entry = model.metadata_props.add()
    entry.key, entry.value = ONNX_KEY, meta.to_json()
    model.producer_name = "fexsdk"
    onnx.checker.check_model(model)
    onnx.save(model, str(output))

    diff, tol = float("nan"), FP16_TOLERANCE if fp16 else FP32_TOLERANCE
    if check:
        diff = parity(reference, output, batch=3)
        if not diff <= tol:
            raise RuntimeError(f"ONNX export of {checkpoint} differs from PyTorch by {diff:.2e} (allowed {tol:.0e})")
    return ExportReport(output, meta, diff, tol, output.stat().st_size)


def parity(G: Generator, onnx_path: str | os.PathLike, batch: int = 3, seed: int = 7) -> float:
    """Max |PyTorch - onnxruntime| on the same random inputs and noise."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    meta = read_onnx_metadata(onnx_path)
    feeds = sample_inputs(meta, batch, seed)
    with torch.no_grad():
        args = [torch.from_numpy(feeds[k]) for k in feeds]
        if G.config.output == "warp":
            p = G.eval().forward_parts(*args)
            refs = [p.image, p.flow, p.residual, p.mask]
        else:
            refs = [G.eval()(*args)]
    outs = sess.run(meta.outputs, feeds)
    return float(max(np.abs(o - r.numpy()).max() for o, r in zip(outs, refs)))
