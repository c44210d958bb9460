"""The faces, frames and models a latency run times (bundled, --model, --checkpoint or --preset).

Part of ``benchmarks/latency.py`` (see its docstring for what is timed and how).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import cv2

from fexsdk.metadata import ModelMetadata, read_metadata
from fexsdk.transfer import DEFAULT_MODEL


CPU_BATCHES = (1, 4, 16, 64)
GPU_BATCHES = (1, 4, 16, 64, 256)
FRAME_SIZES = ((640, 480), (1280, 720))
FACE_COUNTS = (1, 4)
PIPELINE_TARGETS = ("happy", "surprise", "sad", "angry")
TRAIN_HINT = "pip install 'fexsdk[train]'"


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


@dataclass
class Models:
    onnx: Optional[Path]
    checkpoint: Optional[Path]
    source: str
    notes: list[str] = field(default_factory=list)


def export_checkpoint(ckpt: Path, out: Path) -> Path:
    from fexsdk.export.onnx_export import export_onnx

    return export_onnx(ckpt, out).path


def preset_checkpoint(name: str, tmp: Path, seed: int = 0) -> Path:
    """An untrained generator of preset ``name`` (seeded weights) saved as a training checkpoint."""
    import torch

    from fexsdk.emotions import EMOTIONS
    from fexsdk.training.checkpoint import save_checkpoint
    from fexsdk.training.models import Generator
    from fexsdk.training.presets import get_preset

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
    notes: list[str] = []
    if ckpt is None:
        ckpt, note = checkpoint_beside_onnx(model, tmp)
        notes += [note] if note else []
    return Models(model, ckpt, str(model), notes)


def checkpoint_beside_onnx(model: Path, tmp: Path) -> tuple[Optional[Path], Optional[str]]:
    """The PyTorch rows' checkpoint, rebuilt from the ONNX file's own weights (the same model, exactly)."""
    try:
        from fexsdk.training.checkpoint import checkpoint_from_onnx, save_checkpoint
    except ImportError as exc:
        return None, f"PyTorch rows need the [train] extra ({exc})"
    try:
        path = tmp / (model.stem + "-from-onnx.pt")
        save_checkpoint(path, checkpoint_from_onnx(model))
        return path, None
    except ValueError as exc:
        return None, f"PyTorch rows skipped: {exc}"


def onnx_metadata(path: Path) -> ModelMetadata:
    try:
        return read_metadata(path)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
