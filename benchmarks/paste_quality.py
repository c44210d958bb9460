"""What survives paste-back: expression, sharpness and shading on faces placed large on a colour frame.

PublicTest faces are upscaled to ``--side`` pixels and placed on a blurred colour texture.
For every face and every target emotion the model runs on the 48x48 crop, and its result
is pasted back at full resolution: the residual paste-back (``fexsdk.paste.paste_back``,
image models) or the warp paste-back (``fexsdk.warp_paste.paste_warp``, warp models). Then:

- expression: the committed classifier on the raw 48x48 output, and on the face cut from
  the written frame and made 48x48 again; the share of the raw accuracy that survives;
- sharpness: Laplacian variance of the face region after / before (1.0 = as sharp);
- shading: mean absolute change of the low-frequency luminance (Gaussian, sigma = side/24)
  over the face, in grey levels: the dark and light patches users see.

    python benchmarks/paste_quality.py fexsdk/models/default.onnx runs/flow.onnx --count 70
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

from fexsdk.crops import CropBox
from fexsdk.emotions import EMOTIONS, NUM_EMOTIONS
from fexsdk.metadata import normalize, read_metadata
from fexsdk.noise import noise_for
from fexsdk.paste import paste_back
from fexsdk.warp_paste import paste_warp


def scene(face: np.ndarray, side: int, seed: int) -> tuple[np.ndarray, CropBox]:
    """One gray 48x48 face upscaled to ``side`` and placed on a blurred colour texture."""
    rng = np.random.default_rng(seed)
    h, w = side + 80, side + 120
    img = cv2.GaussianBlur(rng.integers(40, 220, (h, w, 3), dtype=np.uint8), (0, 0), 4)
    box = CropBox(60, 40, side)
    big = cv2.resize(face, (side, side), interpolation=cv2.INTER_CUBIC)
    tint = np.array([0.85, 0.95, 1.1], np.float32)  # a skin-like colour cast, so colour is there to keep
    img[40 : 40 + side, 60 : 60 + side] = np.clip(big[..., None] * tint, 0, 255).astype(np.uint8)
    return img, box


def cut(img: np.ndarray, box: CropBox) -> np.ndarray:
    """The box made 48x48 gray again, as the classifier sees faces."""
    region = cv2.cvtColor(img[box.y : box.y2, box.x : box.x2], cv2.COLOR_BGR2GRAY)
    return cv2.resize(region, (48, 48), interpolation=cv2.INTER_AREA)


def run_model(sess, meta, x: np.ndarray, target: int, face: int) -> dict[str, np.ndarray]:
    """The model on crops ``x`` of faces ``face``, ``face + 1``, ... with seed 0 (fexsdk.noise.noise_for)."""
    labels = meta.label_for(np.eye(NUM_EMOTIONS, dtype=np.float32)[np.full(len(x), target)])
    feeds = meta.feeds(x, labels, noise_for(meta, 0, range(face, face + len(x))))
    return dict(zip(meta.outputs, sess.run(meta.outputs, feeds)))


def measure(model: str, faces: np.ndarray, side: int, classify) -> dict[str, float]:
    import onnxruntime as ort

    meta = read_metadata(model)
    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    raw_hits = pasted_hits = total = 0
    sharp, shade = [], []
    sigma = side / 24
    for i, face in enumerate(faces):
        img, box = scene(face, side, seed=i)
        x = meta.to_model(cut(img, box)[None, None])
        lum0 = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)[box.y : box.y2, box.x : box.x2].astype(np.float32)
        lap0 = cv2.Laplacian(lum0, cv2.CV_32F).var()
        raws, cuts = [], []
        for k in range(NUM_EMOTIONS):
            out = run_model(sess, meta, x, k, face=i)
            if meta.is_warp:
                new = paste_warp(img, [box], out["flow"], out["residual"], scale=meta.pixel_scale)
            else:
                new = paste_back(img, [box], x, out["output"], scale=meta.pixel_scale, offset=meta.pixel_offset)
            raws.append(meta.to_pixels(out["output"][0, 0]))
            cuts.append(cut(new, box))
            lum = cv2.cvtColor(new, cv2.COLOR_BGR2GRAY)[box.y : box.y2, box.x : box.x2].astype(np.float32)
            sharp.append(cv2.Laplacian(lum, cv2.CV_32F).var() / lap0)
            low = cv2.GaussianBlur(lum - lum0, (0, 0), sigma)
            shade.append(float(np.abs(low).mean()))
        raw_pred, cut_pred = classify(np.stack(raws)), classify(np.stack(cuts))
        raw_hits += int((raw_pred == np.arange(NUM_EMOTIONS)).sum())
        pasted_hits += int((cut_pred == np.arange(NUM_EMOTIONS)).sum())
        total += NUM_EMOTIONS
    raw_acc, pasted_acc = raw_hits / total, pasted_hits / total
    return {"raw_accuracy": raw_acc, "pasted_accuracy": pasted_acc,
            "survival": pasted_acc / raw_acc if raw_acc else float("nan"),
            "sharpness": float(np.median(sharp)), "shading": float(np.mean(shade)), "preset": meta.preset,
            "warp": meta.is_warp}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="+", help="ONNX generators")
    p.add_argument("--data", default="../shared/data/fer2013.npz")
    p.add_argument("--classifier", default="training/weights/resnet18_fer2013.safetensors")
    p.add_argument("--count", type=int, default=70, help="PublicTest faces (the first of each class in turn)")
    p.add_argument("--side", type=int, default=320, help="face size on the frame, pixels")
    a = p.parse_args()

    import torch

    from fexsdk.training.classifier import load_classifier, predict

    clf = load_classifier(a.classifier)

    def classify(u8: np.ndarray) -> np.ndarray:
        return predict(clf, normalize(torch.from_numpy(u8[:, None].astype(np.float32)))).argmax(1)

    d = np.load(a.data)
    imgs, labels = d["images"][d["usage"] == 1], d["labels"][d["usage"] == 1]
    per = max(1, a.count // len(EMOTIONS))
    idx = np.concatenate([np.flatnonzero(labels == k)[:per] for k in range(len(EMOTIONS))])
    faces = imgs[idx]
    print(f"{len(faces)} PublicTest faces at {a.side} px on a colour frame, 7 targets each, noise: seed 0, face id = face index\n")
    print("| model | paste-back | raw 48x48 accuracy % | after paste-back % | survives | sharpness | low-freq shading (grey levels) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for m in a.models:
        r = measure(m, faces, a.side, classify)
        print(f"| {m} ({r['preset']}) | {'warp' if r['warp'] else 'residual'} | {100 * r['raw_accuracy']:.1f} | "
              f"{100 * r['pasted_accuracy']:.1f} | {100 * r['survival']:.0f}% | {r['sharpness']:.3f} | {r['shading']:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
