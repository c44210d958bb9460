"""Where a generator changes faces, per target emotion, and how much of it is one fixed template.

For each target emotion k, the change ``G(x, k) - x`` over PublicTest faces (raw 48x48 output,
noise seed 0) is summarised by two maps: its mean absolute value (where the change is) and its
mean signed value (what every face gets: the template). The **template share** is the part of
the change's energy that the mean explains, ``N * ||mean||^2 / sum ||change||^2``: 1 when every
face receives the same pattern whatever it looks like, near 0 when each face is changed in its own
way. A generator that paints a fixed "fear" or "surprise" pattern at the same spot of every crop
scores high, and that pattern lands on the chin of a face whose mouth is elsewhere.

The **mean-face distance** says which part of that template real faces do not share: per target k,
the RMS (grey levels) between the mean generated face G(x, k) and the mean real PublicTest face of
emotion k. Copying the input scores the distance of the inputs' mean from each class mean (printed
as "copy"); a generator that paints more than real faces of that emotion share on average scores
above it.

    python benchmarks/change_map.py fexsdk/models/default.onnx --out docs/change-map-default.png
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


def template_share(change: np.ndarray) -> float:
    """Share of the energy of a batch of changes (N, ...) that their mean over the batch explains."""
    c = np.asarray(change, dtype=np.float64)
    if c.ndim < 2 or len(c) < 2:
        raise ValueError(f"need a batch of at least 2 changes (N, ...), got shape {c.shape}")
    total = (c ** 2).sum()
    if total == 0:
        return 0.0
    return float(len(c) * (c.mean(axis=0) ** 2).sum() / total)


def mean_face_distance(generated: np.ndarray, real_mean: np.ndarray) -> float:
    """RMS (grey levels) between the mean of ``generated`` (N, C, H, W) and ``real_mean`` (C, H, W), [-1, 1] units."""
    g = np.asarray(generated, dtype=np.float64)
    if g.ndim != 4 or g.shape[1:] != np.shape(real_mean):
        raise ValueError(f"generated must be (N, C, H, W) with (C, H, W) = {np.shape(real_mean)}, got {g.shape}")
    return float(np.sqrt(((g.mean(axis=0) - real_mean) ** 2).mean()) * PIXEL_SCALE)


def changes(model: str, x: np.ndarray, seed: int = 0) -> np.ndarray:
    """(7, N, C, H, W) changes G(x, k) - x for every target k, with the same noise for each."""
    backend = load_backend(model, device="cpu")
    onehot = np.eye(NUM_EMOTIONS, dtype=np.float32)
    noise = noise_for(backend.meta, seed, range(len(x)))
    return np.stack([backend.run(x, backend.meta.label_for(onehot[np.full(len(x), k)]), noise) - x
                     for k in range(NUM_EMOTIONS)])


def change_map_picture(ch: np.ndarray, scale: int = 3) -> np.ndarray:
    """Gray uint8 picture: a column per target; mean |change| on top, mean signed change below (grey = 0)."""
    import cv2

    full = 0.3  # a change of 0.3 in [-1, 1] units (38 grey levels) is drawn at full contrast
    cols = []
    for c in ch:
        gray = c.mean(axis=1)  # over colour channels
        top = np.abs(gray).mean(0) / full
        bottom = 0.5 + gray.mean(0) / (2 * full)
        cols.append(np.concatenate([top, bottom], 0))
    pic = np.clip(np.concatenate(cols, 1) * 255, 0, 255).astype(np.uint8)
    pic = cv2.resize(pic, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
    side = ch.shape[-1] * scale
    band = np.full((14, pic.shape[1]), 255, np.uint8)
    for k, name in enumerate(EMOTIONS):
        cv2.putText(band, name, (k * side + 2, 11), cv2.FONT_HERSHEY_SIMPLEX, 0.35, 0, 1, cv2.LINE_AA)
    return np.concatenate([band, pic], 0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("models", nargs="+", help=".onnx or .pt generators")
    p.add_argument("--data", default="../shared/data/fer2013.npz")
    p.add_argument("--count", type=int, default=256, help="PublicTest faces")
    p.add_argument("--out", help="write the first model's maps to this PNG")
    a = p.parse_args(argv)
    d = np.load(a.data)
    public = d["usage"] == 1
    all_x = normalize(d["images"][public][:, None].astype(np.float32))
    all_y = d["labels"][public]
    real_means = [all_x[all_y == k].mean(axis=0) for k in range(NUM_EMOTIONS)]
    x = all_x[: a.count]
    print(f"{len(x)} PublicTest faces; template share of the change per target (1 = the same pattern on every face)\n")
    print("| model | " + " | ".join(EMOTIONS) + " | mean | mean abs change (grey levels) |")
    print("| --- |" + " --- |" * (NUM_EMOTIONS + 2))
    distances = {"copy": [mean_face_distance(x, r) for r in real_means]}
    for i, m in enumerate(a.models):
        ch = changes(m, x)
        shares = [template_share(c) for c in ch]
        print(f"| {m} | " + " | ".join(f"{s:.2f}" for s in shares)
              + f" | {np.mean(shares):.2f} | {np.abs(ch).mean() * PIXEL_SCALE:.1f} |")
        distances[m] = [mean_face_distance(x + c, r) for c, r in zip(ch, real_means)]
        if i == 0 and a.out:
            import cv2

            cv2.imwrite(a.out, change_map_picture(ch))
    print(f"\nMean-face distance (grey levels): mean G(x, k) over these faces against the mean real face of k "
          f"(all {len(all_x)} PublicTest faces)\n")
    print("| model | " + " | ".join(EMOTIONS) + " | mean |")
    print("| --- |" + " --- |" * (NUM_EMOTIONS + 1))
    for m, dist in distances.items():
        print(f"| {m} | " + " | ".join(f"{v:.1f}" for v in dist) + f" | {np.mean(dist):.1f} |")
    if a.out:
        print(f"\nwrote {a.out} (columns: targets; top: mean |change|, bottom: mean signed change, grey = none)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
