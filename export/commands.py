"""``fex export onnx|int8|classifier|engine``: added to ``fex`` by this package.

Loaded through the ``fexsdk.commands`` entry point (see :mod:`fexsdk.plugins`); imports no torch until
a command runs.
"""

from __future__ import annotations

import argparse

from fexsdk._extras import require
from fexsdk.cli import POSITIVE


def add_commands(sub: argparse._SubParsersAction) -> None:
    _add_export(sub)


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a generator to ONNX or a TensorRT engine")
    kinds = p.add_subparsers(dest="kind", required=True)
    o = kinds.add_parser("onnx", help="training checkpoint -> ONNX (needs the [train] extra)")
    o.add_argument("checkpoint", help="training checkpoint (OUT/last.pt or OUT/best.pt of fex train)")
    o.add_argument("-o", "--output", default="model.onnx", help="ONNX file to write (default model.onnx)")
    o.add_argument("--opset", type=POSITIVE, default=17, help="ONNX opset (default 17)")
    o.add_argument("--fp16", action="store_true", help="half-precision weights and activations (float32 inputs/outputs)")
    o.add_argument("--no-check", action="store_true", help="skip the PyTorch vs onnxruntime parity check")
    o.set_defaults(func=_run_export_onnx)
    q = kinds.add_parser("int8", help="ONNX -> int8 (QDQ) ONNX for fast CPU inference, calibrated on real faces")
    q.add_argument("onnx", help="fp32 ONNX model exported by fex export onnx")
    q.add_argument("-o", "--output", required=True, help="int8 ONNX file to write")
    q.add_argument("--data", required=True, help="FER2013 csv/folder/npz: calibration faces from its Training split")
    q.add_argument("--count", type=POSITIVE, default=256, help="number of calibration faces")
    q.set_defaults(func=_run_export_int8)
    c = kinds.add_parser("classifier", help="classifier checkpoint -> fp16 safetensors + JSON card (needs [train])")
    c.add_argument("checkpoint", help="classifier checkpoint from fex train-classifier")
    c.add_argument("-o", "--output", default="training/weights/resnet18_fer2013.safetensors",
                   help="safetensors file to write (its JSON card goes beside it)")
    c.add_argument("--data", help="evaluate on this data's PublicTest split and record the scores in the card")
    c.set_defaults(func=_run_export_classifier)
    e = kinds.add_parser("engine", help="ONNX -> TensorRT engine (needs a GPU and the [trt] or [trt-rtx] extra)")
    e.add_argument("onnx", help="ONNX model exported by fex export onnx")
    e.add_argument("-o", "--output", default="model.engine", help="engine file to write (default model.engine)")
    e.add_argument("--precision", choices=["fp16", "fp32"], default="fp16", help="engine precision (default fp16)")
    e.add_argument("--batch", default="1,4,16", help="optimisation profile over batch sizes: MIN,OPT,MAX")
    e.add_argument("--timing-cache", default="timing.cache", help="timing cache file reused across builds ('' for none)")
    e.add_argument("--verbosity", choices=["error", "warning", "info", "verbose"], default="warning",
                   help="TensorRT log level (default warning)")
    e.add_argument("--workspace-mib", type=POSITIVE, default=1024, help="builder workspace limit in MiB (default 1024)")
    e.set_defaults(func=_run_export_engine)


def _run_export_onnx(args: argparse.Namespace) -> int:
    require("torch", "train", "fex export onnx")
    require("onnx", "train", "fex export onnx")
    from fexsdk.formats import ONNX_SUFFIXES
    from fexsdk.export.onnx_export import export_onnx
    from fexsdk.export.paths import check_output_file

    check_output_file(args.output, [args.checkpoint], ONNX_SUFFIXES, "ONNX model")
    report = export_onnx(args.checkpoint, args.output, opset=args.opset, fp16=args.fp16, check=not args.no_check)
    print(f"wrote {report.path} ({report.size_bytes / 1e6:.2f} MB, {report.metadata.precision}, preset "
          f"{report.metadata.preset or '?'}, noise size {report.metadata.noise_size})")
    if not args.no_check:
        print(f"parity: max |PyTorch - onnxruntime| = {report.max_abs_diff:.2e} (bound {report.tolerance:.0e})")
    print(f"use it: fex apply photo.jpg -e surprise -o out.jpg --model {report.path}")
    return 0


def _run_export_int8(args: argparse.Namespace) -> int:
    require("onnx", "train", "fex export int8")
    from fexsdk.formats import ONNX_SUFFIXES
    from fexsdk.export.paths import check_output_file
    from fexsdk.export.quantize import quantize_onnx
    from fexsdk.metadata import read_metadata
    from fexsdk.training.data import load_dataset

    check_output_file(args.output, [args.onnx], ONNX_SUFFIXES, "ONNX model")
    meta = read_metadata(args.onnx)
    faces = load_dataset(args.data, "train", meta.image_size, meta.channels).images[: args.count]
    report = quantize_onnx(args.onnx, args.output, faces)
    print(f"wrote {report.path} ({report.size_bytes / 1e6:.2f} MB, {report.quantized_nodes} quantized nodes, "
          f"calibrated on {report.calibration_count} faces)")
    print(f"use it: fex apply photo.jpg -e surprise -o out.jpg --model {report.path}")
    return 0


def _run_export_classifier(args: argparse.Namespace) -> int:
    require("torch", "train", "fex export classifier")
    require("safetensors", "train", "fex export classifier")
    from fexsdk.export.paths import check_output_file
    from fexsdk.training.classifier import export_classifier_with_card

    check_output_file(args.output, [args.checkpoint], (".safetensors",), "exported classifier")
    path, card = export_classifier_with_card(args.checkpoint, args.output, args.data)
    if "accuracy" in card:
        print(f"PublicTest accuracy of the fp16 classifier: {100 * card['accuracy']:.2f}%")
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB) and {path.with_suffix('.json')}")
    return 0


def _run_export_engine(args: argparse.Namespace) -> int:
    from fexsdk._trt import BatchProfile
    from fexsdk.formats import ENGINE_SUFFIXES
    from fexsdk.export.paths import check_output_file
    from fexsdk.export.tensorrt_engine import EngineOptions, build_engine

    check_output_file(args.output, [args.onnx], ENGINE_SUFFIXES, "TensorRT engine")
    options = EngineOptions(precision=args.precision, profile=BatchProfile.parse(args.batch),
                            timing_cache=args.timing_cache or None, verbosity=args.verbosity,
                            workspace_mib=args.workspace_mib)
    path = build_engine(args.onnx, args.output, options)
    print(f"wrote {path}")
    print(f"use it: fex apply photo.jpg -e surprise -o out.jpg --model {path}")
    return 0
