"""The ``fex`` command. Each subcommand imports what it needs only when it runs."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from fexsdk._extras import require


def _int_range(low: int, high: int | None = None):
    """argparse type: an integer in [low, high]; the error names the option (argparse adds it)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low or (high is not None and value > high):
            want = f">= {low}" if high is None else f"from {low} to {high}"
            raise argparse.ArgumentTypeError(f"must be an integer {want}, got {value}")
        return value
    return parse


def _float_range(low: float, high: float = math.inf, low_open: bool = False, high_open: bool = False):
    """argparse type: a finite number in the interval (brackets as given)."""
    lo, hi = ("(" if low_open else "["), (")" if high_open else "]")
    span = f"> {low:g}" if high == math.inf and low_open else f">= {low:g}" if high == math.inf else f"in {lo}{low:g}, {high:g}{hi}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        ok = math.isfinite(value) and (value > low if low_open else value >= low) and \
            (value < high if high_open else value <= high)
        if not ok:
            raise argparse.ArgumentTypeError(f"must be a number {span}, got {text}")
        return value
    return parse


_SEED = _int_range(0)
_POSITIVE = _int_range(1)
_PORT = _int_range(1, 65535)


def _check_out_folder(out: str | None, option: str = "--out") -> None:
    """An output folder may exist (as a folder) or not yet; a file there is refused before any work."""
    if out is not None and Path(out).exists() and not Path(out).is_dir():
        raise ValueError(f"{option} {out} is a file; give a folder (it is created if missing)")


def _check_image_input(path: str) -> None:
    if Path(path).is_dir():
        raise ValueError(f"{path} is a folder, not an image file")
    if not Path(path).is_file():
        raise FileNotFoundError(f"image file not found: {path}")


