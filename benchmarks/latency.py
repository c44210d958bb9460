"""Generator latency per backend and batch size, and the whole frame pipeline stage by stage.

    python benchmarks/latency.py                                   # the bundled model
    python benchmarks/latency.py --preset skip-dropout             # an untrained paper-size generator
    python benchmarks/latency.py --model model.onnx --checkpoint last.pt \\
        --data ../shared/data/fer2013.npz --json latency.json

Backends, each timed where it is available and otherwise listed as skipped with the reason:

    torch-cpu         PyTorch eager on the CPU (needs torch and a checkpoint)
    torch-cuda        PyTorch eager on the GPU
    torch-cuda-graph  the same model replayed as one CUDA graph per batch size
    ort-cpu           onnxruntime, CPU, float32
    ort-cpu-int8      onnxruntime, CPU, int8 QDQ model from fexsdk.quantize (static, calibrated)
    ort-cuda          onnxruntime with the CUDAExecutionProvider
    trt-fp32/-fp16    TensorRT engines built here from the ONNX model

Every timing is of the backend's ``run(image, label, noise)`` on float32 numpy arrays, as
``fexsdk.Transfer`` calls it (so GPU rows include the host<->device copies). Latency is the
median (p50) and 95th percentile over the timed calls after a warm-up; faces/s = batch / p50.
"vs torch" is the speed-up over PyTorch eager on the same device in the same run.

FLOPs per face count the multiply-adds of every Conv and ConvTranspose (2 FLOPs each) from the
ONNX graph's inferred shapes; with the device's peak FLOP/s (estimated, or --peak-gflops /
--gpu-peak-gflops) they bound the faces/s any backend could reach. "%peak" compares a row's
achieved rate with the peak of its precision (int8 rows: the CPU's integer dot-product peak).

The pipeline part times one video frame through fexsdk's stages: JPEG decode (cv2.imdecode),
face detection, cropping, the generator (Transfer.run_model) and paste-back, at 640x480 and
1280x720 with 1 and 4 faces. With --data the faces are FER2013 PublicTest faces upscaled onto a
textured background; without it they are synthetic face-like blobs, the detector is still run
and timed but its result is not used (the true boxes are passed on, as ``faces=`` would).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if (REPO / "fexsdk").is_dir() and str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # run from a checkout: use its code

import cv2  # noqa: E402
import onnxruntime as ort  # noqa: E402

from fexsdk import __version__ as FEXSDK_VERSION  # noqa: E402
from fexsdk.backends import OnnxBackend  # noqa: E402
from fexsdk.crops import crop_box_for, extract_crops  # noqa: E402
from fexsdk.faces import Face, make_detector  # noqa: E402
from fexsdk.metadata import ONNX_KEY, ModelMetadata  # noqa: E402
from fexsdk.noise import draw_noise  # noqa: E402
from fexsdk.paste import paste_back  # noqa: E402
from fexsdk.transfer import DEFAULT_MODEL, Transfer  # noqa: E402

ALL_BACKENDS = ("torch-cpu", "torch-cuda", "torch-cuda-graph", "ort-cpu", "ort-cpu-int8", "ort-cuda", "trt-fp32", "trt-fp16")
CPU_BATCHES = (1, 4, 16, 64)
GPU_BATCHES = (1, 4, 16, 64, 256)
FRAME_SIZES = ((640, 480), (1280, 720))
FACE_COUNTS = (1, 4)
PIPELINE_TARGETS = ("happy", "surprise", "sad", "angry")
TRAIN_HINT = "pip install 'fexsdk[train]'"

#: Dense peak GFLOP/s (FP32, FP16 tensor cores) of common GPUs, from their data sheets.
GPU_PEAKS = (
    ("H200", 67_000, 989_000), ("H100 PCIe", 51_000, 756_000), ("H100", 67_000, 989_000),
    ("A100", 19_500, 312_000), ("L40S", 91_600, 362_000), ("L4", 30_300, 121_000), ("A10", 31_200, 125_000),
    ("T4", 8_100, 65_000), ("V100", 15_700, 125_000), ("RTX 4090", 82_600, 165_000), ("RTX 3090", 35_600, 71_000),
)


# ---------------------------------------------------------------------------- machine
def _cpuinfo() -> list[dict[str, str]]:
    blocks, cur = [], {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    if cur:
                        blocks.append(cur)
                    cur = {}
                elif ":" in line:
                    k, v = line.split(":", 1)
                    cur[k.strip()] = v.strip()
        if cur:
            blocks.append(cur)
    except OSError:
        pass
    return blocks


def usable_cpus() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:
        return list(range(os.cpu_count() or 1))


def cpu_facts() -> dict[str, Any]:
    info = _cpuinfo()
    usable = usable_cpus()
    name = next((b["model name"] for b in info if "model name" in b), None) or platform.processor() or platform.machine()
    cores = {(b.get("physical id"), b.get("core id")) for b in info
             if b.get("processor", "").isdigit() and int(b["processor"]) in usable and "core id" in b}
    flags = set(next((b.get("flags", b.get("Features", "")) for b in info), "").split())
    mhz = None
    try:
        mhz = int(Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").read_text()) / 1000
    except (OSError, ValueError):
        vals = [float(b["cpu MHz"]) for b in info if "cpu MHz" in b]
        mhz = max(vals) if vals else None
    if "avx512f" in flags:
        per_cycle, isa = 64, "AVX-512, 2 FMA units"
    elif "avx2" in flags and "fma" in flags:
        per_cycle, isa = 32, "AVX2+FMA, 2 FMA units"
    elif "asimd" in flags or platform.machine() in ("arm64", "aarch64"):
        per_cycle, isa = 16, "NEON, 2 FMA units"
    elif "avx" in flags:
        per_cycle, isa = 16, "AVX"
    else:
        per_cycle, isa = 8, "SSE"
    return {
        "name": name, "logical_cpus": os.cpu_count(), "usable_cpus": len(usable),
        "physical_cores": len(cores) or len(usable), "mhz": mhz, "flops_per_cycle_per_core": per_cycle, "isa": isa,
        "vnni": bool({"avx512_vnni", "avx_vnni"} & flags),
    }


def cpu_peak_gflops(cpu: dict[str, Any], threads: Optional[int]) -> tuple[float, str]:
    cores = min(threads or cpu["physical_cores"], cpu["physical_cores"])
    mhz = cpu["mhz"] or 2500.0
    peak = cores * mhz / 1000 * cpu["flops_per_cycle_per_core"]
    how = (f"estimated: {cores} core(s) x {mhz / 1000:.2f} GHz{'' if cpu['mhz'] else ' (assumed)'} x "
           f"{cpu['flops_per_cycle_per_core']} FP32 FLOP/cycle ({cpu['isa']})")
    return peak, how


def gpu_name() -> tuple[Optional[str], str]:
    """The first GPU's name and where it came from; (None, why) when there is none."""
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0), "torch"
    except ImportError:
        pass
    try:
        from fexsdk._trt import current_gpu

        return current_gpu().name, "cuda-python"
    except Exception:  # noqa: BLE001 - no cuda-python, no driver or no GPU: try the next way
        pass
    exe = shutil.which("nvidia-smi")
    if exe:
        try:
            out = subprocess.run([exe, "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
            if out.returncode == 0 and out.stdout.strip():
                return out.stdout.strip().splitlines()[0], "nvidia-smi"
        except (OSError, subprocess.SubprocessError):
            pass
    return None, "no GPU found (torch, cuda-python, nvidia-smi)"


def gpu_peaks(name: Optional[str], override: Optional[float]) -> dict[str, Optional[float]]:
    if override:
        return {"fp32": override, "fp16": override, "source": "--gpu-peak-gflops"}
    for key, fp32, fp16 in GPU_PEAKS:
        if name and key.lower() in name.lower():
            return {"fp32": float(fp32), "fp16": float(fp16), "source": f"data sheet ({key}, dense)"}
    return {"fp32": None, "fp16": None, "source": "unknown GPU: pass --gpu-peak-gflops"}


def versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "fexsdk": FEXSDK_VERSION, "numpy": np.__version__,
           "opencv": cv2.__version__, "onnxruntime": ort.__version__}
    for mod in ("torch", "onnx"):
        try:
            out[mod] = __import__(mod).__version__
        except ImportError:
            pass
    return out


# ---------------------------------------------------------------------------- data
def load_faces(path: Optional[str]) -> tuple[Optional[np.ndarray], Optional[np.ndarray]]:
    """(training faces, test faces), uint8 (N, 48, 48), from a FER2013 .npz; (None, None) without one."""
    if not path:
        return None, None
    with np.load(path) as d:
        images = d["images"]
        usage = d["usage"] if "usage" in d.files else np.zeros(len(images), np.uint8)
    train, test = images[usage == 0], images[usage == 1]
    if len(test) == 0:  # no PublicTest split: hold out the tail
        train, test = images[: len(images) * 9 // 10], images[len(images) * 9 // 10 :]
    return train, test


def synthetic_faces(n: int, size: int = 48, seed: int = 0) -> np.ndarray:
    """Face-like gray blobs (uint8 (n, size, size)): a lit oval with eyes, brows, nose and mouth."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, size, size), np.uint8)
    s = size / 48.0
    for i in range(n):
        bg = rng.integers(30, 110, (size, size)).astype(np.uint8)
        img = cv2.GaussianBlur(bg, (0, 0), 4 * s)
        cx, cy = size / 2 + rng.normal(0, 1.5) * s, size / 2 + 2 * s + rng.normal(0, 1.5) * s
        c = lambda dx, dy: (int(round(cx + dx * s)), int(round(cy + dy * s)))  # noqa: E731
        skin = int(rng.integers(140, 210))
        cv2.ellipse(img, c(0, 0), (int(16 * s), int(21 * s)), 0, 0, 360, skin, -1)
        for side in (-1, 1):
            cv2.ellipse(img, c(side * 7, -6), (int(3.5 * s), int(2 * s)), 0, 0, 360, skin - 90, -1)
            cv2.line(img, c(side * 10, -10), c(side * 4, -11), skin - 60, max(1, int(1.5 * s)))
        cv2.line(img, c(0, -3), c(0, 4), skin - 35, max(1, int(s)))
        mouth = int(rng.integers(4, 9))
        cv2.ellipse(img, c(0, 11), (mouth, int(rng.integers(1, 4) * s)), 0, 0, 360, skin - 80, -1)
        img = cv2.GaussianBlur(img, (0, 0), 0.8 * s)
        noisy = img.astype(np.int16) + rng.normal(0, 4, img.shape).astype(np.int16)
        out[i] = np.clip(noisy, 0, 255).astype(np.uint8)
    return out


def scene(faces: np.ndarray, frame: tuple[int, int], seed: int = 0) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    """Faces (N, 48, 48) upscaled side by side onto a blurred-noise BGR frame of (width, height)."""
    w, h = frame
    rng = np.random.default_rng(seed)
    img = cv2.GaussianBlur(rng.integers(60, 200, (h, w, 3), dtype=np.uint8), (0, 0), 3)
    n = len(faces)
    step = w // n
    size = min(h // 3, step - 10)
    boxes = []
    for i, face in enumerate(faces):
        x, y = i * step + (step - size) // 2, (h - size) // 2
        img[y : y + size, x : x + size] = cv2.resize(face, (size, size), interpolation=cv2.INTER_CUBIC)[..., None]
        boxes.append((x, y, size, size))
    return img, boxes


# ---------------------------------------------------------------------------- models
@dataclass
class Models:
    onnx: Optional[Path]
    checkpoint: Optional[Path]
    source: str
    notes: list[str] = field(default_factory=list)


def export_checkpoint(ckpt: Path, out: Path) -> Path:
    from export.onnx_export import export_onnx

    return export_onnx(ckpt, out).path


def preset_checkpoint(name: str, tmp: Path, seed: int = 0) -> Path:
    """An untrained generator of preset ``name`` (seeded weights) saved as a training checkpoint."""
    import torch

    from fexsdk.emotions import EMOTIONS
    from training.checkpoint import save_checkpoint
    from training.models import Generator
    from training.presets import get_preset

    preset = get_preset(name)
    torch.manual_seed(seed)
    G = Generator(**asdict(preset.generator))
    path = tmp / f"{name}.pt"
    save_checkpoint(path, {"generator_config": asdict(G.config), "G": G.state_dict(), "preset": name,
                           "domains": ["fer2013"], "emotions": list(EMOTIONS), "step": 0, "commit": "untrained"})
    return path


def resolve_models(args, tmp: Path) -> Models:
    if args.preset:
        try:
            ckpt = preset_checkpoint(args.preset, tmp)
        except ImportError as exc:
            raise SystemExit(f"--preset builds the generator with PyTorch: {TRAIN_HINT} ({exc})") from None
        return Models(export_checkpoint(ckpt, tmp / f"{args.preset}.onnx"), ckpt, f"preset {args.preset} (untrained)")
    model = Path(args.model) if args.model else None
    ckpt = Path(args.checkpoint) if args.checkpoint else None
    for p in (model, ckpt):
        if p is not None and not p.is_file():
            raise SystemExit(f"file not found: {p}")
    if model is not None and model.suffix.lower() in (".pt", ".pth", ".ckpt"):
        ckpt, model = model, None
    if model is None and ckpt is not None:
        try:
            onnx_path = export_checkpoint(ckpt, tmp / (ckpt.stem + ".onnx"))
            return Models(onnx_path, ckpt, f"checkpoint {ckpt} (exported to ONNX here)")
        except ImportError as exc:
            return Models(None, ckpt, f"checkpoint {ckpt}", [f"cannot export it to ONNX: {exc}"])
    if model is None:
        if not DEFAULT_MODEL.is_file():
            raise SystemExit(f"no --model, --checkpoint or --preset given and the bundled model is missing ({DEFAULT_MODEL})")
        model = DEFAULT_MODEL
    if model.suffix.lower() != ".onnx":
        raise SystemExit(f"--model takes an .onnx file or a training checkpoint (.pt), got {model}")
    return Models(model, ckpt, str(model))


def onnx_metadata(path: Path) -> ModelMetadata:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    props = sess.get_modelmeta().custom_metadata_map
    if ONNX_KEY not in props:
        raise SystemExit(f"{path} has no fexsdk metadata; export it with `fex export onnx`")
    return ModelMetadata.from_json(props[ONNX_KEY])


# ---------------------------------------------------------------------------- FLOPs
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

    from export.onnx_export import metadata_for, sample_inputs
    from training.checkpoint import generator_from_checkpoint, load_checkpoint

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
        from fexsdk.backends import _feeds

        arrays = list(_feeds(self.meta, image, label, noise).values())
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
    from fexsdk.backends import TorchBackend

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
            from fexsdk.quantize import quantize_onnx
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
        from export.tensorrt_engine import EngineOptions, build_engine
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


# ---------------------------------------------------------------------------- timing
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
    x = faces[idx][:, None].astype(np.float32) / 127.5 - 1.0
    if meta.channels != 1:
        x = np.repeat(x, meta.channels, axis=1)
    k = len(meta.emotions)
    label = meta.label_for(np.eye(k, dtype=np.float32)[np.arange(n) % k])
    return np.ascontiguousarray(x), label, draw_noise(meta, n, seed=seed)


# ---------------------------------------------------------------------------- pipeline
def pipeline_frames(test_faces: Optional[np.ndarray]) -> list[dict[str, Any]]:
    out = []
    for size in FRAME_SIZES:
        for n in FACE_COUNTS:
            faces = test_faces[:n] if test_faces is not None else synthetic_faces(n, seed=100 + n)
            img, boxes = scene(faces, size, seed=n)
            ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])
            if not ok:
                raise RuntimeError("cv2.imencode failed")
            out.append({"size": size, "faces": n, "jpeg": buf, "truth": boxes})
    return out


def time_pipeline(tr: Transfer, frame: dict[str, Any], use_detector: bool, args) -> dict[str, Any]:
    """One frame through decode -> detect -> crop -> generate -> paste, each stage timed."""
    det = tr.detector
    m = tr.meta
    n = frame["faces"]
    truth = [Face(tuple(float(v) for v in b), 1.0) for b in frame["truth"]]
    targets = list(PIPELINE_TARGETS[i % len(PIPELINE_TARGETS)] for i in range(n))
    found_counts: list[int] = []
    stages = {k: [] for k in ("decode", "detect", "crop", "generate", "paste")}
    totals: list[float] = []

    def once() -> None:
        t0 = time.perf_counter()
        img = cv2.imdecode(frame["jpeg"], cv2.IMREAD_COLOR)
        t1 = time.perf_counter()
        found = det.detect(img)
        t2 = time.perf_counter()
        found_counts.append(len(found))
        faces = found if (use_detector and len(found) == n) else truth
        boxes = [crop_box_for(f, det) for f in faces]
        x = extract_crops(img, boxes, m.image_size, m.channels).astype(np.float32) / 127.5 - 1.0
        t3 = time.perf_counter()
        y = tr.run_model(x, targets, seed=[i for i in range(len(boxes))])
        t4 = time.perf_counter()
        paste_back(img, boxes, x, y, blend=tr.blend)
        t5 = time.perf_counter()
        for k, a, b in (("decode", t0, t1), ("detect", t1, t2), ("crop", t2, t3), ("generate", t3, t4), ("paste", t4, t5)):
            stages[k].append(b - a)
        totals.append(t5 - t0)

    time_calls(once, args.warmup, args.pipeline_iters, min(args.min_iters, args.pipeline_iters), args.max_seconds)
    k = args.warmup  # drop the warm-up calls
    for v in stages.values():
        del v[:k]
    del totals[:k]
    found = found_counts[k:]
    total = stats_ms(totals)
    w, h = frame["size"]
    if not use_detector:
        note = "synthetic faces: detector timed, true boxes used"
    elif found and min(found) == max(found) == n:
        note = f"detected {n}/{n}"
    else:
        note = f"detected {min(found)}-{max(found)} of {n}: true boxes used when the count differs"
    return {"frame": f"{w}x{h}", "width": w, "height": h, "faces": n, "fps": 1000.0 / total["p50_ms"],
            "total": total, "stages_ms": {s: float(np.median(v) * 1000) for s, v in stages.items()},
            "stages_mean_ms": {s: float(np.mean(v) * 1000) for s, v in stages.items()}, "note": note}


# ---------------------------------------------------------------------------- output
def fmt(v: Optional[float], spec: str = ".2f", none: str = "-") -> str:
    return none if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec)


def print_report(res: dict[str, Any]) -> None:
    mach, model, fl = res["machine"], res["model"], res["flops"]
    gpu = mach["gpu"] or "none"
    print(f"# fexsdk latency: {model['source']}")
    print(f"#   preset {model['preset'] or '?'}, {model['image_size']}x{model['image_size']}x{model['channels']}, "
          f"noise {model['noise_size']}, {model['precision']}")
    print(f"# machine: {mach['cpu']['name']}, {mach['cpu']['usable_cpus']} usable CPU(s) "
          f"({mach['cpu']['physical_cores']} core(s)), load avg {fmt(mach.get('loadavg_1min'))}; GPU: {gpu}")
    print(f"# threads: onnxruntime intra-op {res['options']['threads'] or 'default'}, torch {mach.get('torch_threads', '-')}")
    if mach.get("busy_warning"):
        print(f"# WARNING: {mach['busy_warning']}")
    if fl.get("flops"):
        print(f"# generator: {fl['flops'] / 1e9:.3f} GFLOP per face ({fl['macs'] / 1e6:.0f} M multiply-adds in "
              f"{fl['layers']} Conv/ConvTranspose, {fl['source']})")
    else:
        print(f"# generator FLOPs: unknown ({fl.get('error', '')})")
    for dev, p in res["peaks"].items():
        bound = f" -> at most {p['bound_faces_per_s']:,.0f} faces/s" if p.get("bound_faces_per_s") else ""
        print(f"# peak {dev}: {fmt(p['gflops'], ',.0f')} GFLOP/s ({p['source']}){bound}")
    print()
    hdr = f"{'backend':18s} {'dev':4s} {'prec':5s} {'batch':>5s} {'p50 ms':>9s} {'p95 ms':>9s} {'ms/face':>8s} " \
          f"{'faces/s':>9s} {'GFLOP/s':>8s} {'%peak':>6s} {'vs torch':>8s}"
    print(hdr)
    print("-" * len(hdr))
    last = None
    for r in res["rows"]:
        if last and last != r["backend"]:
            print()
        last = r["backend"]
        pct = None if r["peak_fraction"] is None else 100 * r["peak_fraction"]
        vs = fmt(r["speedup_vs_torch_eager"], ".2f") + "x" if r["speedup_vs_torch_eager"] else "-"
        print(f"{r['backend']:18s} {r['device']:4s} {r['precision']:5s} {r['batch']:5d} {r['p50_ms']:9.2f} {r['p95_ms']:9.2f} "
              f"{r['ms_per_face']:8.3f} {r['faces_per_s']:9.1f} {fmt(r['gflops_per_s'], '.1f'):>8s} {fmt(pct, '.1f'):>6s} {vs:>8s}")
    print()
    for b in res["backends"]:
        if b.get("notes"):
            print(f"# {b['key']}: {b['name']}; " + "; ".join(b["notes"]))
    if res["skipped"]:
        print("skipped:")
        for s in res["skipped"]:
            print(f"  {s['backend']:18s} {s['reason']}")
    if res["parity"]:
        print()
        print(f"parity vs {res['parity_reference']} on {res['parity_inputs']} (model units, [-1, 1]; x127.5 = pixel levels):")
        for key, p in res["parity"].items():
            print(f"  {key:18s} max |diff| {p['max_abs']:.2e} ({p['max_abs'] * 127.5:.2f} px)   "
                  f"mean {p['mean_abs']:.2e} ({p['mean_abs'] * 127.5:.3f} px)")
    q = res.get("quantization")
    if q and q.get("path"):
        print(f"int8 model: {q['size_bytes'] / 1e6:.2f} MB (fp32 {q['fp32_size_bytes'] / 1e6:.2f} MB), "
              f"{q['calibration_count']} {q['calibration']}, quantized in {q['seconds']:.1f} s")
    for pipe in res["pipeline"]:
        print()
        print(f"pipeline on {pipe['backend']} ({pipe['backend_name']}), detector {pipe['detector']}; "
              f"{pipe['frames']}; stage medians in ms:")
        hdr = f"{'frame':10s} {'faces':>5s} {'FPS':>7s} {'p50 ms':>8s} {'p95 ms':>8s} " + \
              " ".join(f"{s:>8s}" for s in ("decode", "detect", "crop", "generate", "paste")) + "  note"
        print(hdr)
        print("-" * len(hdr))
        for r in pipe["rows"]:
            st = r["stages_ms"]
            print(f"{r['frame']:10s} {r['faces']:5d} {r['fps']:7.1f} {r['total']['p50_ms']:8.2f} {r['total']['p95_ms']:8.2f} "
                  + " ".join(f"{st[s]:8.2f}" for s in ("decode", "detect", "crop", "generate", "paste")) + f"  {r['note']}")
    for s in res.get("pipeline_skipped", []):
        print(f"pipeline skipped on {s['backend']}: {s['reason']}")


# ---------------------------------------------------------------------------- main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_argument_group("model")
    src.add_argument("--model", help=".onnx from `fex export onnx`, or a training checkpoint .pt (default: the bundled model)")
    src.add_argument("--checkpoint", help="training checkpoint for the PyTorch rows (the same model as --model)")
    src.add_argument("--preset", help="benchmark an untrained generator of this preset instead (e.g. skip-dropout)")
    p.add_argument("--backends", nargs="+", default=list(ALL_BACKENDS), choices=ALL_BACKENDS, metavar="NAME",
                   help=f"backends to time (default: all of {', '.join(ALL_BACKENDS)})")
    p.add_argument("--batch-sizes", nargs="+", type=int, help="batch sizes (default: 1 4 16 64 on the CPU, also 256 on a GPU)")
    p.add_argument("--iters", type=int, default=50, help="timed calls per batch size at most (default 50)")
    p.add_argument("--min-iters", type=int, default=5, help="timed calls at least, even past --max-seconds (default 5)")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls first (default 3)")
    p.add_argument("--max-seconds", type=float, default=5.0, help="stop timing a cell after this long, once --min-iters are done")
    p.add_argument("--threads", type=int, help="onnxruntime intra-op threads and torch.set_num_threads (default: their own)")
    p.add_argument("--data", help="FER2013 .npz: faces for calibration, inputs and the pipeline frames (default: synthetic)")
    p.add_argument("--calib-count", type=int, default=128, help="faces to calibrate the int8 model on (default 128)")
    p.add_argument("--parity-count", type=int, default=32, help="faces to compare backends' outputs on (default 32)")
    p.add_argument("--peak-gflops", type=float, help="the CPU's peak FP32 GFLOP/s (default: estimated)")
    p.add_argument("--gpu-peak-gflops", type=float, help="the GPU's peak GFLOP/s (default: a data-sheet table)")
    p.add_argument("--no-pipeline", action="store_true", help="time the generator only")
    p.add_argument("--pipeline-backends", nargs="+", metavar="NAME", choices=ALL_BACKENDS,
                   help="backends to run the frame pipeline on (default: ort-cpu, ort-cpu-int8 and the fastest GPU one)")
    p.add_argument("--pipeline-iters", type=int, default=30, help="timed frames per configuration at most (default 30)")
    p.add_argument("--detector", help="face detector for the pipeline: 'haar' (default) or a YuNet .onnx / SSD .pb path")
    p.add_argument("--keep-models", metavar="DIR", help="keep the models made here (exported, int8, engines) in DIR")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    for name in ("iters", "min_iters", "pipeline_iters", "calib_count", "parity_count"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.warmup < 0 or args.max_seconds < 0:
        p.error("--warmup and --max-seconds must be >= 0")
    if args.threads is not None and args.threads < 1:
        p.error("--threads must be >= 1")
    if args.batch_sizes and min(args.batch_sizes) < 1:
        p.error("--batch-sizes must be >= 1")
    if args.preset and (args.model or args.checkpoint):
        p.error("--preset makes its own model; leave out --model and --checkpoint")
    return args


def main(argv=None) -> dict[str, Any]:
    args = parse_args(argv)
    torch_threads = None
    try:
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        torch_threads = torch.get_num_threads()
    except ImportError:
        pass

    gname, gsource = gpu_name()
    args.cpu_batches = list(args.batch_sizes or CPU_BATCHES)
    args.gpu_batches = list(args.batch_sizes or GPU_BATCHES)
    cpu = cpu_facts()
    try:
        load1 = os.getloadavg()[0]
    except (AttributeError, OSError):
        load1 = None
    machine = {"cpu": cpu, "platform": platform.platform(), "gpu": gname, "gpu_source": gsource,
               "loadavg_1min": load1, "torch_threads": torch_threads, "versions": versions(), "busy_warning": None}
    if load1 is not None and load1 >= 0.5 * cpu["usable_cpus"] and (args.threads or 2) > 1:
        machine["busy_warning"] = (
            f"load average {load1:.1f} on {cpu['usable_cpus']} CPU(s) before starting: other processes use the cores, and "
            "multi-threaded runtimes (PyTorch's OpenMP pool most of all) can slow down many-fold when their threads are "
            "preempted. Figures are pessimistic; compare with --threads 1 or measure on an idle machine.")
        print(f"warning: {machine['busy_warning']}", file=sys.stderr)

    tmp_ctx = tempfile.TemporaryDirectory(prefix="fexsdk-latency-")
    tmp = Path(tmp_ctx.name)
    try:
        res = run(args, machine, tmp)
        if args.keep_models:
            keep = Path(args.keep_models)
            keep.mkdir(parents=True, exist_ok=True)
            for f in tmp.iterdir():
                if f.suffix in (".onnx", ".engine", ".pt"):
                    shutil.copy2(f, keep / f.name)
            res["kept_models"] = sorted(str(keep / f.name) for f in tmp.iterdir() if f.suffix in (".onnx", ".engine", ".pt"))
            if res["quantization"].get("path"):
                res["quantization"]["path"] = str(keep / Path(res["quantization"]["path"]).name)
        elif res["quantization"].get("path"):
            res["quantization"]["path"] = None  # it was in a temp dir; --keep-models DIR keeps it
    finally:
        tmp_ctx.cleanup()
    print_report(res)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(res, indent=2, default=str))
        print(f"\nwrote {args.json}")
    return res


def run(args, machine: dict[str, Any], tmp: Path) -> dict[str, Any]:
    models = resolve_models(args, tmp)
    meta = onnx_metadata(models.onnx) if models.onnx else None
    if meta is None:
        from export.onnx_export import metadata_for
        from training.checkpoint import generator_from_checkpoint, load_checkpoint

        data = load_checkpoint(models.checkpoint)
        meta = metadata_for(generator_from_checkpoint(data), data)

    train_faces, test_faces = load_faces(args.data)
    if meta.channels != 1 or meta.image_size != 48:
        train_faces = test_faces = None  # the FER2013 faces do not fit; synthesize at the model's size
    size = meta.image_size
    if train_faces is not None:
        rng = np.random.default_rng(0)
        calib = train_faces[rng.choice(len(train_faces), min(args.calib_count, len(train_faces)), replace=False)]
        calib_desc = f"FER2013 Training faces from {Path(args.data).name}"
        inputs = test_faces
        inputs_desc = "FER2013 PublicTest faces"
    else:
        calib = synthetic_faces(args.calib_count, size, seed=1)
        calib_desc = "synthetic face-like crops (no --data)"
        inputs = synthetic_faces(max(args.parity_count, 64), size, seed=2)
        inputs_desc = "synthetic face-like crops"
    if meta.channels != 1:
        calib = np.repeat(calib[:, None], meta.channels, axis=1)

    # FLOPs per face
    flops: dict[str, Any] = {}
    try:
        if models.onnx is None:
            raise ImportError("no ONNX model")
        flops = conv_macs_onnx(models.onnx)
    except ImportError as exc:
        try:
            if models.checkpoint is None:
                raise
            flops = conv_macs_torch(models.checkpoint)
        except ImportError:
            flops = {"flops": None, "error": f"needs the onnx package or torch with a checkpoint ({exc})"}
    per_face = flops.get("flops")

    # backends
    gpu_present = machine["gpu"] is not None
    built: dict[str, Built] = {}
    skipped: list[dict[str, str]] = []
    quant: dict[str, Any] = {}
    max_gpu_batch = max(args.gpu_batches)
    for key in args.backends:
        try:
            b = build_backend(key, models, args, tmp, calib, calib_desc, max_gpu_batch, quant)
            built[key] = b
        except Skip as exc:
            skipped.append({"backend": key, "reason": str(exc)})
        except Exception as exc:  # noqa: BLE001 - a backend that fails to build is reported, not fatal
            skipped.append({"backend": key, "reason": f"failed: {type(exc).__name__}: {exc}"})
    if not built:
        raise SystemExit("no backend could run here:\n" + "\n".join(f"  {s['backend']}: {s['reason']}" for s in skipped))

    # peaks
    cpu_peak, cpu_how = (args.peak_gflops, "--peak-gflops") if args.peak_gflops else cpu_peak_gflops(machine["cpu"], args.threads)
    peaks = {"cpu": {"gflops": cpu_peak, "source": cpu_how}}
    if "ort-cpu-int8" in built:
        # Integer dot products: VNNI does 4 int8 multiply-adds per 32-bit lane per instruction (4x FP32);
        # without it (pmaddubsw + pmaddwd) about 2x.
        gain = 4 if machine["cpu"]["vnni"] else 2
        peaks["cpu int8"] = {"gflops": cpu_peak * gain,
                             "source": f"{gain}x the FP32 peak ({'VNNI' if gain == 4 else 'no VNNI'}), int8 ops/s"}
    if gpu_present:
        gp = gpu_peaks(machine["gpu"], args.gpu_peak_gflops)
        peaks["gpu fp32"] = {"gflops": gp["fp32"], "source": gp["source"]}
        if any(b.precision == "fp16" for b in built.values()):
            peaks["gpu fp16"] = {"gflops": gp["fp16"], "source": gp["source"]}
    for p in peaks.values():
        p["bound_faces_per_s"] = p["gflops"] * 1e9 / per_face if (p["gflops"] and per_face) else None

    def peak_for(b: Built) -> Optional[float]:
        if b.device == "cpu":
            return peaks["cpu int8"]["gflops"] if b.precision == "int8" else cpu_peak
        return peaks.get("gpu fp16" if b.precision == "fp16" else "gpu fp32", {}).get("gflops")

    # timing
    rows = []
    for key, b in built.items():
        batches = args.gpu_batches if b.device == "cuda" else args.cpu_batches
        for n in batches:
            x, label, noise = model_inputs(b.backend.meta, inputs, n, seed=n)
            times = time_calls(lambda: b.backend.run(x, label, noise), args.warmup, args.iters, min(args.min_iters, args.iters),
                               args.max_seconds)
            s = stats_ms(times)
            fps = n / (s["p50_ms"] / 1000.0)
            gfl = fps * per_face / 1e9 if per_face else None
            pk = peak_for(b)
            rows.append({"backend": key, "name": b.backend.name, "device": b.device, "precision": b.precision, "batch": n,
                         "iters": s["n"], **{k: v for k, v in s.items() if k != "n"}, "ms_per_face": s["p50_ms"] / n,
                         "faces_per_s": fps, "gflops_per_s": gfl, "peak_fraction": (gfl / pk) if (gfl and pk) else None,
                         "speedup_vs_torch_eager": None})
            print(f"  timed {key:18s} batch {n:4d}: p50 {s['p50_ms']:9.2f} ms over {s['n']} calls", file=sys.stderr, flush=True)
    for r in rows:
        ref_key = "torch-cpu" if r["device"] == "cpu" else "torch-cuda"
        ref = next((q for q in rows if q["backend"] == ref_key and q["batch"] == r["batch"]), None)
        if ref:
            r["speedup_vs_torch_eager"] = ref["p50_ms"] / r["p50_ms"]

    # parity against the float32 onnxruntime CPU model (or whatever came first)
    ref_key = "ort-cpu" if "ort-cpu" in built else next(iter(built))
    pn = min(args.parity_count, len(inputs))
    px, plab, pnoise = model_inputs(meta, inputs, pn, seed=12345)
    reference = built[ref_key].backend.run(px, plab, pnoise)
    parity = {}
    for key, b in built.items():
        if key == ref_key:
            continue
        out = b.backend.run(px, plab, pnoise)
        d = np.abs(out.astype(np.float64) - reference)
        parity[key] = {"max_abs": float(d.max()), "mean_abs": float(d.mean()), "p99_abs": float(np.percentile(d, 99))}
    if "ort-cpu-int8" in parity:
        quant["parity_vs_fp32"] = parity["ort-cpu-int8"]

    # pipeline
    pipeline, pipe_skipped = [], []
    if not args.no_pipeline:
        keys = args.pipeline_backends
        if not keys:
            keys = [k for k in ("ort-cpu", "ort-cpu-int8") if k in built]
            gpu_keys = [k for k in ("trt-fp16", "trt-fp32", "ort-cuda", "torch-cuda") if k in built]
            keys += gpu_keys[:1]
            if not keys:
                keys = [next(iter(built))]
        detector = make_detector(args.detector)
        frames = pipeline_frames(test_faces)
        for key in keys:
            b = built.get(key)
            if b is None or b.transfer_spec is None:
                why = "not built" if b is None else "fexsdk.Transfer cannot open it"
                pipe_skipped.append({"backend": key, "reason": why})
                continue
            path, device = b.transfer_spec
            tr = Transfer(path, device=device, detector=detector, threads=args.threads)
            prow = [time_pipeline(tr, fr, test_faces is not None, args) for fr in frames]
            for r in prow:
                print(f"  pipeline {key:14s} {r['frame']:9s} {r['faces']} face(s): {r['fps']:.1f} FPS", file=sys.stderr, flush=True)
            pipeline.append({"backend": key, "backend_name": tr.backend.name, "detector": getattr(detector, "name", str(detector)),
                             "frames": "FER2013 PublicTest faces on a textured background" if test_faces is not None
                             else "synthetic face-like blobs (boxes given: detector timed, not used)",
                             "rows": prow})

    model_info = {"source": models.source, "onnx": str(models.onnx) if models.onnx else None,
                  "checkpoint": str(models.checkpoint) if models.checkpoint else None, "preset": meta.preset,
                  "image_size": meta.image_size, "channels": meta.channels, "noise_size": meta.noise_size,
                  "precision": meta.precision, "notes": models.notes}
    return {
        "machine": machine, "model": model_info, "flops": {k: v for k, v in flops.items() if k != "per_layer"},
        "flops_per_layer": flops.get("per_layer", []), "peaks": peaks,
        "options": {"backends": args.backends, "cpu_batches": args.cpu_batches, "gpu_batches": args.gpu_batches,
                    "iters": args.iters, "min_iters": args.min_iters, "warmup": args.warmup, "max_seconds": args.max_seconds,
                    "threads": args.threads, "data": args.data, "inputs": inputs_desc},
        "backends": [{"key": k, "name": b.backend.name, "device": b.device, "precision": b.precision, "notes": b.notes}
                     for k, b in built.items()],
        "rows": rows, "skipped": skipped,
        "parity_reference": ref_key, "parity_inputs": f"{pn} {inputs_desc}", "parity": parity,
        "quantization": quant, "pipeline": pipeline, "pipeline_skipped": pipe_skipped,
    }


if __name__ == "__main__":
    main()
