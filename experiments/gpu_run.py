"""Everything a leased GPU is for, in one call: train, evaluate, time, and pack the results.

A GPU is lent now and then for ~15 minutes on one H100/H200 that has only its own
PyTorch installed. This script needs nothing else from the repository's extras:

1. unpack the data (``training.gpu_data``) if it was packed to travel;
2. train several runs side by side on the one GPU for the same wall-clock budget
   (``--time-schedule``: each run's learning rate decays to 0 at the time limit);
3. evaluate each run's EMA generator with ``fex eval`` on PublicTest (classifier on the GPU);
4. time the generators on the GPU (PyTorch eager, fp32 and bf16, batch 1/16/64);
5. write ``summary.json``/``summary.md`` and slim checkpoints (EMA weights only) into OUT.

Try it on the CPU first with ``--tiny`` (the tiny preset, seconds per run)::

    python experiments/gpu_run.py --tiny --data ../shared/data/fer2013.npz --out runs/gpu-tiny

On the GPU (``bash experiments/gpu_run.sh`` does this and packs OUT for the trip back)::

    python experiments/gpu_run.py --data .gpudata/fer2013_packed.npz --minutes 6 --out $OUT/gpu

``--group levers`` trains the lever sweep instead (lambda_cls, width, depth, batch, the softer warp
head, each beside fex-small-r1): ``bash experiments/gpu_run.sh DATA "$OUT" 6 --group levers``.
``--group finetune`` continues one CPU checkpoint (``.gpudata/warmstart.pt``) under several loss weights;
``--group finetune-bundled`` fine-tunes the bundled model from its ONNX file (nothing to carry).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

import _checkout

_checkout.ensure()  # fexsdk.training from an install, or from this checkout on a bare GPU machine


@dataclass
class Run:
    """One training run of the comparison: a preset and the flags it trains with."""

    name: str
    preset: str
    batch_size: int
    #: Extra ``fex train`` flags.
    flags: list[str] = field(default_factory=list)
    #: Store the slim checkpoint's weights in fp16 (paper-size generators: 17 MB instead of 34).
    half: bool = False
    #: Warm start (``--init-from``) from this checkpoint, relative to the repository root; make it
    #: with ``python experiments/gpu_data.py warmstart`` and carry ``.gpudata`` to the device.
    init_from: str | None = None

    def train_flags(self) -> list[str]:
        """The run's own ``fex train`` flags: its extra flags and its warm start."""
        return [*self.flags, *(["--init-from", self.init_from] if self.init_from else [])]


#: The warm-start checkpoint of the ``finetune`` group (the clean model's CPU run, optimizers dropped).
WARMSTART = ".gpudata/warmstart.pt"
#: The bundled generator, for the ``finetune-bundled`` group: tracked, so nothing needs carrying.
BUNDLED = "fexsdk/models/paint.onnx"  # the model training/weights/default-discriminator.safetensors was trained against
#: The D trained against it (``fex train --init-discriminator``), tracked too.
BUNDLED_D = "training/weights/default-discriminator.safetensors"

