"""Generator latency per backend and batch size, and the whole frame pipeline stage by stage.

    python benchmarks/latency.py                                   # the bundled model
    python benchmarks/latency.py --preset skip-dropout             # an untrained paper-size generator
    python benchmarks/latency.py --model model.onnx --checkpoint last.pt \\
        --data ../shared/data/fer2013.npz --json latency.json

Backends, each timed where it is available and otherwise listed as skipped with the reason:

    torch-cpu         PyTorch eager on the CPU (needs torch; the weights come from --checkpoint or,
                      by default, from the ONNX model's own initializers: the same model)
    torch-cuda        PyTorch eager on the GPU
    torch-cuda-graph  the same model replayed as one CUDA graph per batch size
    ort-cpu           onnxruntime, CPU, float32
    ort-cpu-int8      onnxruntime, CPU, int8 QDQ model from fexsdk.export.quantize (static, calibrated)
    ort-cuda          onnxruntime with the CUDAExecutionProvider
    trt-fp32/-fp16    TensorRT engines built here from the ONNX model

The parts: latency_machine.py (hardware facts), latency_models.py (faces, frames, models),
latency_flops.py (FLOP counts), latency_backends.py (backends and the timer), latency_pipeline.py
(the frame pipeline) and latency_report.py (the printed table).

Every timing is of the backend's ``run(image, label, noise)`` on float32 numpy arrays, as
``fexsdk.Transfer`` calls it (so GPU rows include the host<->device copies). Latency is the
median (p50) and 95th percentile over the timed calls after a warm-up; faces/s = batch / p50.
"vs torch" is the speed-up over PyTorch eager on the same device in the same run.

FLOPs per face count the multiply-adds of every Conv and ConvTranspose (2 FLOPs each) from the
ONNX graph's inferred shapes; with the device's peak FLOP/s (estimated, or --peak-gflops /
--gpu-peak-gflops) they bound the faces/s any backend could reach. "%peak" compares a row's
achieved rate with the peak of its precision (int8 rows: the CPU's integer dot-product peak).

The pipeline part times one video frame through fexsdk's stages: JPEG decode (cv2.imdecode),
face detection, cropping, the generator and paste-back, through ``Transfer``'s public stages (frame, crop, generate_faces, paste), at 640x480 and
1280x720 with 1 and 4 faces. With --data the faces are FER2013 PublicTest faces upscaled onto a
textured background; without it they are synthetic face-like blobs, the detector is still run
and timed but its result is not used (the true boxes are passed on, as ``faces=`` would).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Optional

import numpy as np


REPO = Path(__file__).resolve().parents[1]
if (REPO / "fexsdk").is_dir() and str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # run from a checkout: use its code
HERE = str(Path(__file__).resolve().parent)
if HERE not in sys.path:
    sys.path.insert(0, HERE)  # the latency_*.py parts beside this file

from fexsdk.faces import make_detector  # noqa: E402
from fexsdk.transfer import Transfer  # noqa: E402

from latency_machine import (cpu_facts, cpu_peak_gflops, gpu_name, gpu_peaks, isa_line,  # noqa: E402
                             restart_with_avx2_limits, versions)
from latency_models import CPU_BATCHES, GPU_BATCHES, load_faces, onnx_metadata, resolve_models, synthetic_faces  # noqa: E402
from latency_flops import conv_macs_onnx, conv_macs_torch  # noqa: E402
from latency_backends import ALL_BACKENDS, Built, Skip, build_backend, model_inputs, stats_ms, time_calls  # noqa: E402
from latency_pipeline import pipeline_frames, time_pipeline  # noqa: E402
from latency_report import print_report  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_argument_group("model")
    src.add_argument("--model", help=".onnx from `fex export onnx`, or a training checkpoint .pt (default: the bundled model)")
    src.add_argument("--checkpoint", help="training checkpoint for the PyTorch rows (the same model as --model)")
    src.add_argument("--preset", help="benchmark an untrained generator of this preset instead (e.g. skip-dropout)")
    p.add_argument("--backends", nargs="+", default=list(ALL_BACKENDS), choices=ALL_BACKENDS, metavar="NAME",
                   help=f"backends to time (default: all of {', '.join(ALL_BACKENDS)})")
    p.add_argument("--batch-sizes", nargs="+", type=int, help="batch sizes (default: 1 4 16 64 on the CPU, also 256 on a GPU)")
    p.add_argument("--iters", type=int, default=50, help="timed calls per batch size at most (default 50)")
    p.add_argument("--min-iters", type=int, default=5, help="timed calls at least, even past --max-seconds (default 5)")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls first (default 3)")
    p.add_argument("--max-seconds", type=float, default=5.0, help="stop timing a cell after this long, once --min-iters are done")
    p.add_argument("--threads", type=int, help="onnxruntime intra-op threads and torch.set_num_threads (default: their own)")
    p.add_argument("--data", help="FER2013 .npz: faces for calibration, inputs and the pipeline frames (default: synthetic)")
    p.add_argument("--calib-count", type=int, default=128, help="faces to calibrate the int8 model on (default 128)")
    p.add_argument("--parity-count", type=int, default=32, help="faces to compare backends' outputs on (default 32)")
    p.add_argument("--peak-gflops", type=float, help="the CPU's peak FP32 GFLOP/s (default: estimated)")
    p.add_argument("--gpu-peak-gflops", type=float, help="the GPU's peak GFLOP/s (default: a data-sheet table)")
    p.add_argument("--no-pipeline", action="store_true", help="time the generator only")
    p.add_argument("--pipeline-backends", nargs="+", metavar="NAME", choices=ALL_BACKENDS,
                   help="backends to run the frame pipeline on (default: ort-cpu, ort-cpu-int8 and the fastest GPU one)")
    p.add_argument("--pipeline-iters", type=int, default=30, help="timed frames per configuration at most (default 30)")
    p.add_argument("--detector", help="face detector for the pipeline: 'haar' (default) or a YuNet .onnx / SSD .pb path")
    p.add_argument("--keep-models", metavar="DIR", help="keep the models made here (exported, int8, engines) in DIR")
    p.add_argument("--avx2-limits", action="store_true",
                   help="hold PyTorch and OpenCV to AVX2 on an AVX-512 CPU (onnxruntime has no switch: the figures are "
                        "labelled, never an AVX2 machine's)")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    for name in ("iters", "min_iters", "pipeline_iters", "calib_count", "parity_count"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.warmup < 0 or args.max_seconds < 0:
        p.error("--warmup and --max-seconds must be >= 0")
    if args.threads is not None and args.threads < 1:
        p.error("--threads must be >= 1")
    if args.batch_sizes and min(args.batch_sizes) < 1:
        p.error("--batch-sizes must be >= 1")
    if args.preset and (args.model or args.checkpoint):
        p.error("--preset makes its own model; leave out --model and --checkpoint")
    return args


def main(argv=None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.avx2_limits:
        restart_with_avx2_limits()
    torch_threads = None
    try:
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        torch_threads = torch.get_num_threads()
    except ImportError:
        pass

    gname, gsource = gpu_name()
    args.cpu_batches = list(args.batch_sizes or CPU_BATCHES)
    args.gpu_batches = list(args.batch_sizes or GPU_BATCHES)
    cpu = cpu_facts()
    try:
        load1 = os.getloadavg()[0]
    except (AttributeError, OSError):
        load1 = None
    machine = {"cpu": cpu, "isa": isa_line(cpu), "platform": platform.platform(), "gpu": gname, "gpu_source": gsource,
               "loadavg_1min": load1, "torch_threads": torch_threads, "versions": versions(), "busy_warning": None}
    if load1 is not None and load1 >= 0.5 * cpu["usable_cpus"] and (args.threads or 2) > 1:
        machine["busy_warning"] = (
            f"load average {load1:.1f} on {cpu['usable_cpus']} CPU(s) before starting: other processes use the cores, and "
            "multi-threaded runtimes (PyTorch's OpenMP pool most of all) can slow down many-fold when their threads are "
            "preempted. Figures are pessimistic; compare with --threads 1 or measure on an idle machine.")
        print(f"warning: {machine['busy_warning']}", file=sys.stderr)

    tmp_ctx = tempfile.TemporaryDirectory(prefix="fexsdk-latency-")
    tmp = Path(tmp_ctx.name)
    try:
        res = run(args, machine, tmp)
        if args.keep_models:
            keep = Path(args.keep_models)
            keep.mkdir(parents=True, exist_ok=True)
            for f in tmp.iterdir():
                if f.suffix in (".onnx", ".engine", ".pt"):
                    shutil.copy2(f, keep / f.name)
            res["kept_models"] = sorted(str(keep / f.name) for f in tmp.iterdir() if f.suffix in (".onnx", ".engine", ".pt"))
            if res["quantization"].get("path"):
                res["quantization"]["path"] = str(keep / Path(res["quantization"]["path"]).name)
        elif res["quantization"].get("path"):
            res["quantization"]["path"] = None  # it was in a temp dir; --keep-models DIR keeps it
    finally:
        tmp_ctx.cleanup()
    print_report(res)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(res, indent=2, default=str))
        print(f"\nwrote {args.json}")
    return res


def run(args, machine: dict[str, Any], tmp: Path) -> dict[str, Any]:
    models = resolve_models(args, tmp)
    meta = onnx_metadata(models.onnx) if models.onnx else None
    if meta is None:
        from fexsdk.export.onnx_export import metadata_for
        from fexsdk.training.checkpoint import generator_from_checkpoint, load_checkpoint

        data = load_checkpoint(models.checkpoint)
        meta = metadata_for(generator_from_checkpoint(data), data)

    train_faces, test_faces = load_faces(args.data)
    if meta.channels != 1 or meta.image_size != 48:
        train_faces = test_faces = None  # the FER2013 faces do not fit; synthesize at the model's size
    size = meta.image_size
    if train_faces is not None:
        rng = np.random.default_rng(0)
        calib = train_faces[rng.choice(len(train_faces), min(args.calib_count, len(train_faces)), replace=False)]
        calib_desc = f"FER2013 Training faces from {Path(args.data).name}"
        inputs = test_faces
        inputs_desc = "FER2013 PublicTest faces"
    else:
        calib = synthetic_faces(args.calib_count, size, seed=1)
        calib_desc = "synthetic face-like crops (no --data)"
        inputs = synthetic_faces(max(args.parity_count, 64), size, seed=2)
        inputs_desc = "synthetic face-like crops"
    if meta.channels != 1:
        calib = np.repeat(calib[:, None], meta.channels, axis=1)

    # FLOPs per face
    flops: dict[str, Any] = {}
    try:
        if models.onnx is None:
            raise ImportError("no ONNX model")
        flops = conv_macs_onnx(models.onnx)
    except ImportError as exc:
        try:
            if models.checkpoint is None:
                raise
            flops = conv_macs_torch(models.checkpoint)
        except ImportError:
            flops = {"flops": None, "error": f"needs the onnx package or torch with a checkpoint ({exc})"}
    per_face = flops.get("flops")

    # backends
    gpu_present = machine["gpu"] is not None
    built: dict[str, Built] = {}
    skipped: list[dict[str, str]] = []
    quant: dict[str, Any] = {}
    max_gpu_batch = max(args.gpu_batches)
    for key in args.backends:
        try:
            b = build_backend(key, models, args, tmp, calib, calib_desc, max_gpu_batch, quant)
            built[key] = b
        except Skip as exc:
            skipped.append({"backend": key, "reason": str(exc)})
        except Exception as exc:  # noqa: BLE001 - a backend that fails to build is reported, not fatal
            skipped.append({"backend": key, "reason": f"failed: {type(exc).__name__}: {exc}"})
    if not built:
        raise SystemExit("no backend could run here:\n" + "\n".join(f"  {s['backend']}: {s['reason']}" for s in skipped))

    # peaks
    cpu_peak, cpu_how = (args.peak_gflops, "--peak-gflops") if args.peak_gflops else cpu_peak_gflops(machine["cpu"], args.threads)
    peaks = {"cpu": {"gflops": cpu_peak, "source": cpu_how}}
    if "ort-cpu-int8" in built:
        # Integer dot products: VNNI does 4 int8 multiply-adds per 32-bit lane per instruction (4x FP32);
        # without it (pmaddubsw + pmaddwd) about 2x.
        gain = 4 if machine["cpu"]["vnni"] else 2
        peaks["cpu int8"] = {"gflops": cpu_peak * gain,
                             "source": f"{gain}x the FP32 peak ({'VNNI' if gain == 4 else 'no VNNI'}), int8 ops/s"}
    if gpu_present:
        gp = gpu_peaks(machine["gpu"], args.gpu_peak_gflops)
        peaks["gpu fp32"] = {"gflops": gp["fp32"], "source": gp["source"]}
        if any(b.precision == "fp16" for b in built.values()):
            peaks["gpu fp16"] = {"gflops": gp["fp16"], "source": gp["source"]}
    for p in peaks.values():
        p["bound_faces_per_s"] = p["gflops"] * 1e9 / per_face if (p["gflops"] and per_face) else None

    def peak_for(b: Built) -> Optional[float]:
        if b.device == "cpu":
            return peaks["cpu int8"]["gflops"] if b.precision == "int8" else cpu_peak
        return peaks.get("gpu fp16" if b.precision == "fp16" else "gpu fp32", {}).get("gflops")

    # timing
    rows = []
    for key, b in built.items():
        batches = args.gpu_batches if b.device == "cuda" else args.cpu_batches
        for n in batches:
            x, label, noise = model_inputs(b.backend.meta, inputs, n, seed=n)
            times = time_calls(lambda: b.backend.run(x, label, noise), args.warmup, args.iters, min(args.min_iters, args.iters),
                               args.max_seconds)
            s = stats_ms(times)
            fps = n / (s["p50_ms"] / 1000.0)
            gfl = fps * per_face / 1e9 if per_face else None
            pk = peak_for(b)
            rows.append({"backend": key, "name": b.backend.name, "device": b.device, "precision": b.precision, "batch": n,
                         "iters": s["n"], **{k: v for k, v in s.items() if k != "n"}, "ms_per_face": s["p50_ms"] / n,
                         "faces_per_s": fps, "gflops_per_s": gfl, "peak_fraction": (gfl / pk) if (gfl and pk) else None,
                         "speedup_vs_torch_eager": None})
            print(f"  timed {key:18s} batch {n:4d}: p50 {s['p50_ms']:9.2f} ms over {s['n']} calls", file=sys.stderr, flush=True)
    for r in rows:
        ref_key = "torch-cpu" if r["device"] == "cpu" else "torch-cuda"
        ref = next((q for q in rows if q["backend"] == ref_key and q["batch"] == r["batch"]), None)
        if ref:
            r["speedup_vs_torch_eager"] = ref["p50_ms"] / r["p50_ms"]

    # parity against the float32 onnxruntime CPU model (or whatever came first)
    ref_key = "ort-cpu" if "ort-cpu" in built else next(iter(built))
    pn = min(args.parity_count, len(inputs))
    px, plab, pnoise = model_inputs(meta, inputs, pn, seed=12345)
    reference = built[ref_key].backend.run(px, plab, pnoise)
    parity = {}
    for key, b in built.items():
        if key == ref_key:
            continue
        out = b.backend.run(px, plab, pnoise)
        d = np.abs(out.astype(np.float64) - reference)
        parity[key] = {"max_abs": float(d.max()), "mean_abs": float(d.mean()), "p99_abs": float(np.percentile(d, 99))}
    if "ort-cpu-int8" in parity:
        quant["parity_vs_fp32"] = parity["ort-cpu-int8"]

    # pipeline
    pipeline, pipe_skipped = [], []
    if not args.no_pipeline:
        keys = args.pipeline_backends
        if not keys:
            keys = [k for k in ("ort-cpu", "ort-cpu-int8") if k in built]
            gpu_keys = [k for k in ("trt-fp16", "trt-fp32", "ort-cuda", "torch-cuda") if k in built]
            keys += gpu_keys[:1]
            if not keys:
                keys = [next(iter(built))]
        detector = make_detector(args.detector)
        frames = pipeline_frames(test_faces)
        for key in keys:
            b = built.get(key)
            if b is None or b.transfer_spec is None:
                why = "not built" if b is None else "fexsdk.Transfer cannot open it"
                pipe_skipped.append({"backend": key, "reason": why})
                continue
            path, device = b.transfer_spec
            tr = Transfer(path, device=device, detector=detector, threads=args.threads)
            prow = [time_pipeline(tr, fr, test_faces is not None, args) for fr in frames]
            for r in prow:
                print(f"  pipeline {key:14s} {r['frame']:9s} {r['faces']} face(s): {r['fps']:.1f} FPS", file=sys.stderr, flush=True)
            pipeline.append({"backend": key, "backend_name": tr.backend.name, "detector": getattr(detector, "name", str(detector)),
                             "frames": "FER2013 PublicTest faces on a textured background" if test_faces is not None
                             else "synthetic face-like blobs (boxes given: detector timed, not used)",
                             "rows": prow})

    model_info = {"source": models.source, "onnx": str(models.onnx) if models.onnx else None,
                  "checkpoint": str(models.checkpoint) if models.checkpoint else None, "preset": meta.preset,
                  "image_size": meta.image_size, "channels": meta.channels, "noise_size": meta.noise_size,
                  "precision": meta.precision, "notes": models.notes}
    return {
        "machine": machine, "model": model_info, "flops": {k: v for k, v in flops.items() if k != "per_layer"},
        "flops_per_layer": flops.get("per_layer", []), "peaks": peaks,
        "options": {"backends": args.backends, "cpu_batches": args.cpu_batches, "gpu_batches": args.gpu_batches,
                    "iters": args.iters, "min_iters": args.min_iters, "warmup": args.warmup, "max_seconds": args.max_seconds,
                    "threads": args.threads, "data": args.data, "inputs": inputs_desc},
        "backends": [{"key": k, "name": b.backend.name, "device": b.device, "precision": b.precision, "notes": b.notes}
                     for k, b in built.items()],
        "rows": rows, "skipped": skipped,
        "parity_reference": ref_key, "parity_inputs": f"{pn} {inputs_desc}", "parity": parity,
        "quantization": quant, "pipeline": pipeline, "pipeline_skipped": pipe_skipped,
    }


if __name__ == "__main__":
    main()
