"""Before/after pictures of several models on a real photo, one row per model, through ``fexsdk.Transfer``.

The photo is ``skimage.data.astronaut()`` (public domain) unless ``--image`` is given; each row
is the input and the face changed to each ``--targets`` emotion with seed 0, cut around the
detected face with a margin so that the change is large enough to see.

    python benchmarks/paste_compare.py fexsdk/models/default.onnx runs/smoothflow.onnx -o docs/paste-compare.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

try:
    import fexsdk  # noqa: F401
except ImportError:  # running from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fexsdk import Transfer
from fexsdk.grid import image_grid


def load_photo(path: str | None) -> np.ndarray:
    if path:
        img = cv2.imread(path, cv2.IMREAD_COLOR)
        if img is None:
            raise SystemExit(f"cannot read {path}")
        return img
    from skimage import data

    return cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)


def face_window(img: np.ndarray, tr: Transfer, margin: float) -> tuple[int, int, int, int]:
    """A square around the largest detected face, ``margin`` face sizes wider on each side."""
    faces = tr.detector.detect(img)
    if not faces:
        raise SystemExit("no face found in the photo")
    x, y, w, h = max((f.box for f in faces), key=lambda b: b[2] * b[3])
    side = int(max(w, h) * (1 + 2 * margin))
    cx, cy = x + w // 2, y + h // 2
    x0 = int(np.clip(cx - side // 2, 0, max(0, img.shape[1] - side)))
    y0 = int(np.clip(cy - side // 2, 0, max(0, img.shape[0] - side)))
    return x0, y0, min(side, img.shape[1]), min(side, img.shape[0])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="+", help="ONNX generators (rows, top to bottom)")
    p.add_argument("-o", "--output", required=True, help="PNG to write")
    p.add_argument("--image", help="photo to use (default: skimage.data.astronaut())")
    p.add_argument("--targets", nargs="+", default=["happy", "surprise", "angry", "sad"], help="columns after the input")
    p.add_argument("--cell", type=int, default=256, help="cell side in pixels")
    p.add_argument("--margin", type=float, default=0.25, help="context around the face, in face sizes")
    p.add_argument("--strength", type=float, default=1.0, help="strength of every change (Transfer.apply's)")
    p.add_argument("--whole", action="store_true", help="show the whole photo (every face changed), not a window around the largest face")
    a = p.parse_args()

    img = load_photo(a.image)
    rows = []
    window = None
    for m in a.models:
        tr = Transfer(m, device="cpu")
        if window is None:
            window = (0, 0, img.shape[1], img.shape[0]) if a.whole else face_window(img, tr, a.margin)
        x, y, w, h = window
        size = (round(a.cell * w / h), a.cell)
        cells = [img] + [tr.apply(img, t, seed=0, strength=a.strength) for t in a.targets]
        rows.append([cv2.resize(c[y : y + h, x : x + w], size, interpolation=cv2.INTER_AREA) for c in cells])
        print(f"row {len(rows)}: {m}")
    columns = [np.stack([r[j] for r in rows]) for j in range(len(rows[0]))]
    cv2.imwrite(a.output, image_grid(columns, ["input", *a.targets]))
    print(f"wrote {a.output}: rows {', '.join(a.models)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