#: The GPU comparison: the report's best row with its own recipe, fexsdk's recipe at paper and CPU size,
#: and the CPU-size generator with the report's recipe (the two recipes at equal wall-clock).
GPU_RUNS = [
    Run("skip-dropout-wgan", "skip-dropout", 64, half=True),
    Run("fex-r1", "fex", 64, half=True),
    Run("fex-small-r1", "fex-small", 64),
    Run("fex-small-wgan", "fex-small", 64, ["--adversarial", "wgan-gp", "--n-critic", "5"]),
    Run("fex-small-warp", "fex-small-warp", 64),
    #: Not in the first call (2026-11-27); run alone with --only fex-small-flow.
    Run("fex-small-flow", "fex-small-flow", 64),
    # The lever sweep (issue 12), each against fex-small-r1 at equal wall-clock: --group levers.
    Run("fex-small-cls1", "fex-small", 64, ["--lambda-cls", "1"]),
    Run("fex-small-cls6", "fex-small", 64, ["--lambda-cls", "6"]),
    Run("fex-small-w48", "fex-small", 64, ["--conv-dim", "48"]),
    Run("fex-small-deep", "fex-small", 64, ["--n-res", "6"]),
    Run("fex-small-b256", "fex-small", 256),
    Run("fex-small-softwarp", "fex-small-softwarp", 64),
    Run("fex-small-fineflow", "fex-small-fineflow", 64),
    #: Won the CPU comparison of up-sampling modes under WGAN-GP (docs/research/training-log.md, "Long CPU runs").
    Run("fex-small-bilinear-wgan", "fex-small-bilinear-wgan", 64),
    #: The same with D's classifier reading augmented images: held-out accuracy 43 -> 70+% on the CPU.
    Run("fex-small-bilinear-wgan-aug", "fex-small-bilinear-wgan-aug", 64),
    #: The same with D rejecting fakes as their target: clean grids on the CPU (docs/research/training-log.md, "Against the stripes").
    Run("fex-small-bilinear-wgan-clean", "fex-small-bilinear-wgan-clean", 64),
    # The last phase of the clean model (issue 12): warm-started from its CPU checkpoint, higher cycle
    # weights to bring the cycle L1 under 0.03, lambda_cls to hold accuracy. EMA beta 0.995: a 4-minute
    # run makes ~1,000 G updates, and at 0.999 the EMA would still hold a third of the start.
    *[Run(f"ft-rec{rec}" + (f"-cls{cls}" if cls else ""), "fex-small-bilinear-wgan-clean", 64,
          ["--lambda-rec", str(rec), *(["--lambda-cls", str(cls)] if cls else []), "--decay-start", "0.3",
           "--ema-beta", "0.995"], init_from=WARMSTART)
      for rec, cls in [(10, None), (20, None), (30, None), (20, 2), (20, 4), (40, 4), (30, 5), (40, 5), (50, 5), (60, 6)]],
    # Fine-tuning the bundled model itself (its training checkpoint is not kept): G from the ONNX file,
    # D from the committed D trained against it for 65 CPU minutes (BUNDLED_D), then 1,000 D-only steps
    # at batch 64 to settle it at the larger batch (docs/research/training-log.md, "Fine-tuning the shipped model").
    # rec80-cls8 is the bundled model's own last phase, the control; the others add the mean-face loss.
    *[Run(f"ftb-rec{rec}-cls{cls}" + (f"-mm{mm}" if mm else ""), "fex-small-bilinear-wgan-clean", 64,
          ["--lambda-rec", str(rec), "--lambda-cls", str(cls), "--lambda-change-lap", "24", "--lambda-mean-match",
           str(mm), "--init-discriminator", BUNDLED_D, "--d-warmup", "1000", "--decay-start", "0.5",
           "--ema-beta", "0.995"], init_from=BUNDLED)
      for rec, cls, mm in [(80, 8, 0), (100, 10, 300), (120, 12, 600)]],
]
#: Named sets of runs for one call; --only picks runs by name instead.
GROUPS = {
    "default": ["skip-dropout-wgan", "fex-r1", "fex-small-r1", "fex-small-wgan", "fex-small-warp"],
    "levers": ["fex-small-r1", "fex-small-cls1", "fex-small-cls6", "fex-small-w48", "fex-small-deep", "fex-small-b256",
               "fex-small-softwarp", "fex-small-fineflow", "fex-small-bilinear-wgan",
               "fex-small-bilinear-wgan-aug", "fex-small-bilinear-wgan-clean"],
    "finetune": ["ft-rec10", "ft-rec20", "ft-rec30", "ft-rec20-cls2", "ft-rec20-cls4", "ft-rec40-cls4"],
    #: The second call: accuracy held up by a higher lambda_cls while the cycle weight rises.
    "finetune2": ["ft-rec30-cls5", "ft-rec40-cls5", "ft-rec50-cls5", "ft-rec60-cls6"],
    #: The bundled model fine-tuned from its ONNX file and the committed D: needs no carried checkpoint.
    "finetune-bundled": ["ftb-rec80-cls8", "ftb-rec100-cls10-mm300", "ftb-rec120-cls12-mm600"],
}
#: What a call trains unless --group or --only says otherwise.
DEFAULT_RUNS = GROUPS["default"]

TINY_RUNS = [
    Run("tiny-wgan", "tiny", 8),
    Run("tiny-r1", "tiny", 8, ["--adversarial", "r1", "--n-critic", "1", "--upsample", "nearest"]),
]


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "fexsdk.cli", *args]


def _median_rate(scalars: Path, key: str) -> float:
    """Median of a rate column of scalars.csv, skipping the first row (warm-up)."""
    import csv

    with open(scalars) as f:
        rows = list(csv.DictReader(f))
    vals = [float(r[key]) for r in rows[1:] or rows if r.get(key) not in (None, "", "nan")]
    return float(np.median(vals)) if vals else float("nan")