def _check_image_output(output: str, inputs: Sequence[str] = ()) -> None:
    """Refuse an output image path that cannot be written, before any work is done."""
    import cv2

    path = Path(output)
    if path.is_dir():
        raise ValueError(f"output {path} is a folder; give a file name such as {path / 'out.png'}")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise FileNotFoundError(f"output folder does not exist: {parent} (create it first)")
    if not path.suffix:
        raise ValueError(f"output {path} has no extension; add one that names the image format, e.g. {path}.png or .jpg")
    if not cv2.haveImageWriter(str(path)):
        raise ValueError(f"output {path}: OpenCV cannot write {path.suffix!r} images; use .png, .jpg, .bmp, .tif or .webp")
    for src in inputs:
        if Path(src).exists() and path.exists() and os.path.samefile(src, path):
            raise ValueError(f"output {path} is the input image; writing it would replace your original: choose another name")


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a StarGAN variant (needs the [train] extra)")
    p.add_argument("--preset", default="skip-dropout-small", help="model preset (see --list-presets)")
    p.add_argument("--list-presets", action="store_true", help="print the presets and exit")
    p.add_argument("--data", help="FER2013: fer2013.csv, the Kaggle folder layout, or an .npz")
    p.add_argument("--synthetic", type=_int_range(0), default=0, metavar="N", help="train on N synthetic images instead of --data")
    p.add_argument("--second-domain", metavar="DIR", help="image folder DIR/<emotion>/* trained jointly via the mask vector")
    p.add_argument("--out", default="runs/default",
                   help="output folder (checkpoints, logs, plots, samples); a non-empty one needs --resume or --overwrite")
    p.add_argument("--overwrite", action="store_true",
                   help="train from scratch into a non-empty --out, replacing its checkpoints and logs")
    p.add_argument("--epochs", type=_float_range(0, low_open=True), default=1.0,
                   help="passes over the training images (fractions allowed; default 1)")
    p.add_argument("--max-steps", type=_POSITIVE, help="stop after this many iterations (overrides --epochs)")
    p.add_argument("--batch-size", type=_int_range(2), default=16, help="images per batch (default 16)")
    p.add_argument("--lr-g", type=_float_range(0, low_open=True), default=1e-4, help="generator learning rate (default 1e-4)")
    p.add_argument("--lr-d", type=_float_range(0, low_open=True), default=1e-4,
                   help="discriminator learning rate (default 1e-4)")
    p.add_argument("--n-critic", type=_POSITIVE, help="D steps per G step (preset: 5 for WGAN-GP, 1 for the R1 recipe)")
    p.add_argument("--adversarial", choices=["wgan-gp", "r1"], help="adversarial loss (preset's by default)")
    p.add_argument("--upsample", choices=["transpose", "nearest", "bilinear"],
                   help="generator up-sampling: transposed conv or resize + conv (preset's by default)")
    p.add_argument("--ema-beta", type=_float_range(0, 1, high_open=True), default=0.999,
                   help="decay of the EMA generator (0: off)")
    p.add_argument("--decay-start", type=_float_range(0, 1), default=0.5,
                   help="fraction of the run after which LRs decay linearly to 0")
    p.add_argument("--input-skip", action=argparse.BooleanOptionalAction, default=None,
                   help="generator output = input + learned residual (default: the preset's)")
    p.add_argument("--perceptual", action=argparse.BooleanOptionalAction, default=None,
                   help="force the perceptual (feature) cycle loss on or off (default: the preset's)")
    p.add_argument("--perceptual-start-epoch", type=_float_range(0), help="epoch the perceptual loss switches in (preset: 40)")
    p.add_argument("--perceptual-mode", choices=["replace", "add"], help="feature loss replaces or adds to the pixel loss")
    p.add_argument("--lambda-cls", type=_float_range(0), help="weight of the classification loss (preset: 1, StarGAN's)")
    p.add_argument("--conv-dim", type=_POSITIVE, help="base channels of G and D (overrides the preset's width)")
    p.add_argument("--n-res", type=_int_range(0), help="residual blocks in G (overrides the preset's depth)")
    p.add_argument("--image-size", type=_int_range(16), default=48, help="training image side in pixels (default 48, FER2013's)")
    p.add_argument("--channels", type=int, default=1, choices=[1, 3], help="1 (gray, FER2013) or 3 (RGB)")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help="auto: bf16 autocast on CUDA and on CPUs with AVX-512 BF16/AMX, else fp32 (bf16 is ~16x slower on AVX2)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--threads", type=_POSITIVE, help="torch CPU threads (default: torch's; 1 beside other heavy work)")
    p.add_argument("--seed", type=_SEED, default=0, help="seeds initialisation, data order and noise (default 0)")
    p.add_argument("--log-every", type=_POSITIVE, default=50, help="write scalars.csv every N iterations")
    p.add_argument("--sample-every", type=_POSITIVE, default=500, help="write a sample grid every N iterations")
    p.add_argument("--ckpt-every", type=_POSITIVE, default=500, help="validate and write checkpoints every N iterations")
    p.add_argument("--resume", action="store_true", help="continue exactly from OUT/last.pt")
    p.add_argument("--time-limit", type=_float_range(0, low_open=True), metavar="MIN",
                   help="stop cleanly after MIN minutes with a checkpoint; rerun with --resume to go on")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs still written)")
    p.add_argument("--time-schedule", action="store_true",
                   help="with --time-limit: decay the learning rate over the time limit, not the steps (leased GPU runs)")
    p.set_defaults(func=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    require("torch", "train", "fex train")
    from training.presets import get_preset, list_presets
    from training.trainer import TrainConfig, Trainer

    if args.list_presets:
        for name in list_presets():
            print(f"{name:20s} {get_preset(name).description}")
        return 0
    cfg = TrainConfig(
        preset=args.preset, data=args.data, synthetic=args.synthetic, second_domain=args.second_domain, out=args.out,
        epochs=args.epochs, max_steps=args.max_steps, batch_size=args.batch_size, lr_g=args.lr_g, lr_d=args.lr_d,
        n_critic=args.n_critic, adversarial=args.adversarial, upsample=args.upsample, ema_beta=args.ema_beta,
        decay_start=args.decay_start, input_skip=args.input_skip, perceptual=args.perceptual, perceptual_start_epoch=args.perceptual_start_epoch,
        perceptual_mode=args.perceptual_mode, lambda_cls=args.lambda_cls, conv_dim=args.conv_dim, n_res=args.n_res,
        image_size=args.image_size, channels=args.channels,
        precision=args.precision, device=args.device, threads=args.threads, seed=args.seed, log_every=args.log_every,
        sample_every=args.sample_every, ckpt_every=args.ckpt_every, resume=args.resume, progress=not args.no_progress,
        time_limit_min=args.time_limit, time_schedule=args.time_schedule, overwrite=args.overwrite,
    )
    trainer = Trainer(cfg)
    out = trainer.fit()
    if trainer.step < trainer.total_steps:  # stopped by --time-limit; the trainer said how to go on
        return 0
    print(f"done: checkpoints in {out}/last.pt and {out}/best.pt, losses in {out}/losses.png")
    print(f"export it with: fex export onnx {out}/last.pt -o model.onnx")
    return 0


def _add_train_classifier(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train-classifier", help="train the ResNet18 expression classifier (needs the [train] extra)")
    p.add_argument("--data", required=True, help="FER2013: fer2013.csv, the Kaggle folder layout, or an .npz")
    p.add_argument("--out", default="runs/classifier", help="output folder (checkpoints and logs)")
    p.add_argument("--epochs", type=_POSITIVE, default=30, help="passes over the training images (default 30)")
    p.add_argument("--batch-size", type=_POSITIVE, default=64, help="images per batch (default 64)")
    p.add_argument("--lr", type=_float_range(0, low_open=True), default=0.1, help="peak SGD learning rate (default 0.1)")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="bf16", help="bf16 autocast or fp32 (default bf16)")
    p.add_argument("--threads", type=_POSITIVE, help="torch CPU threads")
    p.add_argument("--seed", type=_SEED, default=0, help="seeds initialisation, data order and augmentation")
    p.add_argument("--resume", action="store_true", help="continue exactly from OUT/last.pt")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_train_classifier)


