"""Landmark alignment (issue 14): does turning tilted faces upright before the generator help?

FER2013's faces are upright; faces in photos are often tilted. PublicTest faces (a skin-like
colour cast, 200-400 px, so YuNet sees them well) are placed on colour photos with no face of
their own (scikit-image's coffee, rocket and chelsea), and each scene is turned by 0, 10, 20 and
30 degrees about the face. Then, per face and angle:

- detection: the default detector (YuNet) finds a face whose centre is within a quarter of
  the side of the true centre;
- for each of the 7 targets, ``Transfer``'s stages (frame -> crop -> generate -> paste) run
  with alignment off, on (the eye line from YuNet's landmarks), and with the true angle (an
  upper bound: what perfect landmarks would give);
- the face is cut from the written frame with the true, known rotation and made 48x48 gray,
  and the evaluation classifier scores it against the target (the generated accuracy);
- angle error: |eye-line angle from YuNet's landmarks - true angle|.

Accuracies are over the detected faces of each angle (the same faces in every column); the
noise is seed 0 with face id = face index (``fexsdk.noise.noise_for``), as in
``benchmarks/paste_quality.py``.

    python benchmarks/alignment.py --count 200
    python benchmarks/alignment.py --count 0 --png docs/align-compare.png   # only the picture
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np

try:
    import fexsdk  # noqa: F401
except ImportError:  # running from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from fexsdk.crops import CropBox, eye_angle, extract_crops, square_box
from fexsdk.emotions import NUM_EMOTIONS
from fexsdk.transfer import Transfer

CANVAS = (720, 960)  # H, W: YuNet runs on it unshrunk
MODES = ("off", "on", "true angle")


def backgrounds() -> list[np.ndarray]:
    """Colour photos without a human face, BGR, at the canvas size."""
    from skimage import data

    return [cv2.resize(cv2.cvtColor(f(), cv2.COLOR_RGB2BGR), CANVAS[::-1], interpolation=cv2.INTER_AREA)
            for f in (data.coffee, data.rocket, data.chelsea)]


def scene(face: np.ndarray, bg: np.ndarray, side: int, angle: float, rng: np.random.Generator) -> tuple[np.ndarray, CropBox]:
    """``face`` upscaled to ``side`` on ``bg``, the whole picture turned ``angle`` degrees counter-clockwise
    about the face. Returns the image and the face's true square (its ``angle`` is the crop's: ``-angle``)."""
    h, w = CANVAS
    reach = int(np.ceil(side * 0.71)) + 2  # the turned square stays on the canvas
    x = int(rng.integers(reach, w - reach + 1)) - side // 2
    y = int(rng.integers(reach, h - reach + 1)) - side // 2
    img = bg.copy()
    big = cv2.resize(face, (side, side), interpolation=cv2.INTER_CUBIC).astype(np.float32)
    tint = np.array([0.85, 0.95, 1.1], np.float32)
    img[y : y + side, x : x + side] = np.clip(big[..., None] * tint, 0, 255).astype(np.uint8)
    truth = CropBox(x, y, side, -float(angle))
    if angle:
        half = (side - 1) / 2.0
        m = cv2.getRotationMatrix2D((x + half, y + half), float(angle), 1.0)
        img = cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    return img, truth


def run(tr: Transfer, faces: np.ndarray, angles: list[float], classify, seed: int = 0) -> list[dict]:
    bgs = backgrounds()
    rng = np.random.default_rng(seed)
    sides = rng.integers(200, 401, len(faces))
    rows = []
    targets = list(range(NUM_EMOTIONS))
    for angle in angles:
        found, err = 0, []
        cuts = {m: [] for m in MODES}
        for i, face in enumerate(faces):
            img, truth = scene(face, bgs[i % len(bgs)], int(sides[i]), angle, np.random.default_rng([seed, i]))
            tc = np.array([truth.x + (truth.size - 1) / 2.0, truth.y + (truth.size - 1) / 2.0])
            dets = [f for f in tr.detect(img) if np.hypot(*(np.array(f.center) - tc)) < truth.size / 4]
            if not dets:
                continue
            found += 1
            det = dets[0]
            if det.landmarks is not None:
                err.append(abs(eye_angle(det.landmarks) - truth.angle))
            for mode in MODES:
                tr.align = mode == "on"
                rec = tr.frame(img, [det], face_ids=[i])[0]
                if mode == "true angle":
                    d = tr.detector
                    rec.box = square_box(det, d.crop_margin, offset=d.crop_offset, angle=truth.angle)
                recs = [replace(rec, timings={}) for _ in targets]
                tr.crop(img, recs)
                tr.generate_faces(recs, targets, seed=seed)
                for r in recs:
                    out = tr.paste(img, [r])
                    cuts[mode].append(extract_crops(out, [truth], 48, 1)[0, 0])
        row = {"angle": angle, "faces": len(faces), "found": found,
               "angle_error": float(np.mean(err)) if err else float("nan")}
        want = np.tile(np.arange(NUM_EMOTIONS), found)
        for mode in MODES:
            pred = classify(np.stack(cuts[mode])) if found else np.zeros(0, int)
            row[mode] = float((pred == want).mean()) if found else float("nan")
        rows.append(row)
        print(f"  {angle:g} degrees: {found}/{len(faces)} found, accuracy off {100 * row['off']:.1f}%, "
              f"on {100 * row['on']:.1f}%, true angle {100 * row['true angle']:.1f}%", file=sys.stderr)
    tr.align = True
    return rows


def _view(img: np.ndarray, centre, side: float, cell: int) -> np.ndarray:
    """The square around a face (1.3x its side, border-replicated off the image) at ``cell`` pixels."""
    half = 0.65 * side
    m = np.array([[cell / (2 * half), 0, cell / 2 - centre[0] * cell / (2 * half)],
                  [0, cell / (2 * half), cell / 2 - centre[1] * cell / (2 * half)]])
    return cv2.warpAffine(img, m, (cell, cell), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REPLICATE)


def compare_png(tr: Transfer, faces: np.ndarray, path: str, cell: int = 150) -> None:
    """Tilted faces before and after, alignment off and on, with the 48x48 crop each run fed the generator."""
    from skimage import data

    from fexsdk.grid import image_grid

    photo = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)
    face = tr.detect(photo)[0]
    m = cv2.getRotationMatrix2D(face.center, 20.0, 1.0)
    scenes = [(cv2.warpAffine(photo, m, photo.shape[1::-1], borderMode=cv2.BORDER_REFLECT), "happy")]
    bgs = backgrounds()
    for k, (f, angle, target) in enumerate(zip(faces, (20, 30, -25), ("surprise", "happy", "surprise"))):
        scenes.append((scene(f, bgs[k % len(bgs)], 300, angle, np.random.default_rng(k))[0], target))
    cols: list[list[np.ndarray]] = [[] for _ in range(5)]
    for img, target in scenes:
        det = tr.detect(img)[0]
        side = max(det.box[2:])
        cols[0].append(_view(img, det.center, side, cell))
        for j, align in ((1, False), (3, True)):
            tr.align = align
            res = tr.process(img, target, faces=[det], seed=0)
            crop = tr.meta.to_pixels(res.inputs)[0, 0]
            cols[j].append(cv2.cvtColor(cv2.resize(crop, (cell, cell), interpolation=cv2.INTER_NEAREST), cv2.COLOR_GRAY2BGR))
            cols[j + 1].append(_view(res.image, det.center, side, cell))
    tr.align = True
    grid = image_grid([np.stack(c) for c in cols], ["input (tilted)", "crop, align off", "off: " + "result",
                                                     "crop, align on", "on: result"])
    cv2.imwrite(path, grid)
    print(f"wrote {path}", file=sys.stderr)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="generator (default: the bundled model)")
    p.add_argument("--data", default="../shared/data/fer2013.npz")
    p.add_argument("--classifier", default="training/weights/resnet18_fer2013.safetensors")
    p.add_argument("--count", type=int, default=200, help="PublicTest faces per angle (the first of each class in turn)")
    p.add_argument("--angles", type=float, nargs="+", default=[0, 10, 20, 30], help="tilts, degrees")
    p.add_argument("--threads", type=int, default=1, help="CPU threads for the generator and the classifier")
    p.add_argument("--png", help="also write a picture of tilted faces before/after, alignment off and on")
    a = p.parse_args()
    if a.count != 0 and a.count < NUM_EMOTIONS:
        p.error(f"--count must be 0 (only --png) or at least {NUM_EMOTIONS} (one face per class), got {a.count}")

    import torch

    from fexsdk.metadata import normalize
    from fexsdk.training.classifier import load_classifier, predict
    from latency_machine import cpu_facts

    torch.set_num_threads(a.threads)
    cv2.setNumThreads(a.threads)
    clf = load_classifier(a.classifier)

    def classify(u8: np.ndarray) -> np.ndarray:
        return predict(clf, normalize(torch.from_numpy(u8[:, None].astype(np.float32)))).argmax(1)

    with np.load(a.data) as d:
        test = d["usage"] == 1
        imgs, labels = d["images"][test], d["labels"][test]
    per = max(1, -(-a.count // NUM_EMOTIONS))
    idx = np.stack([np.flatnonzero(labels == k)[:per] for k in range(NUM_EMOTIONS)], 1).ravel()[: a.count]
    tr = Transfer(a.model, threads=a.threads)
    if a.png:
        compare_png(tr, imgs[np.flatnonzero(labels == 6)[:3]], a.png)
    if a.count == 0:
        return 0
    cpu = cpu_facts()
    t0 = time.perf_counter()
    rows = run(tr, imgs[idx], a.angles, classify)
    print(f"{len(idx)} PublicTest faces per angle, 200-400 px on colour photos, model {tr.meta.preset}, detector "
          f"{tr.detector.name}; {NUM_EMOTIONS} targets each, noise seed 0. CPU: {cpu['name']} "
          f"({cpu['usable_cpus']} usable CPUs, {a.threads} thread(s)); {time.perf_counter() - t0:.0f} s\n")
    print("| tilt | faces found | alignment off: accuracy % | on (YuNet's eye line) % | on, true angle % | "
          "mean angle error of the eye line |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['angle']:g} deg | {r['found']}/{r['faces']} ({100 * r['found'] / r['faces']:.0f}%) | "
              f"{100 * r['off']:.1f} | {100 * r['on']:.1f} | {100 * r['true angle']:.1f} | {r['angle_error']:.1f} deg |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