def slim_checkpoint(src: Path, dst: Path, half: bool) -> None:
    """Keep what export and evaluation need (configs and the EMA generator), drop D and the optimizers."""
    from fexsdk.training.checkpoint import load_checkpoint, save_checkpoint

    ckpt = load_checkpoint(src)
    weights = ckpt.get("G_ema") or ckpt["G"]
    if half:
        weights = {k: v.half() if v.is_floating_point() else v for k, v in weights.items()}
    keep = {k: v for k, v in ckpt.items() if k not in ("D", "opt_g", "opt_d", "torch_rng", "G", "G_ema", "checkpoint_version")}
    save_checkpoint(dst, {**keep, "G": weights, "G_ema": weights, "slim": True})


@torch.no_grad()
def time_generators(ckpts: dict[str, Path], device: str) -> list[dict]:
    """PyTorch eager latency of each generator (EMA weights), fp32 and bf16 autocast, a few batch sizes."""
    from fexsdk.training.checkpoint import generator_from_checkpoint

    rows = []
    for name, path in ckpts.items():
        G = generator_from_checkpoint(path).eval().to(device)
        for precision in ("fp32", "bf16"):
            for batch in (1, 16, 64):
                x = torch.zeros(batch, G.config.in_channels, G.config.image_size, G.config.image_size, device=device)
                c = torch.zeros(batch, G.config.label_dim, device=device)
                c[:, 0] = 1
                with torch.autocast(torch.device(device).type, torch.bfloat16, enabled=precision == "bf16"):
                    for _ in range(5):
                        G(x, c)
                    if device.startswith("cuda"):
                        torch.cuda.synchronize()
                    n, t0 = 0, time.perf_counter()
                    while time.perf_counter() - t0 < 0.5 or n < 3:
                        G(x, c)
                        n += 1
                    if device.startswith("cuda"):
                        torch.cuda.synchronize()
                ms = 1e3 * (time.perf_counter() - t0) / n
                rows.append({"run": name, "precision": precision, "batch": batch, "ms_per_batch": ms,
                             "faces_per_s": batch / ms * 1e3})
    return rows