def _run_train_classifier(args: argparse.Namespace) -> int:
    require("torch", "train", "fex train-classifier")
    from training.classifier import ClassifierTrainConfig, train_classifier

    _check_out_folder(args.out)
    out = train_classifier(ClassifierTrainConfig(
        data=args.data, out=args.out, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        precision=args.precision, threads=args.threads, seed=args.seed, resume=args.resume,
        progress=not args.no_progress))
    print(f"done: {out}/best.pt (best PublicTest accuracy) and {out}/last.pt")
    return 0


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="Table 2: classifier accuracy on real and generated test images, realism, identity")
    p.add_argument("--generator", help="training checkpoint (.pt) or exported .onnx; omit to score real images only")
    p.add_argument("--classifier", help="classifier (.safetensors or training checkpoint)")
    p.add_argument("--data", help="FER2013 csv, Kaggle folder or any .npz with images and labels")
    p.add_argument("--split", default="public", help="train, public, private, test or all (default: public)")
    p.add_argument("--seeds", type=_SEED, nargs="+", default=[0, 1, 2], help="test-time noise seeds")
    p.add_argument("--limit", type=_POSITIVE, help="use only the first N images (quick checks)")
    p.add_argument("--name", help="row name (default: the generator's folder name)")
    p.add_argument("--out", help="folder for results.json, results.md and confusion PNGs")
    p.add_argument("--table", nargs="+", metavar="DIR", help="print one table from several result folders and exit")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda: where the classifier and a .pt generator run")
    p.set_defaults(func=_run_eval)


