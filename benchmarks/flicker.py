"""Flicker of the live demo on a still clip: per-track fixed noise vs fresh noise every frame.

A FER2013 PublicTest face is upscaled and placed on a blurred, textured
background (like ``tests/conftest.py::face_scene``); the clip is that one frame
repeated. It goes through ``fexsdk.video.DemoLoop`` (detection every
``--detect-every`` frames, tracking, no overlay) twice:

- fixed: each face track keeps its own dropout noise (seed ``--seed`` + track id);
- fresh: new dropout noise every frame (``seed=None``), what a naive per-frame
  ``Transfer.apply`` does.

For each it prints the flicker, the mean absolute frame-to-frame change of the
pixels inside the face's box (0-255 scale, averaged over the 3 colour planes
and the frame pairs), its maximum over the pairs, and for scale the mean
absolute change the transfer makes to the face (output vs input). The input is
still, so any frame-to-frame change is flicker.

    python benchmarks/flicker.py --model runs/small/model.onnx
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np

try:
    import fexsdk  # noqa: F401
except ImportError:  # running from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fexsdk.transfer import DEFAULT_MODEL, Transfer
from fexsdk.video import DemoConfig, DemoLoop


def clip(face: np.ndarray, size: int, canvas: tuple[int, int], frames: int, motion: int = 0, seed: int = 0):
    """One 48x48 gray face upscaled to ``size`` on a textured BGR background, ``frames`` times.

    The face starts left of centre and moves ``motion`` pixels right per frame (0: a still clip).
    Returns the frames and the face's (x, y, size, size) square in each.
    """
    h, w = canvas
    rng = np.random.default_rng(seed)
    background = cv2.GaussianBlur(rng.integers(60, 200, (h, w, 3), dtype=np.uint8), (0, 0), 3)
    big = cv2.resize(face, (size, size), interpolation=cv2.INTER_CUBIC)[..., None]
    x0 = max(0, (w - size) // 2 - motion * frames // 2)
    y = (h - size) // 2
    out, boxes = [], []
    for t in range(frames):
        x = min(x0 + motion * t, w - size)
        frame = background.copy()
        frame[y : y + size, x : x + size] = big
        out.append(frame)
        boxes.append((x, y, size, size))
    return out, boxes


def measure(tr: Transfer, frames, boxes, seed, args) -> dict:
    """Flicker inside the face's (moving) box: the box moves with the face, so a still face gives 0."""
    loop = DemoLoop(DemoConfig(headless=True, overlay=False, seed=seed, emotion=args.emotion,
                               detect_every=args.detect_every, smoothing=args.smoothing, velocity=args.velocity,
                               quiet=True), transfer=tr)
    t0 = time.perf_counter()
    results = [loop.process(f) for f in frames]
    seconds = time.perf_counter() - t0
    crops = [r[y : y + s, x : x + s].astype(np.float32) for r, (x, y, s, _) in zip(results, boxes)]
    inputs = [f[y : y + s, x : x + s].astype(np.float32) for f, (x, y, s, _) in zip(frames, boxes)]
    steps = [float(np.abs(b - a).mean()) for a, b in zip(crops, crops[1:])]
    change = float(np.mean([np.abs(o - i).mean() for o, i in zip(crops, inputs)]))
    return {"flicker": float(np.mean(steps)), "flicker_max": max(steps), "change": change,
            "faces": loop.tracker.created, "ms_per_frame": 1000.0 * seconds / len(frames)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help=f"model file (default: the bundled {DEFAULT_MODEL.name})")
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "fer2013.npz"))
    ap.add_argument("--faces", type=int, nargs="+", default=[0, 1, 2, 3, 4],
                    help="PublicTest face indices (one clip each; the figures are averaged)")
    ap.add_argument("--size", type=int, default=150, help="face size in pixels")
    ap.add_argument("--canvas", type=int, nargs=2, default=[480, 640], metavar=("H", "W"))
    ap.add_argument("--frames", type=int, default=30, help="frames per clip")
    ap.add_argument("--detect-every", type=int, default=3)
    ap.add_argument("--smoothing", type=float, default=DemoConfig.smoothing, help="tracker box smoothing")
    ap.add_argument("--velocity", type=float, default=DemoConfig.velocity, help="tracker velocity gain (0: hold boxes)")
    ap.add_argument("--motion", type=int, default=0, help="also measure a clip whose face moves this many px per frame")
    ap.add_argument("--emotion", default="happy")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--detector", default=None)
    ap.add_argument("--threads", type=int, default=1, help="onnxruntime CPU threads")
    args = ap.parse_args(argv)

    model = Path(args.model) if args.model else DEFAULT_MODEL
    if not model.is_file():
        print(f"model not found: {model} (the bundled model is not in this checkout yet; pass --model FILE)",
              file=sys.stderr)
        return 2
    if not Path(args.data).is_file():
        print(f"FER2013 archive not found: {args.data}", file=sys.stderr)
        return 2
    with np.load(args.data) as d:
        idx = np.flatnonzero(d["usage"] == 1)
        faces = d["images"][idx[args.faces]]
    tr = Transfer(model, device="cpu", detector=args.detector, threads=args.threads)
    print(f"model {model} ({tr.meta.preset or '?'}, noise size {tr.meta.noise_size}, dropout p {tr.meta.dropout_p}); "
          f"detector {tr.detector.name}; {len(faces)} still clip(s) of {args.frames} frames, "
          f"{args.canvas[1]}x{args.canvas[0]}, face {args.size}px, detect every {args.detect_every}, "
          f"smoothing {args.smoothing}, velocity {args.velocity}; "
          f"target {args.emotion}; load average " + " ".join(f"{v:.2f}" for v in os.getloadavg()))
    for motion in sorted({0, args.motion}):
        rows = {"fixed": [], "fresh": []}
        skipped = []
        for i, face in zip(args.faces, faces):
            frames, boxes = clip(face, args.size, tuple(args.canvas), args.frames, motion, seed=i)
            got = {name: measure(tr, frames, boxes, seed, args)
                   for name, seed in (("fixed", args.seed), ("fresh", None))}
            if got["fixed"]["faces"] == 0 or got["fresh"]["faces"] == 0:
                skipped.append(i)
                continue
            for name, r in got.items():
                rows[name].append(r)
        title = "still clip" if motion == 0 else f"face moving {motion} px/frame"
        print(f"\n{title}: {len(rows['fixed'])} clip(s)" + (f" (faces {skipped} not detected, skipped)" if skipped else ""))
        if not rows["fixed"]:
            print("no face was detected in any clip", file=sys.stderr)
            return 1
        print(f"  {'noise':31s} {'flicker':>8s} {'max':>8s} {'change':>8s} {'ms/frame':>9s}   (mean |diff| in the face box, 0-255)")
        for name, label in (("fixed", f"fixed per track (seed {args.seed}, track id)"), ("fresh", "fresh every frame (seed=None)")):
            rs = rows[name]
            print(f"  {label:31s} {np.mean([r['flicker'] for r in rs]):8.3f} {max(r['flicker_max'] for r in rs):8.3f} "
                  f"{np.mean([r['change'] for r in rs]):8.3f} {np.mean([r['ms_per_frame'] for r in rs]):9.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
