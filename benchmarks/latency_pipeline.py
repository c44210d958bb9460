"""One video frame through Transfer's public stages, each stage timed.

Part of ``benchmarks/latency.py`` (see its docstring for what is timed and how).
"""

from __future__ import annotations

import time
from typing import Any, Optional

import numpy as np
import cv2

from fexsdk.faces import Face
from fexsdk.transfer import Transfer

from latency_models import FACE_COUNTS, FRAME_SIZES, PIPELINE_TARGETS, scene, synthetic_faces
from latency_backends import stats_ms, time_calls


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
        records = tr.crop(img, tr.frame(img, faces))
        t3 = time.perf_counter()
        tr.generate_faces(records, targets, seed=0)
        t4 = time.perf_counter()
        tr.paste(img, records)
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