def _run_eval(args: argparse.Namespace) -> int:
    require("torch", "train", "fex eval")
    from pathlib import Path

    from training.evaluate import evaluate, markdown_table, read_results, write_results

    if args.table:
        print(markdown_table([read_results(Path(d)) for d in args.table]), end="")
        return 0
    if not args.classifier or not args.data:
        raise ValueError("fex eval needs --classifier and --data (or --table DIR ...)")
    _check_out_folder(args.out)
    from training.classifier import load_classifier
    from training.data import FaceDataset, load_dataset

    clf = load_classifier(args.classifier)
    data = load_dataset(args.data, args.split, clf.config.image_size, clf.config.in_channels)
    if args.limit is not None:
        data = FaceDataset(data.images[: args.limit], data.labels[: args.limit], data.name)
    result = evaluate(data, clf, args.generator, seeds=args.seeds, name=args.name, classifier_name=str(args.classifier),
                      device=args.device)
    print(markdown_table([result]), end="")
    if args.out:
        write_results(result, Path(args.out))
        print(f"wrote {args.out}/results.json, results.md and confusion matrices")
    return 0


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a generator to ONNX or a TensorRT engine")
    kinds = p.add_subparsers(dest="kind", required=True)
    o = kinds.add_parser("onnx", help="training checkpoint -> ONNX (needs the [train] extra)")
    o.add_argument("checkpoint", help="training checkpoint (OUT/last.pt or OUT/best.pt of fex train)")
    o.add_argument("-o", "--output", default="model.onnx", help="ONNX file to write (default model.onnx)")
    o.add_argument("--opset", type=_POSITIVE, default=17, help="ONNX opset (default 17)")
    o.add_argument("--fp16", action="store_true", help="half-precision weights and activations (float32 inputs/outputs)")
    o.add_argument("--no-check", action="store_true", help="skip the PyTorch vs onnxruntime parity check")
    o.set_defaults(func=_run_export_onnx)
    q = kinds.add_parser("int8", help="ONNX -> int8 (QDQ) ONNX for fast CPU inference, calibrated on real faces")
    q.add_argument("onnx", help="fp32 ONNX model exported by fex export onnx")
    q.add_argument("-o", "--output", required=True, help="int8 ONNX file to write")
    q.add_argument("--data", required=True, help="FER2013 csv/folder/npz: calibration faces from its Training split")
    q.add_argument("--count", type=_POSITIVE, default=256, help="number of calibration faces")
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
    e.add_argument("--workspace-mib", type=_POSITIVE, default=1024, help="builder workspace limit in MiB (default 1024)")
    e.set_defaults(func=_run_export_engine)


def _run_export_onnx(args: argparse.Namespace) -> int:
    require("torch", "train", "fex export onnx")
    require("onnx", "train", "fex export onnx")
    from export.onnx_export import export_onnx

    report = export_onnx(args.checkpoint, args.output, opset=args.opset, fp16=args.fp16, check=not args.no_check)
    print(f"wrote {report.path} ({report.size_bytes / 1e6:.2f} MB, {report.metadata.precision}, preset "
          f"{report.metadata.preset or '?'}, noise size {report.metadata.noise_size})")
    if not args.no_check:
        print(f"parity: max |PyTorch - onnxruntime| = {report.max_abs_diff:.2e} (bound {report.tolerance:.0e})")
    print(f"use it: fex apply photo.jpg -e surprise -o out.jpg --model {report.path}")
    return 0


def _run_export_int8(args: argparse.Namespace) -> int:
    require("onnx", "train", "fex export int8")
    from fexsdk.metadata import read_onnx_metadata
    from fexsdk.quantize import quantize_onnx
    from training.data import load_dataset

    meta = read_onnx_metadata(args.onnx)
    faces = load_dataset(args.data, "train", meta.image_size, meta.channels).images[: args.count]
    report = quantize_onnx(args.onnx, args.output, faces)
    print(f"wrote {report.path} ({report.size_bytes / 1e6:.2f} MB, {report.quantized_nodes} quantized nodes, "
          f"calibrated on {report.calibration_count} faces)")
    print(f"use it: fex apply photo.jpg -e surprise -o out.jpg --model {report.path}")
    return 0


