"""`fex demo` end to end on a video file: frames per second, latency and stage times, one face or four.

    python benchmarks/demo_fps.py                     # levers A/B at 640x480, the 1280x720 rows, 4 faces at 1280x720
    python benchmarks/demo_fps.py --sizes 1280x720x4 --variants fpf2 int8-fpf2
    python benchmarks/demo_fps.py --variants before 480-thread int8 --rounds 2
    python benchmarks/demo_fps.py --avx2-limits       # OpenCV held to AVX2 (see below)
    python benchmarks/demo_fps.py --json demo.json

The clip: one FER2013 PublicTest face (from --data, default ../shared/data/fer2013.npz; without
it scikit-image's astronaut) placed large on a textured colour background and drifting slowly
(about 1 px per frame), written as H.264 .mp4 at 30 fps, 640x480 and 1280x720; and "1280x720x4":
four real colour faces from docs/photos side by side, each drifting. Each run is the
real `fex demo` path (fexsdk.video.run_demo: the reader thread decoding the file, detection every
``--detect-every`` frames and tracking, Transfer's crop, generate and paste, and with a file the
ffmpeg writer, H.264 .mp4) headless, once without an output file and once with one.

Reported per run: FPS end to end (frames / seconds of the loop; the model is loaded before),
capture-to-output latency p50/p95, the demo's own stage means (read: waiting for the decoder; detect per
detection; crop, generate, paste per frame with faces; write: handing the frame to ffmpeg),
and the CPU it cost: this process (all its threads) and ffmpeg's (the writer), in ms per frame.
Two cores give 33 ms of CPU per frame at 60 FPS: CPU per frame above that cannot reach 60 FPS
there, whatever overlaps. Variants of one size run interleaved, ``--rounds`` times, and the
median is reported (the slower middle run for an even count), so slow spells of a shared machine hit them alike; the load average is
printed before and after.

--avx2-limits re-runs this script with latency_machine.AVX2_LIMITS set (OpenCV then dispatches
to its AVX2 kernels: YuNet, resizing, colour conversion). onnxruntime picks its kernels from
cpuid and has no such switch, so the generator still uses AVX-512 where the CPU has it: such
figures are labelled "AVX-512 CPU with AVX2 limits where settable", never an AVX2 machine's.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
if (REPO / "fexsdk").is_dir() and str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # run from a checkout: use its code
HERE = str(Path(__file__).resolve().parent)
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from fexsdk.video.writer import open_video_sink  # noqa: E402
from fexsdk.faces import YuNetDetector  # noqa: E402
from fexsdk.options import TransferOptions  # noqa: E402
from fexsdk.transfer import DEFAULT_MODEL, Transfer  # noqa: E402
from fexsdk.video import DemoConfig, run_demo  # noqa: E402

from latency_machine import cpu_facts, isa_line, restart_with_avx2_limits, versions  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "data" / "fer2013.npz"
#: (frame size, side of each face's picture in pixels, faces): one FER2013 face, or real colour photo faces side by side.
SIZES = {"640x480": ((640, 480), 200, 1), "1280x720": ((1280, 720), 300, 1), "1280x720x4": ((1280, 720), 300, 4)}
#: Colour photos (docs/photos, sources in its SOURCES.md) whose first face fills the multi-face clips.
PHOTO_FACES = ("astronaut.jpg", "obama-official.jpg", "grace-hopper.jpg", "giunchedi-dark.jpg")
#: The settings timed, by key: (label, settings). "before" is the demo as it was before issue 14.
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "before": ("before: full-size detection, inline", dict(detect_size=None, detect_thread=False)),
    "480": ("detector on a 480-px copy, inline", dict(detect_size=480, detect_thread=False)),
    "320": ("detector on a 320-px copy, inline", dict(detect_size=320, detect_thread=False)),
    "480-thread": ("480-px copy + detector thread (default)", dict(detect_size=480, detect_thread=True)),
    "320-thread": ("320-px copy + detector thread", dict(detect_size=320, detect_thread=True)),
    "480-thread-ort1": ("default, onnxruntime 1 thread", dict(detect_size=480, detect_thread=True, threads=1)),
    "int8": ("default + int8 model", dict(detect_size=480, detect_thread=True, int8=True)),
    "320-int8": ("320-px copy + thread + int8 model", dict(detect_size=320, detect_thread=True, int8=True)),
    "fpf2": ("default + --faces-per-frame 2", dict(detect_size=480, detect_thread=True, faces_per_frame=2)),
    "320-fpf2": ("320-px copy + thread + --faces-per-frame 2", dict(detect_size=320, detect_thread=True, faces_per_frame=2)),
    "int8-fpf2": ("default + int8 + --faces-per-frame 2", dict(detect_size=480, detect_thread=True, int8=True,
                                                              faces_per_frame=2)),
}
#: Timed at the first size by default; later sizes get LATER_SIZES.
FIRST_SIZE = ["before", "480", "320", "480-thread", "320-thread", "480-thread-ort1", "int8", "320-int8"]
LATER_SIZES = ["before", "480-thread", "int8"]
#: The multi-face clip's own list (its faces are about 170 px: 320 still finds them).
MULTI_FACE = ["480-thread", "int8", "fpf2", "320-fpf2", "int8-fpf2"]


def _face_image(data: Optional[Path]) -> tuple[np.ndarray, str]:
    """A BGR face picture, square, face filling most of it: a FER2013 PublicTest face YuNet finds, or the astronaut."""
    if data is not None and data.is_file():
        with np.load(data) as d:
            faces = d["images"][d["usage"] == 1][:50]
        det = YuNetDetector(input_size=None)
        for i, face in enumerate(faces):
            big = cv2.cvtColor(cv2.resize(face, (200, 200), interpolation=cv2.INTER_CUBIC), cv2.COLOR_GRAY2BGR)
            canvas = np.full((400, 400, 3), 128, np.uint8)
            canvas[100:300, 100:300] = big
            if det.detect(canvas):
                return big, f"FER2013 PublicTest face {i} ({data.name})"
    from skimage import data as skdata

    astro = cv2.cvtColor(skdata.astronaut(), cv2.COLOR_RGB2BGR)
    return astro[0:260, 110:370], "scikit-image astronaut (head and shoulders)"


def photo_faces(n: int) -> list[np.ndarray]:
    """Head-and-shoulders squares cut around the first face YuNet finds in each of PHOTO_FACES (colour)."""
    det = YuNetDetector(input_size=None)
    out = []
    for name in PHOTO_FACES[:n]:
        img = cv2.imread(str(REPO / "docs" / "photos" / name))
        if img is None:
            raise FileNotFoundError(f"docs/photos/{name} is missing: the multi-face clip needs it")
        x, y, fw, fh = (float(v) for v in det.detect(img)[0].box[:4])
        side = int(1.35 * max(fw, fh))
        x0, y0 = int(x + fw / 2 - side / 2), int(y + fh / 2 - side / 2)
        pad = cv2.copyMakeBorder(img, side, side, side, side, cv2.BORDER_REPLICATE)
        out.append(pad[y0 + side : y0 + 2 * side, x0 + side : x0 + 2 * side])
    return out


def make_clip(path: Path, size: tuple[int, int], face_px: int, face: np.ndarray | list[np.ndarray], frames: int,
              fps: float = 30.0) -> None:
    """Faces side by side, each drifting slowly (a sine, at most ~1 px/frame, out of phase) over a textured
    colour background, as H.264 .mp4."""
    faces = face if isinstance(face, list) else [face]
    w, h = size
    rng = np.random.default_rng(0)
    noise = cv2.resize(rng.integers(0, 255, (h // 8, w // 8, 3), dtype=np.uint8), (w, h), interpolation=cv2.INTER_CUBIC)
    ramp = np.linspace(0, 60, w, dtype=np.float32)[None, :, None]
    background = np.clip(cv2.GaussianBlur(noise, (0, 0), 2).astype(np.float32) * 0.6 + ramp + 30, 0, 255).astype(np.uint8)
    cell = w // len(faces)
    face_px = min(face_px, cell - 20)
    bigs = [cv2.resize(f, (face_px, round(face_px * f.shape[0] / f.shape[1])), interpolation=cv2.INTER_CUBIC)
            for f in faces]
    amp = min(60.0, (cell - face_px) / 2 - 5)
    sink = open_video_sink(path, fps, size)
    try:
        for i in range(frames):
            f = background.copy()
            for k, big in enumerate(bigs):
                fh = big.shape[0]
                x = round(k * cell + (cell - face_px) / 2 + amp * np.sin(2 * np.pi * i / 240 + k))
                y = (h - fh) // 2
                f[y : y + fh, x : x + face_px] = big
            sink.write(f)
    finally:
        sink.close()


def one_run(clip: Path, out: Optional[Path], transfer: Transfer, settings: dict[str, Any], detect_every: int) -> dict[str, Any]:
    """``fex demo --input clip [--output out] --headless`` with ``settings``; FPS, stage times and CPU per frame."""
    cfg = DemoConfig(input=str(clip), output=None if out is None else str(out), headless=True, overlay=False,
                     quiet=True, progress=False, detect_every=detect_every,
                     transfer=TransferOptions(detect_size=settings["detect_size"]), detect_thread=settings["detect_thread"],
                     faces_per_frame=settings.get("faces_per_frame"))
    cpu0, kids0 = time.process_time(), resource.getrusage(resource.RUSAGE_CHILDREN)
    stats = run_demo(cfg, transfer=transfer)
    cpu1, kids1 = time.process_time(), resource.getrusage(resource.RUSAGE_CHILDREN)
    n = max(1, stats.frames)
    kids = (kids1.ru_utime + kids1.ru_stime) - (kids0.ru_utime + kids0.ru_stime)
    lat = stats.latency_summary()
    return {"fps": stats.fps, "frames": stats.frames, "tracks": stats.tracks, "detections": stats.detections,
            "latency_p50_ms": lat["p50"], "latency_p95_ms": lat["p95"],
            "faces_generated": stats.faces_generated, "faces_reused": stats.faces_reused,
            "stages_ms": {k: round(v, 2) for k, v in stats.timings_ms.items()},
            "cpu_ms_per_frame": 1000 * (cpu1 - cpu0) / n, "ffmpeg_cpu_ms_per_frame": 1000 * kids / n}


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median FPS, the slower of the two middle ones for an even count (its stage times
    with it), plus every run's FPS."""
    ordered = sorted(runs, key=lambda r: r["fps"])
    mid = dict(ordered[(len(ordered) - 1) // 2])
    mid["fps_runs"] = [round(r["fps"], 1) for r in runs]
    return mid


def _load() -> str:
    try:
        return "/".join(f"{v:.1f}" for v in os.getloadavg())
    except (AttributeError, OSError):
        return "?"


def machine_line() -> dict[str, Any]:
    cpu = cpu_facts()
    return {"cpu": cpu["name"], "usable_cpus": cpu["usable_cpus"], "isa": isa_line(cpu),
            "opencv_cpu_features": cv2.getCPUFeaturesLine(), "opencv_threads": cv2.getNumThreads(),
            "versions": versions()}


def int8_model(tmp: Path, data: Optional[Path]) -> tuple[Optional[Path], str]:
    """An int8 copy of the bundled model (fexsdk.export.quantize) and its error against FP32; (None, why) where it cannot."""
    try:
        from fexsdk.export.quantize import quantize_onnx
    except ImportError as exc:
        return None, f"no int8 row: {exc}"
    src = DEFAULT_MODEL
    if data is not None and data.is_file():
        with np.load(data) as d:
            train = d["images"][d["usage"] == 0][:256]
            test = d["images"][d["usage"] == 1][:64]
    else:
        from latency_models import synthetic_faces

        train, test = synthetic_faces(256, seed=1), synthetic_faces(64, seed=2)
    dst = tmp / "default.int8.onnx"
    quantize_onnx(src, dst, train)
    fp32, q = Transfer(src, device="cpu", threads=1), Transfer(dst, device="cpu", threads=1)
    a = fp32.generate(test, "happy", seed=0).astype(np.float64)
    b = q.generate(test, "happy", seed=0).astype(np.float64)
    d = np.abs(a - b)  # uint8 faces: grey levels
    return dst, f"int8 vs FP32 on {len(test)} faces: {d.mean():.2f} grey levels mean, {d.max():.0f} max"


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=240, help="frames per clip (default 240, 8 s at 30 fps)")
    p.add_argument("--rounds", type=int, default=3, help="runs of every variant, interleaved; the median is reported")
    p.add_argument("--detect-every", type=int, default=3, help="as fex demo --detect-every (default 3)")
    p.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), metavar="KEY",
                   help=f"settings to time at every size, of: {', '.join(VARIANTS)} (default: all at the first size, "
                        f"{', '.join(LATER_SIZES)} at the others); int8 ones need fexsdk.export (the train extra)")
    p.add_argument("--data", default=str(DEFAULT_DATA), help="FER2013 .npz for the face (default: ../shared/data/fer2013.npz)")
    p.add_argument("--avx2-limits", action="store_true", help="hold OpenCV to AVX2 (see above)")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    if args.frames < 10 or args.rounds < 1 or args.detect_every < 1:
        p.error("--frames must be >= 10, --rounds and --detect-every >= 1")
    if args.avx2_limits:
        restart_with_avx2_limits()
    data = Path(args.data) if args.data else None

    machine = machine_line()
    print(f"CPU: {machine['cpu']}, {machine['usable_cpus']} usable; ISA: {machine['isa']}")
    print(f"OpenCV {cv2.__version__} ({machine['opencv_threads']} threads): {machine['opencv_cpu_features']}; "
          f"onnxruntime {machine['versions']['onnxruntime']}")
    print(f"load average before: {_load()}")
    face, face_desc = _face_image(data)
    res: dict[str, Any] = {"machine": machine, "face": face_desc, "frames": args.frames, "rounds": args.rounds,
                           "detect_every": args.detect_every, "load_before": _load(), "rows": []}
    with tempfile.TemporaryDirectory(prefix="fexsdk-demo-fps-") as tmp_name:
        tmp = Path(tmp_name)
        int8_path = None
        wanted = set(args.variants or FIRST_SIZE + LATER_SIZES + MULTI_FACE)
        if any(VARIANTS[k][1].get("int8") for k in wanted):
            int8_path, note = int8_model(tmp, data)
            res["int8"] = note
            print(note)
        transfers: dict[tuple[bool, Optional[int]], Transfer] = {}
        for si, size_name in enumerate(args.sizes):
            size, face_px, n_faces = SIZES[size_name]
            clip = tmp / f"clip_{size_name}.mp4"
            make_clip(clip, size, face_px, face if n_faces == 1 else photo_faces(n_faces), args.frames)
            keys = args.variants or (FIRST_SIZE if si == 0 else MULTI_FACE if n_faces > 1 else LATER_SIZES)
            chosen = [VARIANTS[k] for k in keys if int8_path is not None or not VARIANTS[k][1].get("int8")]
            runs: dict[tuple[str, bool], list[dict[str, Any]]] = {}
            for _ in range(args.rounds):
                for name, settings in chosen:
                    key = (bool(settings.get("int8")), settings.get("threads"))
                    if key not in transfers:
                        transfers[key] = Transfer(int8_path if key[0] else None, device="cpu", threads=key[1])
                    for write in (False, True):
                        out = tmp / "out.mp4" if write else None
                        runs.setdefault((name, write), []).append(one_run(clip, out, transfers[key], settings, args.detect_every))
            for (name, write), rs in runs.items():
                row = {"size": size_name, "variant": name, "output": "H.264 .mp4" if write else "none", **_median_run(rs)}
                res["rows"].append(row)
                s = row["stages_ms"]
                print(f"{size_name:10s} {name:44s} out={row['output']:10s} {row['fps']:6.1f} FPS "
                      f"(runs {row['fps_runs']}) latency p50/p95 {row['latency_p50_ms']:.0f}/{row['latency_p95_ms']:.0f} ms; "
                      + " ".join(f"{k} {v:.1f}" for k, v in s.items()) + " ms; CPU/frame: "
                      f"process {row['cpu_ms_per_frame']:5.1f} ms, ffmpeg {row['ffmpeg_cpu_ms_per_frame']:4.1f} ms; "
                      f"tracks {row['tracks']}", flush=True)
    res["load_after"] = _load()
    print(f"load average after: {res['load_after']}")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2, default=str))
        print(f"wrote {args.json}")
    return res


if __name__ == "__main__":
    main()
