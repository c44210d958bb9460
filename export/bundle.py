"""Package a trained generator as the model that ships inside fexsdk.

    python -m fexsdk.export.bundle runs/NAME/last.pt [--name default] [--eval runs/eval/NAME]
        [--command "how it was trained"] [--grid-data ../shared/data/fer2013.npz --grid docs/grid-default.png]
        [--discriminator training/weights/default-discriminator.safetensors]

Exports FP32 ONNX (with parity check) to ``fexsdk/models/NAME.onnx`` and writes
the model card ``fexsdk/models/NAME.json`` (data, preset, steps, scores, command).
``default`` is the model used when none is named; any other name ships as an
option that users pick by name (``Transfer("NAME")``, ``--model NAME``).
With ``--grid-data`` it also draws PublicTest faces and their 7 generated expressions
from the exported file, as the runtime sees it. With ``--discriminator`` it also saves the
checkpoint's D (not part of the package: training/weights/), so that a later fine-tune of the
shipped model can start with a trained D (``fex train --init-discriminator``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fexsdk.export.onnx_export import export_onnx
from fexsdk.emotions import EMOTIONS
from fexsdk.metadata import ONNX_KEY, ModelMetadata, read_metadata
from fexsdk.grid import EMOTION_COLUMNS, image_grid
from fexsdk.transfer import BUNDLED_DIR, Transfer
from fexsdk.training.checkpoint import load_checkpoint, save_discriminator

MAX_BYTES = 20 * 1024 * 1024


def model_card(meta: ModelMetadata, ckpt: dict, command: str = "", parity: float = float("nan"),
               size_bytes: int = 0, name: str = "default") -> dict:
    """The bundled model's card: the metadata written into the ONNX file (the same object, under
    ``metadata``), plus how it was trained, which the file does not hold."""
    tc = ckpt.get("train_config", {})
    return {
        "model": f"{name}.onnx",
        "preset": meta.preset,
        "metadata": json.loads(meta.to_json()),
        "data": {"train": f"{tc.get('data') or 'synthetic'} (Training split)", "domains": meta.domains},
        "steps": meta.training_step,
        "epochs": round(float(ckpt.get("epoch", 0.0)), 3),
        "batch_size": tc.get("batch_size"),
        "train_precision": tc.get("precision"),
        "train_command": command,
        "onnx_parity_max_abs_diff": parity,
        "size_bytes": size_bytes,
    }


def set_default_strength(model: Path, strengths: dict[str, float]) -> ModelMetadata:
    """Write per-emotion default strengths (``ModelMetadata.default_strength``) into an ONNX file's metadata."""
    import onnx

    meta = read_metadata(model)
    meta.default_strength = {k: float(v) for k, v in strengths.items()}
    meta.validate()  # emotion names and the [0, 2] range
    graph = onnx.load(str(model))
    for entry in graph.metadata_props:
        if entry.key == ONNX_KEY:
            entry.value = meta.to_json()
    onnx.save(graph, str(model))
    return meta


def bundle(checkpoint: str, eval_dir: str | None = None, command: str = "", name: str = "default",
           default_strength: dict[str, float] | None = None) -> Path:
    if not name.isidentifier() or name.startswith("face_detection"):
        raise ValueError(f"bundle name must be a plain word (letters, digits, _), got {name!r}")
    ckpt = load_checkpoint(checkpoint)
    model = BUNDLED_DIR / f"{name}.onnx"
    report = export_onnx(checkpoint, model)
    if report.size_bytes > MAX_BYTES:
        model.unlink()
        raise ValueError(f"model is {report.size_bytes / 1e6:.1f} MB; a bundled model must stay under 20 MB")
    meta = set_default_strength(model, default_strength) if default_strength else report.metadata
    card = model_card(meta, ckpt, command, report.max_abs_diff, model.stat().st_size, name)  # after the metadata edit
    if eval_dir:
        card["evaluation"] = json.loads((Path(eval_dir) / "results.json").read_text())
    model.with_suffix(".json").write_text(json.dumps(card, indent=2) + "\n")
    return model


def draw_grid(model: str | Path, data: str, out: str | Path, per_class: int = 2, seed: int = 0,
              scale: int = 2) -> Path:
    """Rows: the first ``per_class`` PublicTest faces of each emotion; columns: the input, then the 7 targets."""
    import cv2
    import numpy as np

    from fexsdk.training.data import load_dataset

    test = load_dataset(data, "public")
    rows = np.concatenate([np.flatnonzero(test.labels == k)[:per_class] for k in range(len(EMOTIONS))])
    faces = test.images[rows, 0]
    tr = Transfer(str(model), device="cpu")
    cols = [faces] + [tr.generate(faces, emotion, seed=seed) for emotion in EMOTIONS]
    grid = image_grid(cols, EMOTION_COLUMNS, scale=scale)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out), grid)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("--name", default="default", help="bundled name: default (used when none is named) or an option")
    p.add_argument("--eval", help="a `fex eval` output folder whose results go into the card")
    p.add_argument("--command", default="", help="the training command, recorded in the card")
    p.add_argument("--grid-data", help="FER2013 file whose PublicTest faces go into a sample grid")
    p.add_argument("--grid", default="docs/grid-default.png", help="where the sample grid goes")
    p.add_argument("--default-strength", metavar="JSON",
                   help="per-emotion default strengths (a JSON file, emotion -> strength, as benchmarks/believable.py "
                        "--sweep --choose-json writes it), stored in the model's metadata and card")
    p.add_argument("--believable", metavar="JSON", help="a benchmarks/believable.py --json file whose summaries go into the card")
    p.add_argument("--discriminator", metavar="FILE",
                   help="also save the checkpoint's D here (.safetensors), for fine-tunes with --init-discriminator")
    args = p.parse_args()
    if args.discriminator and not args.discriminator.endswith(".safetensors"):
        p.error(f"--discriminator must name a .safetensors file, got {args.discriminator}")
    strengths = json.loads(Path(args.default_strength).read_text()) if args.default_strength else None
    path = bundle(args.checkpoint, args.eval, args.command, args.name, strengths)
    if args.believable:
        results = json.loads(Path(args.believable).read_text())
        card = json.loads(path.with_suffix(".json").read_text())
        card["believable"] = {m: {k: v for k, v in r.items() if k != "cases"} for m, r in results.items()}
        cases = [c for r in results.values() for c in r.get("cases", [])]
        faces = {(c["photo"], c["face"]) for c in cases}
        card["believable"]["photos"] = (f"docs/photos ({len({p for p, _ in faces})} photos, {len(faces)} faces; "
                                        "benchmarks/believable.py with jittered landmarks, seed 0)")
        path.with_suffix(".json").write_text(json.dumps(card, indent=2) + "\n")
    print(f"wrote {path} and {path.with_suffix('.json')}")
    if args.discriminator:
        print(f"wrote {save_discriminator(load_checkpoint(args.checkpoint), args.discriminator)}")
    if args.grid_data:
        print(f"wrote {draw_grid(path, args.grid_data, args.grid)}")


if __name__ == "__main__":
    main()