def _run_export_classifier(args: argparse.Namespace) -> int:
    require("torch", "train", "fex export classifier")
    require("safetensors", "train", "fex export classifier")
    import torch

    from training.classifier import export_classifier, load_classifier
    from training.data import load_dataset
    from training.evaluate import evaluate
    from training.trainer import git_commit

    ckpt = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
    card = {"architecture": "ResNet18, 3x3 stride-2 stem, no max-pool, 48x48 gray", "epoch": ckpt.get("epoch"),
            "train_config": ckpt.get("train_config"), "commit": git_commit(), "source_checkpoint": str(args.checkpoint)}
    path = export_classifier(args.checkpoint, args.output, card)
    if args.data:
        result = evaluate(load_dataset(args.data, "public"), load_classifier(path), None, progress=False)
        card.update(data=str(args.data), split="PublicTest", accuracy=result.accuracy_real,
                    per_class_accuracy=result.per_class_real, confusion=result.confusion_real)
        path.with_suffix(".json").write_text(json.dumps(card, indent=2) + "\n")
        print(f"PublicTest accuracy of the fp16 classifier: {100 * result.accuracy_real:.2f}%")
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB) and {path.with_suffix('.json')}")
    return 0


def _run_export_engine(args: argparse.Namespace) -> int:
    from fexsdk._trt import BatchProfile
    from export.tensorrt_engine import EngineOptions, build_engine

    options = EngineOptions(precision=args.precision, profile=BatchProfile.parse(args.batch),
                            timing_cache=args.timing_cache or None, verbosity=args.verbosity,
                            workspace_mib=args.workspace_mib)
    path = build_engine(args.onnx, args.output, options)
    print(f"wrote {path}")
    print(f"use it: fex apply photo.jpg -e surprise -o out.jpg --model {path}")
    return 0


def _add_runtime(sub: argparse._SubParsersAction) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--model", help="model file (.onnx, .engine, .pt); default: the bundled model")
    common.add_argument("--detector", help="yunet (default: the YuNet model shipped in fexsdk), haar (OpenCV's cascade), a YuNet .onnx path or an SSD .pb path")
    common.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                        help="where the model runs: auto (a GPU when the backend has one), cpu or cuda")
    common.add_argument("--threads", type=_POSITIVE, help="CPU threads for the model (default: the CPUs, at most 4)")
    common.add_argument("--seed", type=_SEED, default=0, help="test-time noise seed (same seed, same result)")
    common.add_argument("--blend", choices=["residual", "replace"], default="residual",
                        help="residual: add the model's change to the face's luminance (default); replace: paste its output")
    a = sub.add_parser("apply", parents=[common], help="change the expression of every face in an image")
    a.add_argument("input", nargs="+",
                   help="image file (8-bit, 16-bit or float; gray, BGR or with alpha; EXIF orientation applied), "
                        "or several, a folder or a glob such as 'photos/*.jpg': then -o is a folder")
    a.add_argument("-e", "--emotion", required=True,
                   help="target emotion: name, alias or index 0-6; or intensities name=0.7,name=0.3 (each in [0, 1], sum <= 1)")
    a.add_argument("-o", "--output", required=True,
                   help="image file to write, its extension naming the format (.png, .jpg); for several inputs, a "
                        "folder (created if missing) that gets one image per input, with the input's name")
    a.add_argument("--strength", type=_float_range(0, 2), default=1.0,
                   help="scales the change, 0-2 (0 = unchanged, 1 = the model's change; default 1)")
    a.set_defaults(func=_run_apply)
    g = sub.add_parser("grid", parents=[common], help="each face and its 7 expressions side by side")
    g.add_argument("input", help="image file with one or more faces")
    g.add_argument("-o", "--output", required=True, help="image file to write; its extension names the format (.png, .jpg)")
    g.add_argument("--cell", type=_int_range(16, 2048), default=144, help="size of each cell in pixels (16-2048)")
    g.set_defaults(func=_run_grid)


def parse_target(text: str):
    """"surprise" -> "surprise"; "3" -> 3; "happy=0.7,surprise=0.3" -> {"happy": 0.7, "surprise": 0.3}.

    An emotion given twice is refused (it would otherwise keep the last value)."""
    if "=" not in text:
        return int(text.strip()) if text.strip().isdigit() else text
    out = {}
    for part in text.split(","):
        name, _, value = part.partition("=")
        name = name.strip()
        if name in out:
            raise ValueError(f"-e: {name!r} is given twice in {text!r}; give each emotion once")
        try:
            out[name] = float(value)
        except ValueError:
            raise ValueError(f"bad intensity in {part!r}: expected name=number") from None
    return out


