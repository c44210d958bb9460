"""Checkerboard in raw generator outputs: the share of the change's energy at period-2 frequencies.

Transposed convolutions leave a pattern that repeats every 2 pixels. For each model this
prints the share of the spectral energy of the change ``G(x, c) - x`` (raw 48x48 output,
no paste-back filter) at the Nyquist row and column, over PublicTest faces and random
targets, and the same share for the real faces themselves (mean removed) as the
reference: what natural faces have at that frequency. A second column does the same for all
periods of 6 pixels or less (the stripes and bars a generator can draw for D's classifier).
``--per-target`` adds that share for each target emotion: stripes are drawn for some targets
(fear, neutral) and not others, and an average over random targets hides which.

    python benchmarks/checkerboard.py fexsdk/models/default.onnx runs/gpu/weights/fex-small-r1.pt
    python benchmarks/checkerboard.py fexsdk/models/default.onnx --per-target
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

try:
    import fexsdk  # noqa: F401
except ImportError:  # running from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fexsdk.backends import load_backend
from fexsdk.emotions import EMOTIONS, NUM_EMOTIONS
from fexsdk.metadata import PIXEL_SCALE, normalize
from fexsdk.noise import noise_for
from fexsdk.training.spectrum import fine_share, period2_share


def faces(data: str, count: int) -> np.ndarray:
    """PublicTest faces (N, 1, 48, 48) in [-1, 1]."""
    d = np.load(data)
    imgs = d["images"][d["usage"] == 1][:count]
    return normalize(imgs[:, None].astype(np.float32))


def change_share(model: str, x: np.ndarray, seed: int = 0) -> tuple[float, float, float]:
    """(period-2 share, share at periods <= 6 px, mean |change| in grey levels) of G(x, c) - x for random targets c."""
    backend = load_backend(model, device="cpu")
    rng = np.random.default_rng(seed)
    targets = rng.integers(0, NUM_EMOTIONS, len(x))
    labels = backend.meta.label_for(np.eye(NUM_EMOTIONS, dtype=np.float32)[targets])
    out = np.concatenate([backend.run(x[i : i + 256], labels[i : i + 256],
                                      noise_for(backend.meta, seed, range(i, i + len(x[i : i + 256]))))
                          for i in range(0, len(x), 256)])
    change = out - x
    return period2_share(change), fine_share(change), float(np.abs(change).mean() * PIXEL_SCALE)


def fine_share_per_target(model: str, x: np.ndarray, seed: int = 0) -> dict[str, float]:
    """Share of the change ``G(x, k) - x`` at periods <= 6 px for each target emotion k (same faces, same noise)."""
    backend = load_backend(model, device="cpu")
    onehot = np.eye(NUM_EMOTIONS, dtype=np.float32)
    shares = {}
    for k, name in enumerate(EMOTIONS):
        labels = backend.meta.label_for(onehot[np.full(len(x), k)])
        out = np.concatenate([backend.run(x[i : i + 256], labels[i : i + 256],
                                          noise_for(backend.meta, seed, range(i, i + len(x[i : i + 256]))))
                              for i in range(0, len(x), 256)])
        shares[name] = fine_share(out - x)
    return shares


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="+", help=".onnx or .pt generators")
    p.add_argument("--data", default="../shared/data/fer2013.npz")
    p.add_argument("--count", type=int, default=512, help="PublicTest faces")
    p.add_argument("--per-target", action="store_true", help="also the share at periods <= 6 px per target emotion")
    a = p.parse_args()
    x = faces(a.data, a.count)
    print(f"{a.count} PublicTest faces; period-2 share of spectral energy (mean removed)\n")
    print("| source | upsampling | period-2 share | share at periods <= 6 px | mean abs change (grey levels) |")
    print("| --- | --- | --- | --- | --- |")
    print(f"| real faces (reference) | - | {period2_share(x):.4f} | {fine_share(x):.4f} | - |")
    for m in a.models:
        meta = load_backend(m, device="cpu").meta
        share, fine, size = change_share(m, x)
        print(f"| {m} ({meta.preset}) | {upsampling(m)} | {share:.4f} | {fine:.4f} | {size:.1f} |")
    if a.per_target:
        print("\nShare of the change at periods <= 6 px, per target emotion (real faces' own: "
              f"{fine_share(x):.4f})\n")
        print("| model | " + " | ".join(EMOTIONS) + " |")
        print("| --- |" + " --- |" * NUM_EMOTIONS)
        for m in a.models:
            shares = fine_share_per_target(m, x)
            print(f"| {m} | " + " | ".join(f"{shares[e]:.3f}" for e in EMOTIONS) + " |")
    return 0


def upsampling(model: str) -> str:
    """The generator's up-sampling where the file tells (checkpoints), else '?'."""
    if model.endswith(".onnx"):
        import onnx

        ops = {n.op_type for n in onnx.load(model).graph.node}
        return "transpose" if "ConvTranspose" in ops else "resize" if "Resize" in ops else "?"
    from fexsdk.training.checkpoint import generator_config, load_checkpoint

    return generator_config(load_checkpoint(model))["upsample"]


if __name__ == "__main__":
    raise SystemExit(main())
