"""Package a trained generator as the model that ships inside fexsdk.

    python -m export.bundle runs/NAME/last.pt [--eval runs/eval/NAME] [--command "how it was trained"]

Exports FP32 ONNX (with parity check) to ``fexsdk/models/default.onnx`` and writes
the model card ``fexsdk/models/default.json`` (data, preset, steps, scores, command).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from export.onnx_export import export_onnx
from fexsdk.transfer import DEFAULT_MODEL
from training.checkpoint import load_checkpoint

MAX_BYTES = 20 * 1024 * 1024


def bundle(checkpoint: str, eval_dir: str | None = None, command: str = "") -> Path:
    ckpt = load_checkpoint(checkpoint)
    report = export_onnx(checkpoint, DEFAULT_MODEL)
    if report.size_bytes > MAX_BYTES:
        DEFAULT_MODEL.unlink()
        raise ValueError(f"model is {report.size_bytes / 1e6:.1f} MB; the bundled model must stay under 20 MB")
    tc = ckpt.get("train_config", {})
    card = {
        "model": DEFAULT_MODEL.name,
        "preset": ckpt.get("preset"),
        "generator_config": ckpt["generator_config"],
        "data": {"train": f"{tc.get('data') or 'synthetic'} (Training split)", "domains": ckpt.get("domains")},
        "steps": int(ckpt["step"]),
        "epochs": round(float(ckpt.get("epoch", 0.0)), 3),
        "batch_size": tc.get("batch_size"),
        "precision": tc.get("precision"),
        "training_commit": ckpt.get("commit", ""),
        "train_command": command,
        "onnx_parity_max_abs_diff": report.max_abs_diff,
        "size_bytes": report.size_bytes,
    }
    if eval_dir:
        card["evaluation"] = json.loads((Path(eval_dir) / "results.json").read_text())
    DEFAULT_MODEL.with_suffix(".json").write_text(json.dumps(card, indent=2) + "\n")
    return DEFAULT_MODEL


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("--eval", help="a `fex eval` output folder whose results go into the card")
    p.add_argument("--command", default="", help="the training command, recorded in the card")
    args = p.parse_args()
    path = bundle(args.checkpoint, args.eval, args.command)
    print(f"wrote {path} and {path.with_suffix('.json')}")


if __name__ == "__main__":
    main()