def _transfer(args: argparse.Namespace):
    from fexsdk.transfer import Transfer

    return Transfer(args.model, device=args.device, detector=args.detector, blend=args.blend, threads=args.threads)


def _write(path: str, image) -> None:
    import cv2

    if not cv2.imwrite(path, image):
        raise ValueError(f"OpenCV could not write {path} (disk full, or no permission?)")


def _apply_jobs(inputs: Sequence[str], output: str) -> list[tuple[Path, Path]]:
    """(input, output) pairs for ``fex apply``: one file to a file, or several/a folder/a glob to a folder."""
    import glob

    import cv2

    from fexsdk.images import expand_inputs, output_names

    single = len(inputs) == 1 and not Path(inputs[0]).is_dir() and (Path(inputs[0]).exists() or not glob.has_magic(inputs[0]))
    if single:
        _check_image_input(inputs[0])
        _check_image_output(output, inputs)
        return [(Path(inputs[0]), Path(output))]
    folder = Path(output)
    what = f"{inputs[0]} is a folder, not an image file" if len(inputs) == 1 and Path(inputs[0]).is_dir() \
        else f"{len(inputs)} inputs" if len(inputs) > 1 else f"{inputs[0]} is a pattern"
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{what}: to write one image per input, give -o an output folder ({output} is a file)")
    if not folder.exists() and folder.suffix and cv2.haveImageWriter(str(folder)):
        raise ValueError(f"{what}: to write one image per input, give -o an output folder, not an image name ({output})")
    sources = expand_inputs(inputs)
    jobs = list(zip(sources, output_names(sources, folder)))
    for src, dst in jobs:
        if dst.exists() and os.path.samefile(src, dst):
            raise ValueError(f"output {dst} is the input image; writing it would replace your original: "
                             "choose another output folder")
    return jobs


def _run_apply(args: argparse.Namespace) -> int:
    import warnings

    from tqdm import tqdm

    from fexsdk.emotions import canonical_name, target_vector
    from fexsdk.images import read_image
    from fexsdk.transfer import to_uint8

    jobs = _apply_jobs(args.input, args.output)
    target = parse_target(args.emotion)
    target_vector(target)  # a bad -e fails before the model is loaded
    tr = _transfer(args)
    what = args.emotion if isinstance(target, dict) else canonical_name(target)
    if len(jobs) > 1:
        jobs[0][1].parent.mkdir(parents=True, exist_ok=True)
    skipped, changed, faces_total = [], 0, 0
    bar = tqdm(jobs, unit="image", disable=len(jobs) == 1, file=sys.stderr, dynamic_ncols=True)
    for src, dst in bar:
        bar.set_postfix_str(src.name, refresh=False)
        try:
            # A truncated file is not processed: its lower part would be grey.
            image = to_uint8(read_image(src, truncated="error"), str(src))
            image, faces = tr.apply(image, target, seed=args.seed, strength=args.strength, return_faces=True)
        except (ValueError, FileNotFoundError) as exc:
            if len(jobs) == 1:
                raise  # one image: refused with an error (exit 2), as every bad input is
            skipped.append(src)
            tqdm.write(f"fex apply: warning: {exc}; skipped", file=sys.stderr)
            continue
        _write(str(dst), image)
        changed += bool(faces)
        faces_total += len(faces)
        if len(jobs) == 1:
            print(f"{len(faces)} face(s) changed to {what}; wrote {dst}" if faces
                  else f"no face found in {src}; wrote it unchanged to {dst}")
    bar.close()
    if len(jobs) > 1:
        done = len(jobs) - len(skipped)
        print(f"{done} image(s) written to {args.output}: {faces_total} face(s) changed to {what} in {changed}, "
              f"no face in {done - changed}" + (f"; {len(skipped)} skipped" if skipped else ""))
    return 1 if skipped else 0


