"""The ``fex`` command. Each subcommand imports what it needs only when it runs."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from fexsdk._extras import require


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a StarGAN variant (needs the [train] extra)")
    p.add_argument("--preset", default="skip-dropout-small", help="model preset (see --list-presets)")
    p.add_argument("--list-presets", action="store_true", help="print the presets and exit")
    p.add_argument("--data", help="FER2013: fer2013.csv, the Kaggle folder layout, or an .npz")
    p.add_argument("--synthetic", type=int, default=0, metavar="N", help="train on N synthetic images instead of --data")
    p.add_argument("--second-domain", metavar="DIR", help="image folder DIR/<emotion>/* trained jointly via the mask vector")
    p.add_argument("--out", default="runs/default", help="output folder (checkpoints, logs, plots, samples)")
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--max-steps", type=int, help="stop after this many iterations (overrides --epochs)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr-g", type=float, default=1e-4)
    p.add_argument("--lr-d", type=float, default=1e-4)
    p.add_argument("--n-critic", type=int, default=5, help="D steps per G step")
    p.add_argument("--decay-start", type=float, default=0.5, help="fraction of the run after which LRs decay linearly to 0")
    p.add_argument("--perceptual", action=argparse.BooleanOptionalAction, default=None,
                   help="force the perceptual (feature) cycle loss on or off (default: the preset's)")
    p.add_argument("--perceptual-start-epoch", type=float, help="epoch the perceptual loss switches in (preset: 40)")
    p.add_argument("--perceptual-mode", choices=["replace", "add"], help="feature loss replaces or adds to the pixel loss")
    p.add_argument("--image-size", type=int, default=48)
    p.add_argument("--channels", type=int, default=1, choices=[1, 3])
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="bf16 autocast (fast on AVX-512 BF16 CPUs)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--sample-every", type=int, default=500)
    p.add_argument("--ckpt-every", type=int, default=500)
    p.add_argument("--resume", action="store_true", help="continue exactly from OUT/last.pt")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs still written)")
    p.set_defaults(func=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    require("torch", "train", "fex train")
    from training.presets import get_preset, list_presets
    from training.trainer import TrainConfig, train

    if args.list_presets:
        for name in list_presets():
            print(f"{name:20s} {get_preset(name).description}")
        return 0
    cfg = TrainConfig(
        preset=args.preset, data=args.data, synthetic=args.synthetic, second_domain=args.second_domain, out=args.out,
        epochs=args.epochs, max_steps=args.max_steps, batch_size=args.batch_size, lr_g=args.lr_g, lr_d=args.lr_d,
        n_critic=args.n_critic, decay_start=args.decay_start, perceptual=args.perceptual, perceptual_start_epoch=args.perceptual_start_epoch,
        perceptual_mode=args.perceptual_mode, image_size=args.image_size, channels=args.channels,
        precision=args.precision, device=args.device, threads=args.threads, seed=args.seed, log_every=args.log_every,
        sample_every=args.sample_every, ckpt_every=args.ckpt_every, resume=args.resume, progress=not args.no_progress,
    )
    out = train(cfg)
    print(f"done: checkpoints in {out}/last.pt and {out}/best.pt, losses in {out}/losses.png")
    print(f"export it with: fex export onnx {out}/last.pt -o model.onnx")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fex", description="fexsdk: facial expression transfer")
    from fexsdk import __version__

    parser.add_argument("--version", action="version", version=f"fexsdk {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, ImportError) as exc:
        print(f"fex {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
