"""``fex train``, ``fex train-classifier`` and ``fex eval``: added to ``fex`` by this package.

Loaded through the ``fexsdk.commands`` entry point (see :mod:`fexsdk.plugins`); imports no torch until
a command runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fexsdk._extras import require
from fexsdk.emotions import EMOTIONS
from fexsdk.cli import POSITIVE, SEED, check_out_folder, float_range, int_range


def add_commands(sub: argparse._SubParsersAction) -> None:
    _add_train(sub)
    _add_train_classifier(sub)
    _add_eval(sub)


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a StarGAN variant (needs the [train] extra)")
    p.add_argument("--preset", default="skip-dropout-small", help="model preset (see --list-presets)")
    p.add_argument("--list-presets", action="store_true", help="print the presets and exit")
    p.add_argument("--data", help="FER2013: fer2013.csv, the Kaggle folder layout, or an .npz")
    p.add_argument("--synthetic", type=int_range(0), default=0, metavar="N", help="train on N synthetic images instead of --data")
    p.add_argument("--second-domain", metavar="DIR", help="image folder DIR/<emotion>/* trained jointly via the mask vector")
    p.add_argument("--out", default="runs/default",
                   help="output folder (checkpoints, logs, plots, samples); a non-empty one needs --resume or --overwrite")
    p.add_argument("--overwrite", action="store_true",
                   help="train from scratch into a non-empty --out, replacing its checkpoints and logs")
    p.add_argument("--epochs", type=float_range(0, low_open=True), default=1.0,
                   help="passes over the training images (fractions allowed; default 1)")
    p.add_argument("--max-steps", type=POSITIVE, help="stop after this many iterations (overrides --epochs)")
    p.add_argument("--batch-size", type=int_range(2), default=16, help="images per batch (default 16)")
    p.add_argument("--lr-g", type=float_range(0, low_open=True), default=1e-4, help="generator learning rate (default 1e-4)")
    p.add_argument("--lr-d", type=float_range(0, low_open=True), default=1e-4,
                   help="discriminator learning rate (default 1e-4)")
    p.add_argument("--n-critic", type=POSITIVE, help="D steps per G step (preset: 5 for WGAN-GP, 1 for the R1 recipe)")
    p.add_argument("--adversarial", choices=["wgan-gp", "r1"], help="adversarial loss (preset's by default)")
    p.add_argument("--upsample", choices=["transpose", "nearest", "bilinear"],
                   help="generator up-sampling: transposed conv or resize + conv (preset's by default)")
    p.add_argument("--ema-beta", type=float_range(0, 1, high_open=True), default=0.999,
                   help="decay of the EMA generator (0: off)")
    p.add_argument("--decay-start", type=float_range(0, 1), default=0.5,
                   help="fraction of the run after which LRs decay linearly to 0")
    p.add_argument("--input-skip", action=argparse.BooleanOptionalAction, default=None,
                   help="generator output = input + learned residual (default: the preset's)")
    p.add_argument("--perceptual", action=argparse.BooleanOptionalAction, default=None,
                   help="force the perceptual (feature) cycle loss on or off (default: the preset's)")
    p.add_argument("--perceptual-start-epoch", type=float_range(0), help="epoch the perceptual loss switches in (preset: 40)")
    p.add_argument("--perceptual-mode", choices=["replace", "add"], help="feature loss replaces or adds to the pixel loss")
    p.add_argument("--lambda-cls", type=float_range(0), help="weight of the classification loss (preset: 1, StarGAN's, in the Table 2 presets; 3 in the fex* ones)")
    p.add_argument("--cls-augment", action=argparse.BooleanOptionalAction, default=None,
                   help="random rotate/scale/shift + cutout of the images D's classifier reads (default: the preset's)")
    p.add_argument("--cls-blur", type=float_range(0), metavar="SIGMA",
                   help="with --cls-augment: blur D's classifier input by a Gaussian of sigma up to SIGMA pixels")
    p.add_argument("--lambda-change-lap", type=float_range(0), metavar="W",
                   help="weight of the mean |Laplacian| of the change G(x) - x (penalises stripes; preset: 0)")
    p.add_argument("--lambda-rec", type=float_range(0), metavar="W",
                   help="weight of the cycle (reconstruction) loss (preset: 10, StarGAN's)")
    p.add_argument("--lambda-cls-fake", type=float_range(0), metavar="W",
                   help="weight of D learning that a generated face is not its target emotion (preset: 0)")
    p.add_argument("--cls-focal", type=float_range(0), metavar="GAMMA",
                   help="focal exponent of G's classification loss: (1 - p_target)^GAMMA * CE (preset: 0, plain CE)")
    p.add_argument("--lambda-mean-match", type=float_range(0), metavar="W",
                   help="weight of matching the running mean generated face of each target to that emotion's mean "
                        "real face (preset: 0)")
    p.add_argument("--lambda-paint", type=float_range(0), metavar="W",
                   help="painting warp heads: weight of the paint amplitude penalty (preset: 8 in fex-small-believable)")
    p.add_argument("--lambda-shading", type=float_range(0), metavar="W",
                   help="painting warp heads: weight of the broad-shading penalty on paint (preset: 16 in "
                        "fex-small-believable)")
    p.add_argument("--paint-others", type=float_range(0), metavar="X",
                   help="multiply the paint penalties by X for targets that neither open the mouth nor show teeth "
                        "(all but surprise, fear, happy; preset: 1)")
    p.add_argument("--lambda-change-shading", type=float_range(0), metavar="W",
                   help="weight of the broad shading of the whole change, moved pixels included (preset: 30 in "
                        "fex-small-believable-shade, else 0)")
    p.add_argument("--paint-targets", nargs="+", metavar="EMOTION", choices=list(EMOTIONS),
                   help="painting warp heads: only these target emotions may paint; the others are flow-only "
                        "(preset: all may paint; fex-small-believable-surprise: surprise)")
    p.add_argument("--lambda-still", type=float_range(0), metavar="W",
                   help="warp heads: weight of keeping the nose and eye corners still (preset: 2 in fex-small-believable*)")
    p.add_argument("--teacher", metavar="FILE",
                   help="a frozen expression classifier (.safetensors or fex train-classifier .pt) whose reading of "
                        "G's outputs joins G's loss; never the scoring classifier (needs --lambda-teacher)")
    p.add_argument("--lambda-teacher", type=float_range(0), metavar="W",
                   help="weight of the teacher's cross-entropy on G's outputs (needs --teacher)")
    p.add_argument("--init-from", metavar="CKPT",
                   help="start from CKPT's G, EMA G and D weights with fresh optimizers and schedule (not --resume); "
                        "an exported .onnx (e.g. fexsdk/models/default.onnx) gives G only, D starts from scratch")
    p.add_argument("--init-discriminator", metavar="FILE",
                   help="with --init-from: D's weights from FILE (.safetensors), e.g. "
                        "training/weights/default-discriminator.safetensors beside the bundled model")
    p.add_argument("--d-warmup", type=int_range(0), default=0, metavar="N",
                   help="train only D for the first N iterations, G frozen (for --init-from an .onnx; default 0)")
    p.add_argument("--conv-dim", type=POSITIVE, help="base channels of G and D (overrides the preset's width)")
    p.add_argument("--n-res", type=int_range(0), help="residual blocks in G (overrides the preset's depth)")
    p.add_argument("--image-size", type=int_range(16), default=48, help="training image side in pixels (default 48, FER2013's)")
    p.add_argument("--channels", type=int, default=1, choices=[1, 3], help="1 (gray, FER2013) or 3 (RGB)")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help="auto: bf16 autocast on CUDA and on CPUs with AVX-512 BF16/AMX, else fp32 (bf16 is ~16x slower on AVX2)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--threads", type=POSITIVE, help="torch CPU threads (default: torch's; 1 beside other heavy work)")
    p.add_argument("--seed", type=SEED, default=0, help="seeds initialisation, data order and noise (default 0)")
    p.add_argument("--log-every", type=POSITIVE, default=50, help="write scalars.csv every N iterations")
    p.add_argument("--sample-every", type=POSITIVE, default=500, help="write a sample grid every N iterations")
    p.add_argument("--ckpt-every", type=POSITIVE, default=500, help="validate and write checkpoints every N iterations")
    p.add_argument("--resume", action="store_true", help="continue exactly from OUT/last.pt")
    p.add_argument("--time-limit", type=float_range(0, low_open=True), metavar="MIN",
                   help="stop cleanly after MIN minutes with a checkpoint; rerun with --resume to go on")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs still written)")
    p.add_argument("--time-schedule", action="store_true",
                   help="with --time-limit: decay the learning rate to 0 at the time limit, or at the last step if "
                        "that comes first (leased GPU runs)")
    p.set_defaults(func=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    require("torch", "train", "fex train")
    from fexsdk.training.presets import get_preset, list_presets
    from fexsdk.training.runlock import run_lock
    from fexsdk.training.trainer import TrainConfig, Trainer

    if args.list_presets:
        for name in list_presets():
            print(f"{name:20s} {get_preset(name).description}")
        return 0
    cfg = TrainConfig(
        preset=args.preset, data=args.data, synthetic=args.synthetic, second_domain=args.second_domain, out=args.out,
        epochs=args.epochs, max_steps=args.max_steps, batch_size=args.batch_size, lr_g=args.lr_g, lr_d=args.lr_d,
        n_critic=args.n_critic, adversarial=args.adversarial, upsample=args.upsample, ema_beta=args.ema_beta,
        decay_start=args.decay_start, input_skip=args.input_skip, perceptual=args.perceptual, perceptual_start_epoch=args.perceptual_start_epoch,
        perceptual_mode=args.perceptual_mode, lambda_cls=args.lambda_cls, cls_augment=args.cls_augment,
        cls_blur=args.cls_blur, lambda_change_lap=args.lambda_change_lap, lambda_cls_fake=args.lambda_cls_fake,
        lambda_rec=args.lambda_rec, cls_focal=args.cls_focal, lambda_mean_match=args.lambda_mean_match,
        lambda_paint=args.lambda_paint, lambda_shading=args.lambda_shading, paint_others=args.paint_others,
        lambda_still=args.lambda_still, paint_targets=args.paint_targets, lambda_change_shading=args.lambda_change_shading,
        teacher=args.teacher, lambda_teacher=args.lambda_teacher,
        init_from=args.init_from, init_discriminator=args.init_discriminator, d_warmup=args.d_warmup, conv_dim=args.conv_dim, n_res=args.n_res,
        image_size=args.image_size, channels=args.channels,
        precision=args.precision, device=args.device, threads=args.threads, seed=args.seed, log_every=args.log_every,
        sample_every=args.sample_every, ckpt_every=args.ckpt_every, resume=args.resume, progress=not args.no_progress,
        time_limit_min=args.time_limit, time_schedule=args.time_schedule, overwrite=args.overwrite,
    )
    check_out_folder(args.out)
    with run_lock(args.out):  # a second fex train into this folder is refused at once
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
    p.add_argument("--epochs", type=POSITIVE, default=30, help="passes over the training images (default 30)")
    p.add_argument("--batch-size", type=POSITIVE, default=64, help="images per batch (default 64)")
    p.add_argument("--lr", type=float_range(0, low_open=True), default=0.1, help="peak SGD learning rate (default 0.1)")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help="auto: bf16 autocast on CPUs with AVX-512 BF16/AMX, else fp32 (bf16 is ~7x slower on AVX2)")
    p.add_argument("--threads", type=POSITIVE, help="torch CPU threads")
    p.add_argument("--seed", type=SEED, default=0, help="seeds initialisation, data order and augmentation")
    p.add_argument("--width", type=POSITIVE, default=64,
                   help="channels of the first stage (default 64, ResNet18's; 32 for a faster teacher)")
    p.add_argument("--resume", action="store_true", help="continue exactly from OUT/last.pt")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_train_classifier)


def _run_train_classifier(args: argparse.Namespace) -> int:
    require("torch", "train", "fex train-classifier")
    from fexsdk.training.classifier import ClassifierTrainConfig, train_classifier
    from fexsdk.training.runlock import run_lock

    check_out_folder(args.out)
    with run_lock(args.out):
        out = train_classifier(ClassifierTrainConfig(
            data=args.data, out=args.out, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
            precision=args.precision, threads=args.threads, seed=args.seed, width=args.width, resume=args.resume,
            progress=not args.no_progress))
    print(f"done: {out}/best.pt (best PublicTest accuracy) and {out}/last.pt")
    return 0


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="Table 2: classifier accuracy on real and generated test images, realism, identity")
    p.add_argument("--generator", help="training checkpoint (.pt), exported .onnx or a bundled model name (default, warp); "
                                       "omit to score real images only")
    p.add_argument("--classifier", help="classifier (.safetensors or training checkpoint)")
    p.add_argument("--data", help="FER2013 csv, Kaggle folder or any .npz with images and labels")
    p.add_argument("--split", default="public", help="train, public, private, test or all (default: public)")
    p.add_argument("--seeds", type=SEED, nargs="+", default=[0, 1, 2], help="test-time noise seeds")
    p.add_argument("--limit", type=POSITIVE, help="use only the first N images (quick checks)")
    p.add_argument("--name", help="row name (default: the generator's folder name)")
    p.add_argument("--out", help="folder for results.json, results.md and confusion PNGs")
    p.add_argument("--table", nargs="+", metavar="DIR", help="print one table from several result folders and exit")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda: where the classifier and a .pt generator run")
    p.set_defaults(func=_run_eval)


def _run_eval(args: argparse.Namespace) -> int:
    require("torch", "train", "fex eval")
    from fexsdk.training.evaluate import evaluate, markdown_table, read_results, write_results

    if args.table:
        print(markdown_table([read_results(Path(d)) for d in args.table]), end="")
        return 0
    if not args.classifier or not args.data:
        raise ValueError("fex eval needs --classifier and --data (or --table DIR ...)")
    check_out_folder(args.out)
    if args.generator:  # a misspelt bundled name or a missing file is refused before the slow part
        from fexsdk.transfer import resolve_model

        if not Path(resolve_model(args.generator)).is_file():
            raise FileNotFoundError(f"--generator: model file not found: {args.generator}")
    from fexsdk.training.classifier import load_classifier
    from fexsdk.training.data import FaceDataset, load_dataset

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