def _run_grid(args: argparse.Namespace) -> int:
    import cv2
    import numpy as np

    from fexsdk.crops import crop_box_for
    from fexsdk.emotions import EMOTIONS
    from fexsdk.transfer import load_image

    _check_image_input(args.input)
    _check_image_output(args.output, [args.input])
    tr = _transfer(args)
    image = load_image(args.input)
    bgr = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR) if image.ndim == 2 else image[..., :3]
    faces = tr.detect(bgr)
    if not faces:
        raise ValueError(f"no face found in {args.input}")
    rows = []
    for i, face in enumerate(faces):
        box = crop_box_for(face, tr.detector)
        cells = []
        for emotion in (None, *EMOTIONS):
            out = bgr if emotion is None else tr.apply(bgr, emotion, faces=[face], seed=args.seed + i)
            crop = out[max(box.y, 0): box.y2, max(box.x, 0): box.x2]
            cell = cv2.resize(crop, (args.cell, args.cell), interpolation=cv2.INTER_AREA)
            cv2.putText(cell, emotion or "input", (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
            cells.append(cell)
        rows.append(np.concatenate(cells, axis=1))
    _write(args.output, np.concatenate(rows, axis=0))
    print(f"wrote {args.output}: {len(faces)} face(s) x (input + {len(EMOTIONS)} emotions)")
    return 0


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="live expression transfer on a webcam or a video file",
                       description="Change the expression of every face in a webcam or video, live. Window keys: "
                                   "1-7 emotion, n/p next/previous, s save a frame, space original/transfer, q/Esc quit. "
                                   "With --output or --headless no window is opened.")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--camera", type=_int_range(0), metavar="INDEX", help="webcam index (default: 0 when no --input)")
    src.add_argument("--input", metavar="VIDEO", help="a video file (every frame is processed, in order) or a stream URL")
    p.add_argument("--output", metavar="VIDEO",
                   help="write the result here (.mp4: mp4v, .avi: MJPG, .mkv: lossless FFV1; not the input); no window")
    p.add_argument("--headless", action="store_true", help="no window (with no --output: process and print statistics)")
    p.add_argument("--no-overlay", action="store_true", help="do not draw the emotion, FPS and timings on the frames")
    p.add_argument("--model", help="model file (.onnx, .engine, .pt); default: the bundled model")
    p.add_argument("--detector", help="yunet (default: the YuNet model shipped in fexsdk), haar (OpenCV's cascade), a YuNet .onnx path or an SSD .pb path")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="where the model runs: auto (a GPU when the backend has one), cpu or cuda")
    p.add_argument("--threads", type=_POSITIVE, help="CPU threads for the model (default: the CPUs, at most 4)")
    p.add_argument("--blend", choices=["residual", "replace"], default="residual",
                   help="residual: add the model's change to the face's luminance (default); replace: paste its output")
    p.add_argument("-e", "--emotion", default="happy", help="emotion to start with: name, alias or index 0-6 (default: happy)")
    p.add_argument("--seed", type=_SEED, default=0, help="noise seed; face track i keeps seed+i for its whole life")
    p.add_argument("--fresh-noise", action="store_true", help="draw new dropout noise every frame (flickers; for comparison)")
    p.add_argument("--strength", type=_float_range(0, 2), default=1.0,
                   help="scales the change, 0-2 (0 = unchanged, 1 = the model's change; default 1)")
    p.add_argument("--detect-every", type=_POSITIVE, default=3, metavar="K", help="run the face detector every K frames, track in between")
    p.add_argument("--smoothing", type=_float_range(0, 1, high_open=True), default=0.5,
                   help="box smoothing in [0, 1): weight of the previous box")
    p.add_argument("--velocity", type=_float_range(0, 1), default=0.3,
                   help="in [0, 1]: how fast boxes learn a face's motion and move on between detections (0: hold them)")
    p.add_argument("--drop-after", type=_POSITIVE, default=3, metavar="N", help="forget a face not seen for N detections in a row")
    p.add_argument("--max-frames", type=_POSITIVE, metavar="N", help="stop after N frames")
    p.add_argument("--fourcc", help="output codec, 4 characters (e.g. mp4v, MJPG, FFV1, XVID)")
    p.add_argument("--save-dir", default=".", help="where the s key saves frames")
    p.add_argument("--timeout", type=_float_range(0, low_open=True), default=10.0,
                   help="seconds to wait for the source to open or give a frame")
    p.set_defaults(func=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from fexsdk.video import DemoConfig, run_demo

    cfg = DemoConfig(
        camera=args.camera, input=args.input, output=args.output, headless=args.headless, overlay=not args.no_overlay,
        model=args.model, detector=args.detector, device=args.device, threads=args.threads, blend=args.blend,
        emotion=args.emotion, seed=None if args.fresh_noise else args.seed, strength=args.strength,
        detect_every=args.detect_every, smoothing=args.smoothing, velocity=args.velocity, drop_after=args.drop_after,
        max_frames=args.max_frames, fourcc=args.fourcc, save_dir=args.save_dir, open_timeout=args.timeout,
        read_timeout=args.timeout,
    )
    stats = run_demo(cfg)
    t = stats.timings_ms
    print(f"{stats.frames} frames ({stats.reason}) in {stats.seconds:.1f} s, {stats.fps:.1f} fps; "
          f"{stats.tracks} face track(s); detect {t.get('detect', 0):.1f} ms, generate {t.get('generate', 0):.1f} ms, "
          f"paste {t.get('paste', 0):.1f} ms")
    if stats.dropped:
        print(f"dropped {stats.dropped} stale camera frame(s) to keep up")
    if stats.output:
        print(f"wrote {stats.output} ({stats.written} frames)")
    if stats.reason == "truncated":
        print(f"fex demo: warning: {args.input} ended after {stats.read} of the {stats.expected_frames} frames its "
              "header announces: the file is truncated or damaged", file=sys.stderr)
        return 1
    return 0


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="HTTP service on Ray Serve, batching faces across requests (needs the [serve] extra)",
                       description="Start fexsdk as an HTTP service on a local Ray instance and print its URL. Endpoints: "
                                   "POST /apply, /apply.json, /generate; GET /healthz, /model, /stats. For a cluster, "
                                   "deploy serve.yaml with `serve deploy` instead.")
    p.add_argument("--model", help="model file (.onnx, .engine); default: the bundled model")
    p.add_argument("--replicas", type=_POSITIVE, default=1, help="replicas (processes), each with its own model")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=_PORT, default=8000, help="TCP port to listen on (1-65535, default 8000)")
    p.add_argument("--max-batch", type=_POSITIVE, default=16, metavar="B",
                   help="faces per generator call, gathered across requests (1: no batching across requests)")
    p.add_argument("--batch-wait-ms", type=float, default=5.0, help="how long a batch waits to fill")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="where each replica's model runs: auto (a GPU when the backend has one), cpu or cuda")
    p.add_argument("--detector", help="yunet (default: the YuNet model shipped in fexsdk), haar (OpenCV's cascade), a YuNet .onnx path or an SSD .pb path")
    p.add_argument("--threads", type=_POSITIVE, help="onnxruntime CPU threads per replica")
    p.add_argument("--num-cpus", type=_POSITIVE, help="CPUs Ray may use (default: all)")
    p.set_defaults(func=_run_serve)


def _run_serve(args: argparse.Namespace) -> int:
    require("ray.serve", "serve", "fex serve")
    from fexsdk.serve import run_local

    if args.replicas < 1:
        raise ValueError(f"--replicas must be >= 1, got {args.replicas}")
    options = {"model": args.model, "device": args.device, "detector": args.detector, "threads": args.threads,
               "max_batch_size": args.max_batch, "batch_wait_s": args.batch_wait_ms / 1000.0}
    run_local(options, replicas=args.replicas, host=args.host, port=args.port, num_cpus=args.num_cpus)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fex", description="fexsdk: facial expression transfer")
    from fexsdk import __version__

    parser.add_argument("--version", action="version", version=f"fexsdk {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    _add_train_classifier(sub)
    _add_eval(sub)
    _add_export(sub)
    _add_runtime(sub)
    _add_demo(sub)
    _add_serve(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # OpenMP pools (PyTorch's) wait passively unless the user chose otherwise: spinning threads on
    # cores that other processes share slow everything down (read when torch loads, which is later).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, ImportError, RuntimeError) as exc:
        print(f"fex {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