def markdown(summary: dict) -> str:
    lines = [f"# GPU run on {summary['device_name']}", "",
             f"{summary['minutes']} min of training per run, all runs side by side on the one GPU; "
             f"PublicTest, noise seeds {summary['seeds']}.", "",
             "| run | preset | batch | steps | G updates | images/s | G updates/s | accuracy % | FD | FD balanced | identity self / cycle |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in summary["runs"]:
        ev = r.get("eval") or {}
        acc = ev.get("accuracy_generated")
        lines.append(f"| {r['name']} | {r['preset']} | {r['batch_size']} | {r.get('steps', '')} | {r.get('g_updates', '')} | "
                     f"{r.get('images_per_s', float('nan')):.0f} | {r.get('g_updates_per_s', float('nan')):.1f} | "
                     f"{'' if acc is None else f'{100 * acc:.2f}'} | {ev.get('realism_fd', float('nan')):.3f} | "
                     f"{ev.get('realism_fd_balanced') or float('nan'):.3f} | "
                     f"{ev.get('identity_self_l1', float('nan')):.3f} / {ev.get('identity_cycle_l1', float('nan')):.3f} |")
    if summary.get("latency"):
        lines += ["", "| generator | precision | batch | ms per batch | faces/s |", "| --- | --- | --- | --- | --- |"]
        lines += [f"| {r['run']} | {r['precision']} | {r['batch']} | {r['ms_per_batch']:.2f} | {r['faces_per_s']:.0f} |"
                  for r in summary["latency"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Train, evaluate and time several runs side by side on one GPU.")
    p.add_argument("--data", required=True, help="fer2013.npz, or the packed file from `python experiments/gpu_data.py pack`")
    p.add_argument("--classifier", default="training/weights/resnet18_fer2013.safetensors")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--minutes", type=float, default=6.0, help="training wall-clock per run (all runs at once)")
    p.add_argument("--tiny", action="store_true", help="CPU smoke test: tiny presets, a few seconds, 64 test faces")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--threads", type=int, default=4, help="CPU threads per training process")
    p.add_argument("--group", choices=sorted(GROUPS), default="default", help="which set of runs to train side by side")
    p.add_argument("--only", nargs="+", metavar="RUN", help=f"train only these runs of {[r.name for r in GPU_RUNS]}")
    p.add_argument("--deadline", type=float, default=0, metavar="S",
                   help="stop waiting for evaluations S seconds after the start and write what is there (0: no limit)")
    a = p.parse_args(argv)

    a.out.mkdir(parents=True, exist_ok=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if a.tiny:
        runs = TINY_RUNS
    else:
        names = a.only or GROUPS[a.group]
        unknown = set(names) - {r.name for r in GPU_RUNS}
        if unknown:
            raise SystemExit(f"unknown run(s) {sorted(unknown)}; known: {[r.name for r in GPU_RUNS]}")
        runs = [r for r in GPU_RUNS if r.name in names]
        missing = sorted({r.init_from for r in runs if r.init_from and not Path(r.init_from).is_file()})
        if missing:
            raise SystemExit(f"warm-start checkpoint(s) {missing} not found: make them with `python "
                             "experiments/gpu_data.py warmstart CKPT .gpudata/warmstart.pt` and carry .gpudata")
    minutes = min(a.minutes, 0.15) if a.tiny else a.minutes
    t_start = time.time()

    data = Path(a.data)
    if "train_mosaic_0" in np.load(data).files:
        from gpu_data import unpack

        unpacked = a.out / "data" / "fer2013.npz"
        unpack(data, unpacked)
        data = unpacked

    # 1. Train side by side.
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(a.threads)}
    procs = {}
    for r in runs:
        flags = ["train", "--preset", r.preset, "--data", str(data), "--out", str(a.out / "runs" / r.name),
                 "--batch-size", str(r.batch_size), "--epochs", "1000", "--time-limit", str(minutes), "--time-schedule",
                 "--precision", "auto", "--threads", str(a.threads), "--no-progress", "--log-every", "50",
                 "--sample-every", "2000" if not a.tiny else "20", "--ckpt-every", "2000" if not a.tiny else "20", *r.train_flags()]
        log = open(a.out / f"train-{r.name}.log", "w")
        procs[r.name] = (subprocess.Popen(_cli(*flags), stdout=log, stderr=subprocess.STDOUT, env=env), log)
        print(f"started {r.name}: fex {' '.join(flags)}", flush=True)
    failed = []
    for name, (proc, log) in procs.items():
        if proc.wait() != 0:
            failed.append(name)
        log.close()
    print(f"training done after {time.time() - t_start:.0f} s; failed: {failed or 'none'}", flush=True)

    # 2. Slim checkpoints and their training figures.
    summary = {"device": device, "device_name": torch.cuda.get_device_name() if device == "cuda" else "cpu",
               "torch": torch.__version__, "minutes": minutes, "seeds": a.seeds, "runs": []}
    ckpts = {}
    for r in runs:
        row = asdict(r)
        run_dir = a.out / "runs" / r.name
        if r.name not in failed and (run_dir / "last.pt").exists():
            from fexsdk.training.checkpoint import load_checkpoint

            ck = load_checkpoint(run_dir / "last.pt")
            row.update(steps=int(ck["step"]), g_updates=int(ck.get("g_updates", 0)), epochs=float(ck["epoch"]),
                       images_per_s=_median_rate(run_dir / "scalars.csv", "images_per_s"),
                       g_updates_per_s=_median_rate(run_dir / "scalars.csv", "g_updates_per_s"))
            ckpts[r.name] = a.out / "weights" / f"{r.name}.pt"
            slim_checkpoint(run_dir / "last.pt", ckpts[r.name], r.half)
        summary["runs"].append(row)

    # 3. Latency on this device (before the evaluations, so nothing else runs on the GPU).
    summary["latency"] = time_generators(ckpts, device)

    # 4. Evaluate the EMA generators side by side.
    evals = {}
    for name, ck in ckpts.items():
        flags = ["eval", "--generator", str(ck), "--classifier", a.classifier, "--data", str(data), "--split", "public",
                 "--seeds", *map(str, a.seeds), "--name", name, "--out", str(a.out / "eval" / name), "--device", device]
        if a.tiny:
            flags += ["--limit", "64"]
        log = open(a.out / f"eval-{name}.log", "w")
        evals[name] = (subprocess.Popen(_cli(*flags), stdout=log, stderr=subprocess.STDOUT, env=env), log)
    for name, (proc, log) in evals.items():
        left = a.deadline - (time.time() - t_start) if a.deadline else None
        try:
            proc.wait(timeout=max(left, 1) if left is not None else None)
        except subprocess.TimeoutExpired:
            proc.kill()
            print(f"evaluation of {name} stopped at the deadline", flush=True)
        log.close()
    for row in summary["runs"]:
        res = a.out / "eval" / row["name"] / "results.json"
        if res.exists():
            row["eval"] = {k: v for k, v in json.loads(res.read_text()).items()
                           if k in ("accuracy_generated", "accuracy_generated_spread", "per_class_generated", "realism_fd", "realism_fd_balanced",
                                    "identity_self_l1", "identity_cycle_l1", "accuracy_real", "n_images")}
    summary["wall_s"] = time.time() - t_start
    (a.out / "summary.json").write_text(json.dumps(summary, indent=2))
    (a.out / "summary.md").write_text(markdown(summary))
    print(markdown(summary), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
