"""Reproduce the report's Table 2: train each of its generators with the same budget, evaluate each.

    python experiments/table2.py --data ../shared/data/fer2013.npz --classifier CLS.safetensors \\
        --out runs/table2 --epochs 2 --precision bf16 [--presets stargan skip-dropout] [--resume]
        [--conv-dim 32 --n-res 3]   # the CPU-sized budget

Each preset trains in ``OUT/<preset>`` (resumable: rerun with --resume after a kill), is
evaluated into ``OUT/eval/<preset>``, and the combined table is written to ``OUT/table2.md``.
On a GPU machine the same command trains the paper-size models (pass --device cuda).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import _checkout

_checkout.ensure()  # fexsdk.training from an install, or from this checkout

from fexsdk.training.classifier import load_classifier  # noqa: E402
from fexsdk.training.data import load_dataset  # noqa: E402
from fexsdk.training.evaluate import TABLE2_ORDER, evaluate, markdown_table, read_results, write_results  # noqa: E402
from fexsdk.training.trainer import TrainConfig, Trainer  # noqa: E402

TABLE2_PRESETS = [p for p in TABLE2_ORDER if p != "real"]


def training_speed(run: Path) -> float:
    """Median training images/s of a run, from its scalars.csv (NaN without one)."""
    import csv
    import statistics

    path = run / "scalars.csv"
    if not path.exists():
        return float("nan")
    with path.open() as f:
        speeds = [float(row["images_per_s"]) for row in csv.DictReader(f) if row.get("images_per_s")]
    return statistics.median(speeds) if speeds else float("nan")


def budget_table(out: Path, presets: list[str], epochs: float) -> str:
    """What each row cost: the shared budget and the measured training speed."""
    lines = ["| preset | epochs | training images/s (median) |", "| --- | --- | --- |"]
    lines += [f"| {p} | {epochs:g} | {training_speed(out / p):.0f} |" for p in presets]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--classifier", required=True)
    p.add_argument("--out", default="runs/table2")
    p.add_argument("--presets", nargs="+", default=TABLE2_PRESETS)
    p.add_argument("--epochs", type=float, default=2.0, help="the same budget for every preset")
    p.add_argument("--perceptual-start-epoch", type=float,
                   help="when the feature loss switches in (default: at 40%% of the budget; the report: epoch 40)")
    p.add_argument("--conv-dim", type=int, help="G and D base channels for every preset (the report: 64)")
    p.add_argument("--n-res", type=int, help="G residual blocks for every preset (the report: 6)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--resume", action="store_true")
    args = p.parse_args()

    out = Path(args.out)
    if args.threads:
        torch.set_num_threads(args.threads)
    clf = load_classifier(args.classifier)
    test = load_dataset(args.data, "public")
    results = [evaluate(test, clf, None, classifier_name=args.classifier, progress=False)]
    write_results(results[0], out / "eval" / "real")
    start = args.perceptual_start_epoch if args.perceptual_start_epoch is not None else 0.4 * args.epochs
    for preset in args.presets:
        run = out / preset
        cfg = TrainConfig(preset=preset, data=args.data, out=str(run), epochs=args.epochs, batch_size=args.batch_size,
                          precision=args.precision, device=args.device, threads=args.threads,
                          perceptual_start_epoch=start, conv_dim=args.conv_dim, n_res=args.n_res, resume=args.resume and (run / "last.pt").exists(),
                          sample_every=2000, ckpt_every=500)
        trainer = Trainer(cfg)
        if trainer.step < trainer.total_steps:
            trainer.fit()
        done = out / "eval" / preset / "results.json"
        if args.resume and done.exists() and trainer.step >= trainer.total_steps:
            result = read_results(done.parent)  # trained and scored by an earlier run
        else:
            result = evaluate(test, clf, str(run / "last.pt"), seeds=args.seeds, name=preset,
                              classifier_name=args.classifier)
            write_results(result, out / "eval" / preset)
        results.append(result)
        table = markdown_table(results) + "\n" + budget_table(out, args.presets, args.epochs)
        (out / "table2.md").write_text(table)
        print(table, flush=True)


if __name__ == "__main__":
    main()
