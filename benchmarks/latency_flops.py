"""Multiply-adds per face of a generator, from its ONNX graph or its PyTorch modules.

Part of ``benchmarks/latency.py`` (see its docstring for what is timed and how).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _prod(xs) -> int:
    n = 1
    for x in xs:
        n *= int(x)
    return n


def conv_macs_onnx(path: Path) -> dict[str, Any]:
    """Multiply-adds per face of every Conv/ConvTranspose, from ONNX shape inference."""
    import onnx

    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)), data_prop=True)
    g = model.graph
    shapes: dict[str, list] = {}
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]
    for init in g.initializer:
        shapes[init.name] = list(init.dims)
    for node in g.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    shapes[node.output[0]] = list(a.t.dims)
    total, layers, unknown = 0, [], []
    for node in g.node:
        if node.op_type not in ("Conv", "ConvTranspose"):
            continue
        w = shapes.get(node.input[1])
        # Conv: every output element takes C_in/groups * k * k MACs; ConvTranspose: every input
        # element is spread over C_out/groups * k * k outputs. Weight dims [1:] are those factors.
        act = shapes.get(node.output[0] if node.op_type == "Conv" else node.input[0])
        if not w or not act or any(v in (None, 0) for v in act[1:]) or any(v in (None, 0) for v in w[1:]):
            unknown.append(node.name or node.op_type)
            continue
        macs = _prod(act[1:]) * _prod(w[1:])
        total += macs
        layers.append({"name": node.name, "op": node.op_type, "macs": macs})
    return {"source": "onnx shape inference", "macs": total, "flops": 2 * total, "layers": len(layers),
            "unknown_layers": unknown, "per_layer": layers}


def conv_macs_torch(ckpt: Path) -> dict[str, Any]:
    """The same count from the PyTorch model with forward hooks (when onnx is not installed)."""
    import torch

    from fexsdk.export.onnx_export import metadata_for, sample_inputs
    from fexsdk.training.checkpoint import generator_from_checkpoint, load_checkpoint

    data = load_checkpoint(ckpt)
    G = generator_from_checkpoint(data).eval()
    meta = metadata_for(G, data)
    layers = []

    def hook(mod, inp, out):
        k = _prod(mod.kernel_size)
        if isinstance(mod, torch.nn.ConvTranspose2d):
            macs = inp[0][0].numel() * mod.out_channels // mod.groups * k
        else:
            macs = out[0].numel() * mod.in_channels // mod.groups * k
        layers.append({"name": type(mod).__name__, "op": type(mod).__name__, "macs": int(macs)})

    handles = [m.register_forward_hook(hook) for m in G.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    with torch.no_grad():
        G(*(torch.from_numpy(v) for v in sample_inputs(meta, 1).values()))
    for h in handles:
        h.remove()
    total = sum(layer["macs"] for layer in layers)
    return {"source": "torch forward hooks", "macs": total, "flops": 2 * total, "layers": len(layers),
            "unknown_layers": [], "per_layer": layers}


# ---------------------------------------------------------------------------- backends
