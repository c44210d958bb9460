"""The README's before/after figure: real colour photos, each face as shot and changed to a few emotions.

    python benchmarks/before_after.py --model default --photos docs/photos/astronaut.jpg docs/photos/obama-official.jpg \
        --targets happy surprise sad angry -o docs/before-after.png

Each row is one photo's first face (the face box widened by a quarter, ``--cell`` pixels square), cut
from the whole photo as ``Transfer.apply`` writes it (seed 0, the model's default strength per emotion).
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
from fexsdk.emotions import canonical_name

sys.path.insert(0, str(Path(__file__).resolve().parent))
from believable import face_tile  # noqa: E402


def label(tile: np.ndarray, text: str) -> np.ndarray:
    out = tile.copy()
    cv2.putText(out, text, (6, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(out, text, (6, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def figure(model: str, photos: list[str], targets: list[str], cell: int, strength=None) -> np.ndarray:
    tr = Transfer(model, device="cpu")
    rows = []
    for path in photos:
        img = cv2.imread(path, cv2.IMREAD_COLOR)
        if img is None:
            raise ValueError(f"cannot read photo {path}")
        faces = tr.detect(img)
        if not faces:
            raise ValueError(f"no face found in {path}")
        face = max(faces, key=lambda f: f.box[2] * f.box[3])
        tiles = [label(face_tile(img, face.box, cell), "input")]
        for t in targets:
            out = tr.apply(img, t, faces=[face], seed=0, strength=strength)
            tiles.append(label(face_tile(out, face.box, cell), canonical_name(t)))
        rows.append(np.hstack(tiles))
    return np.vstack(rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="default")
    p.add_argument("--photos", nargs="+", required=True)
    p.add_argument("--targets", nargs="+", default=["happy", "surprise", "sad", "angry"])
    p.add_argument("--cell", type=int, default=200)
    p.add_argument("--strength", type=float, default=None, help="default: the model's per emotion")
    p.add_argument("-o", "--output", required=True)
    a = p.parse_args(argv)
    cv2.imwrite(a.output, figure(a.model, a.photos, a.targets, a.cell, a.strength))
    print(f"wrote {a.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
