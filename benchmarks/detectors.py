"""Face detectors on FER2013 faces: recall, speed, and the FER-like crop framing.

Each FER2013 PublicTest face (48x48 gray) is upscaled with INTER_CUBIC to a
face size S and placed at a random position in a 640x480 frame whose
background is the face's own border, replicated outwards, heavily blurred and
lightly noised (so the detector sees a plausible head and no hard square
edge). The ground truth is the placed S x S square: that is exactly the FER2013
framing the generator was trained on.

For every detector (Haar; YuNet with its default ``min_face=48``, which enlarges
the frame 1.5x, and at the frame's own scale, ``yunet@1x``; SSD) and face size
it reports:

- recall: the fraction of faces found with box IoU > 0.5 against the square;
- extra: detections per frame that match no face (IoU < 0.3), i.e. false positives;
- ms/frame: wall time of ``detector.detect`` on a 640x480 BGR frame (best of 3 passes
  per frame, averaged over 50 frames, so that other load on a shared machine counts less).

Then, pooled over all sizes, it searches the crop ``margin`` and vertical
``offset`` that map each detector's box (through ``fexsdk.crops.square_box``)
back to the ground-truth square: first by mean IoU on a fine grid, then by the
mean absolute difference between the 48x48 gray crop
that ``extract_crops`` cuts from the frame and the original FER2013 face, on a
finer grid around the IoU optimum (this is what the generator sees, so it decides).

    python benchmarks/detectors.py --data ../shared/data/fer2013.npz --models ../shared/models

``--compare`` instead measures what the "Face detectors" table of docs/benchmarks.md shows: Haar and
the bundled YuNet (at detector input sizes 640, 800 and 960, the default, and at
the frame's own size) on PublicTest faces placed on 640x480 and 1280x720 frames
(recall), false positives on face-free images (scikit-image's sample photos and
textures that hold no human face, and random crops of them resized to both frame
sizes; needs scikit-image), YuNet's recall and false positives at several score
thresholds, and ms per frame at both frame sizes:

    python benchmarks/detectors.py --compare --json detectors.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import cv2
import numpy as np

try:
    import fexsdk  # noqa: F401
except ImportError:  # running from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fexsdk.crops import extract_crops, square_box
from fexsdk.faces import HaarDetector, SSDDetector, YuNetDetector, box_iou

FRAME_W, FRAME_H = 640, 480


def place_face(face: np.ndarray, size: int, rng: np.random.Generator, frame=(FRAME_W, FRAME_H)):
    """Upscale a 48x48 face to ``size`` and put it in a frame; returns (BGR frame, (x, y, size))."""
    W, H = frame
    big = cv2.resize(face, (size, size), interpolation=cv2.INTER_CUBIC)
    x = int(rng.integers(0, W - size + 1))
    y = int(rng.integers(0, H - size + 1))
    canvas = cv2.copyMakeBorder(big, y, H - size - y, x, W - size - x, cv2.BORDER_REPLICATE)
    canvas = cv2.GaussianBlur(canvas, (0, 0), size / 6.0)
    canvas = np.clip(canvas + rng.normal(0.0, 8.0, canvas.shape), 0, 255).astype(np.uint8)
    canvas[y : y + size, x : x + size] = big
    return cv2.cvtColor(canvas, cv2.COLOR_GRAY2BGR), (x, y, size)


def square_iou_grid(boxes: np.ndarray, gts: np.ndarray, margins: np.ndarray, offsets: np.ndarray):
    """Mean IoU of the square (margin, offset) boxes vs the true squares, for every grid point.

    Same geometry as ``square_box`` without its integer rounding.
    """
    x, y, w, h = boxes.T
    gx, gy, gs = gts.T
    m = np.maximum(w, h)
    cx, cy = x + w / 2, y + h / 2
    out = np.empty((len(margins), len(offsets)))
    for i, mg in enumerate(margins):
        side = m * (1 + mg)
        for j, off in enumerate(offsets):
            sx, sy = cx - side / 2, cy + off * side - side / 2
            ix = np.clip(np.minimum(sx + side, gx + gs) - np.maximum(sx, gx), 0, None)
            iy = np.clip(np.minimum(sy + side, gy + gs) - np.maximum(sy, gy), 0, None)
            inter = ix * iy
            out[i, j] = np.mean(inter / (side * side + gs * gs - inter))
    return out


def crop_l1(frames, boxes, faces, margin: float, offset: float) -> float:
    """Mean |48x48 crop - original face| (gray levels) for the given crop setting."""
    errs = []
    for frame, box, face in zip(frames, boxes, faces):
        cb = square_box(tuple(box), margin, offset=offset)
        crop = extract_crops(frame, [cb], 48, 1)[0, 0]
        errs.append(np.abs(crop.astype(np.float32) - face.astype(np.float32)).mean())
    return float(np.mean(errs))


def time_detector(det, frames, repeats: int) -> float:
    """Milliseconds per frame: the best of ``repeats`` passes for each frame, then the mean.

    Taking each frame's best pass keeps the figure honest on a shared machine,
    where other processes steal the CPU now and then.
    """
    best = np.full(len(frames), np.inf)
    for _ in range(repeats):
        for i, frame in enumerate(frames):
            t0 = time.perf_counter()
            det.detect(frame)
            best[i] = min(best[i], time.perf_counter() - t0)
    return 1000.0 * float(best.mean())


def time_interleaved(dets: dict, frames, repeats: int) -> dict:
    """ms per frame of each detector, timed in turn on the same frame (best of ``repeats`` per frame, then the
    mean), so that load from other processes on a shared machine falls on all of them alike."""
    best = {name: np.full(len(frames), np.inf) for name in dets}
    for det in dets.values():
        det.detect(frames[0])
    for i, frame in enumerate(frames):
        for _ in range(repeats):
            for name, det in dets.items():
                t0 = time.perf_counter()
                det.detect(frame)
                best[name][i] = min(best[name][i], time.perf_counter() - t0)
    return {name: 1000.0 * float(b.mean()) for name, b in best.items()}


def small_face_sweep(faces, models: Path, seed: int) -> dict:
    """Recall (and YuNet ms/frame) for small faces: YuNet at several enlargements, Haar at two floors."""
    yunet = models / "face_detection_yunet_2023mar.onnx"
    variants = {}
    if yunet.is_file():
        for label, scale in (("yunet 1x", 1.0), ("yunet 1.25x", 1.25), ("yunet 1.5x", 1.5), ("yunet 2x", 2.0)):
            variants[label] = YuNetDetector(yunet, min_face=0, input_size=round(FRAME_W * scale))
    variants["haar min 24"] = HaarDetector(min_face=24)
    variants["haar min 32"] = HaarDetector(min_face=32)
    out: dict = {}
    print(f"\nsmall faces ({len(faces)} faces, {FRAME_W}x{FRAME_H}): found % / ms per frame")
    for size in (32, 40, 48, 64, 96):
        rng = np.random.default_rng(seed + 1000 + size)
        frames = [place_face(f, size, rng) for f in faces]
        cells = []
        for label, det in variants.items():
            det.detect(frames[0][0])
            hits, t = 0, 0.0
            for frame, (x, y, s) in frames:
                t0 = time.perf_counter()
                found = det.detect(frame)
                t += time.perf_counter() - t0
                hits += any(box_iou(f.box, (x, y, s, s)) > 0.5 for f in found)
            rec, ms = hits / len(frames), 1000.0 * t / len(frames)
            out.setdefault(str(size), {})[label] = {"recall": rec, "ms_per_frame": ms}
            cells.append(f"{label}: {100 * rec:.0f}% / {ms:.0f}")
        print(f"  face {size:3d}px  " + "  ".join(cells), flush=True)
    return out


# Sample images of scikit-image that hold no human face (astronaut and camera do; chelsea is a cat).
FACE_FREE = ("brick", "grass", "gravel", "coffee", "coins", "hubble_deep_field", "immunohistochemistry", "moon",
             "page", "rocket", "text", "retina", "clock", "colorwheel", "cell", "logo", "chelsea")
COMPARE_FRAMES = ((640, 480), (1280, 720))
COMPARE_SIZES = (48, 96, 192)
SCORES = (0.5, 0.6, 0.7, 0.8, 0.9)
BY_SCORE = "yunet-960"  # the variant whose recall and false positives are also reported per score threshold


def face_free_images(rng: np.random.Generator, crops_per_image: int = 4) -> list[tuple[str, np.ndarray]]:
    """scikit-image's face-free samples as they are, plus random crops of them resized to each frame size."""
    import skimage.data

    out = []
    for name in FACE_FREE:
        im = np.asarray(getattr(skimage.data, name)())
        if im.ndim == 2:
            im = cv2.cvtColor(im, cv2.COLOR_GRAY2BGR)
        else:
            im = cv2.cvtColor(im[..., :3], cv2.COLOR_RGB2BGR)
        out.append((name, im))
        h, w = im.shape[:2]
        for k in range(crops_per_image):
            W, H = COMPARE_FRAMES[k % len(COMPARE_FRAMES)]
            cw = int(rng.integers(w // 3, w + 1))
            ch = min(h, max(8, round(cw * H / W)))
            x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            crop = cv2.resize(im[y : y + ch, x : x + cw], (W, H), interpolation=cv2.INTER_CUBIC)
            out.append((f"{name}-crop{k}-{W}x{H}", crop))
    return out


def compare(faces, models: Path, args) -> dict:
    """Haar vs the bundled YuNet: recall, false positives on face-free images, ms per frame."""
    dets = {"haar": HaarDetector()}
    path = models / "face_detection_yunet_2023mar.onnx"
    # Built with a low score threshold: the detections are filtered afterwards for each threshold.
    for label, size in (("yunet-640", 640), ("yunet-800", 800), ("yunet-960", 960), ("yunet-native", None)):
        dets[label] = YuNetDetector(path if path.is_file() else None, score_threshold=min(SCORES), input_size=size)
    default = YuNetDetector()
    keep = {name: (lambda f: f.score >= default.score_threshold) if name.startswith("yunet") else (lambda f: True)
            for name in dets}
    out: dict = {"recall": {}, "false_positives": {}, "ms_per_frame": {}, "yunet_by_score": {}}
    print(f"compare: {len(faces)} PublicTest faces, sizes {COMPARE_SIZES} px, frames {COMPARE_FRAMES}; "
          f"YuNet score >= {default.score_threshold}, min_face {default.min_face:g}")
    timed: dict[str, list] = {}  # frames with 96-px faces, timed at the end, both sizes in turn
    by_score_hits = {t: 0 for t in SCORES}
    by_score_total = 0
    for W, H in COMPARE_FRAMES:
        for size in COMPARE_SIZES:
            rng = np.random.default_rng(args.seed + size + W)
            frames = [place_face(f, size, rng, frame=(W, H)) for f in faces]
            for name, det in dets.items():
                hits = 0
                for frame, (x, y, s) in frames:
                    found = det.detect(frame)
                    ious = [(box_iou(f.box, (x, y, s, s)), f.score) for f in found]
                    hits += any(v > 0.5 and keep[name](f) for (v, _), f in zip(ious, found))
                    if name == BY_SCORE:
                        by_score_total += 1
                        for t in SCORES:
                            by_score_hits[t] += any(v > 0.5 and sc >= t for v, sc in ious)
                rec = hits / len(frames)
                out["recall"].setdefault(f"{W}x{H}", {}).setdefault(str(size), {})[name] = rec
                print(f"  {W}x{H} face {size:3d}px  {name:12s} recall {rec:.3f}", flush=True)
            if size == COMPARE_SIZES[1]:
                timed[f"{W}x{H}"] = [f for f, _ in frames[: args.time_frames]]
    # Both frame sizes and all detectors timed in turn on the same frames, so that load from other
    # processes falls on all of them alike.
    pairs = [(key, frames) for key, frames in timed.items()]
    for i in range(max(len(f) for _, f in pairs)):
        for key, frames in pairs:
            if i < len(frames):
                for name, ms in time_interleaved(dets, frames[i : i + 1], args.repeats).items():
                    out["ms_per_frame"].setdefault(key, {}).setdefault(name, []).append(ms)
    for key in out["ms_per_frame"]:
        for name, values in out["ms_per_frame"][key].items():
            out["ms_per_frame"][key][name] = float(np.mean(values))
            print(f"  {key} {name:12s} {out['ms_per_frame'][key][name]:.1f} ms/frame", flush=True)
    try:
        free = face_free_images(np.random.default_rng(args.seed))
    except ImportError:
        print("skipping false positives: scikit-image is not installed")
        free = []
    if free:
        by_score_fp = {t: 0 for t in SCORES}
        for name, det in dets.items():
            boxes = images = 0
            for label, im in free:
                found = [f for f in det.detect(im) if keep[name](f)]
                boxes += len(found)
                images += bool(found)
                if name == BY_SCORE:
                    raw = det.detect(im)
                    for t in SCORES:
                        by_score_fp[t] += sum(f.score >= t for f in raw)
                if found and args.verbose:
                    print(f"    {name}: {label}: " + ", ".join(f"{f.score:.2f}@{[round(v) for v in f.box]}" for f in found))
            out["false_positives"][name] = {"images": len(free), "images_with_a_box": images, "boxes": boxes}
            print(f"  face-free ({len(free)} images) {name:12s} boxes {boxes}, images with a box {images}", flush=True)
        for t in SCORES:
            out["yunet_by_score"][str(t)] = {"recall": by_score_hits[t] / by_score_total,
                                             "false_positive_boxes": by_score_fp[t], "face_free_images": len(free)}
            print(f"  {BY_SCORE} score >= {t}: recall {by_score_hits[t] / by_score_total:.3f} (all frames, sizes), "
                  f"false boxes {by_score_fp[t]} on {len(free)} face-free images")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="../shared/data/fer2013.npz")
    ap.add_argument("--models", default="../shared/models")
    ap.add_argument("-n", "--num", type=int, default=200, help="PublicTest faces (first n)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[48, 96, 200], help="face sizes in px")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--time-frames", type=int, default=50, help="frames timed per detector and size")
    ap.add_argument("--repeats", type=int, default=3, help="timing passes (best pass per frame is kept)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument(
        "--small-faces", action="store_true", help="also sweep YuNet's enlargement and Haar's floor on 32-96 px faces"
    )
    ap.add_argument("--compare", action="store_true",
                    help="only Haar vs the bundled YuNet (recall on 640x480 and 1280x720, face-free images, ms)")
    ap.add_argument("-v", "--verbose", action="store_true", help="with --compare: list every false positive")
    args = ap.parse_args(argv)

    with np.load(args.data) as d:
        idx = np.flatnonzero(d["usage"] == 1)[: args.num]
        faces = d["images"][idx]
    models = Path(args.models)
    if args.compare:
        print(f"OpenCV {cv2.__version__}, {platform.processor() or platform.machine()}, {cv2.getNumberOfCPUs()} CPUs, "
              f"OpenCV threads {cv2.getNumThreads()}; load average " + " ".join(f"{v:.2f}" for v in os.getloadavg()))
        results = compare(faces, models, args)
        results["load_average_after"] = os.getloadavg()
        if args.json:
            args.json.write_text(json.dumps(results, indent=2))
            print(f"wrote {args.json}")
        return 0
    detectors = {"haar": HaarDetector()}
    yunet = models / "face_detection_yunet_2023mar.onnx"
    ssd = models / "opencv_face_detector_uint8.pb"
    if yunet.is_file():
        detectors["yunet"] = YuNetDetector(yunet)  # defaults: the network sees a 640-px copy
        detectors["yunet@1x"] = YuNetDetector(yunet, input_size=None)  # frame at its own scale
    else:
        print(f"skipping YuNet: {yunet} not found")
    if ssd.is_file():
        detectors["ssd"] = SSDDetector(ssd)
    else:
        print(f"skipping SSD: {ssd} not found")

    print(
        f"OpenCV {cv2.__version__}, numpy {np.__version__}, Python {platform.python_version()}, "
        f"{cv2.getNumberOfCPUs()} CPUs, OpenCV threads {cv2.getNumThreads()}; "
        f"{len(faces)} PublicTest faces, frame {FRAME_W}x{FRAME_H}; load average "
        + " ".join(f"{v:.2f}" for v in os.getloadavg())
    )
    results: dict = {"frame": [FRAME_W, FRAME_H], "n": int(len(faces)), "sizes": args.sizes, "detectors": {}}
    matched: dict[str, list] = {name: [] for name in detectors}  # (frame, box, face, gt)
    rows = []
    for size in args.sizes:
        rng = np.random.default_rng(args.seed + size)
        frames = [place_face(f, size, rng) for f in faces]
        for name, det in detectors.items():
            det.detect(frames[0][0])  # warm-up
            hits, extra = 0, 0
            ious = []
            for (frame, (x, y, s)), face in zip(frames, faces):
                found = det.detect(frame)
                gt = (x, y, s, s)
                scores = [box_iou(f.box, gt) for f in found]
                extra += sum(v < 0.3 for v in scores)
                if scores and max(scores) > 0.5:
                    hits += 1
                    best = found[int(np.argmax(scores))]
                    ious.append(max(scores))
                    matched[name].append((frame, best.box, face, (x, y, s)))
            row = {
                "detector": name,
                "face_px": size,
                "recall": hits / len(faces),
                "mean_iou_found": float(np.mean(ious)) if ious else 0.0,
                "extra_per_frame": extra / len(faces),
                "ms_per_frame": time_detector(det, [f for f, _ in frames[: args.time_frames]], args.repeats),
            }
            rows.append(row)
            print(
                f"{name:6s} face {size:3d}px  recall {row['recall']:.3f}  IoU(found) {row['mean_iou_found']:.3f}  "
                f"extra/frame {row['extra_per_frame']:.3f}  {row['ms_per_frame']:.1f} ms/frame",
                flush=True,
            )
    results["rows"] = rows

    margins = np.round(np.arange(-0.25, 0.3001, 0.01), 2)
    offsets = np.round(np.arange(-0.10, 0.1001, 0.01), 2)
    print("\ncrop framing (pooled over face sizes; margin/offset as in fexsdk.crops.square_box):")
    for name, items in matched.items():
        if not items:
            continue
        frames_, boxes, fs, gts = zip(*items)
        boxes_a = np.array(boxes, dtype=np.float64)
        gts_a = np.array(gts, dtype=np.float64)
        grid = square_iou_grid(boxes_a, gts_a, margins, offsets)
        i, j = np.unravel_index(np.argmax(grid), grid.shape)
        m_best, o_best = float(margins[i]), float(offsets[j])
        ratio = gts_a[:, 2] / np.maximum(boxes_a[:, 2], boxes_a[:, 3])
        dy = (gts_a[:, 1] + gts_a[:, 2] / 2 - boxes_a[:, 1] - boxes_a[:, 3] / 2) / gts_a[:, 2]
        aspect = boxes_a[:, 2] / boxes_a[:, 3]
        # Refine on what the generator actually sees: the crop's mean abs error, on a
        # finer 2-D grid around the IoU optimum.
        l1_grid = {
            (float(m), float(o)): crop_l1(frames_, boxes, fs, float(m), float(o))
            for m in np.round(np.arange(m_best - 0.08, m_best + 0.0801, 0.02), 2)
            for o in np.round(np.arange(o_best - 0.03, o_best + 0.0301, 0.01), 2)
        }
        (m_l1, o_l1), l1_best = min(l1_grid.items(), key=lambda kv: kv[1])
        l1_zero = crop_l1(frames_, boxes, fs, 0.0, 0.0)
        l1_wide = crop_l1(frames_, boxes, fs, 0.25, 0.0)  # a common "add 25% context" choice
        # The floor: crops cut from the true squares (only resampling error is left).
        l1_oracle = crop_l1(frames_, [(x, y, s, s) for x, y, s in gts], fs, 0.0, 0.0)
        det = detectors[name]
        info = {
            "matched": len(items),
            "best_margin": m_best,
            "best_offset": o_best,
            "mean_iou_at_best": float(grid[i, j]),
            "mean_iou_margin0_offset0": float(grid[np.argmin(np.abs(margins)), np.argmin(np.abs(offsets))]),
            "median_true_side_over_box_side": float(np.median(ratio)),
            "median_centre_dy_over_side": float(np.median(dy)),
            "median_box_aspect_w_over_h": float(np.median(aspect)),
            "l1_best_margin": m_l1,
            "l1_best_offset": o_l1,
            "crop_l1_best": l1_best,
            "crop_l1_by_margin_at_l1_offset": {m: v for (m, o), v in l1_grid.items() if o == o_l1},
            "crop_l1_margin0_offset0": l1_zero,
            "crop_l1_margin0.25": l1_wide,
            "crop_l1_true_square": l1_oracle,
            "class_defaults": {"crop_margin": det.crop_margin, "crop_offset": det.crop_offset},
            "crop_l1_class_defaults": crop_l1(frames_, boxes, fs, det.crop_margin, det.crop_offset),
        }
        results["detectors"][name] = info
        print(
            f"{name:6s} n={len(items)}  best margin {m_best:+.2f} offset {o_best:+.2f} (mean IoU "
            f"{info['mean_iou_at_best']:.3f}; margin 0/offset 0: {info['mean_iou_margin0_offset0']:.3f})  "
            f"median side ratio {info['median_true_side_over_box_side']:.3f}, "
            f"dy {info['median_centre_dy_over_side']:+.3f}, "
            f"box w/h {info['median_box_aspect_w_over_h']:.2f}"
        )
        print(
            f"        crop L1 (gray levels): best {l1_best:.2f} at margin {m_l1:+.2f} offset {o_l1:+.2f}; "
            f"margin 0 offset 0: {l1_zero:.2f}; class defaults ({det.crop_margin:+.2f}, "
            f"{det.crop_offset:+.2f}): {info['crop_l1_class_defaults']:.2f}; by margin at offset {o_l1:+.2f}: "
            + ", ".join(f"{m:+.2f}: {v:.2f}" for m, v in info["crop_l1_by_margin_at_l1_offset"].items())
            + f"; margin +0.25: {l1_wide:.2f}; true square: {l1_oracle:.2f}"
        )
    if args.small_faces:
        results["small_faces"] = small_face_sweep(faces[:100], models, args.seed)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
