"""Training throughput (images/s through D) of each preset on this machine at 48x48 gray.

    python benchmarks/train_speed.py [--presets stargan skip-dropout-small] [--steps 30] [--json out.json]
    python benchmarks/train_speed.py --presets fex-small --precisions bf16 --threads 1 \
        --variants plain channels-last compile-g --repeats 3

Runs the real training step on synthetic data: warm-up, then timed steps, for
FP32 and bf16 autocast and, optionally, several thread counts. ``--variants``
measures speed-only levers on the same step (weights in channels-last memory
format; ``torch.compile`` of the generator), each round of variants timed back
to back so that a busy machine slows them alike; the best round is kept.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time

import torch

from fexsdk.training.presets import list_presets
from fexsdk.training.trainer import TrainConfig, Trainer


#: Speed-only levers: they change how the step runs, not what it computes.
VARIANTS = ("plain", "channels-last", "compile-g")


def make_trainer(preset: str, precision: str, threads: int, batch: int, variant: str, tmp: str) -> Trainer:
    cfg = TrainConfig(preset=preset, synthetic=max(256, batch * 4), out=tmp, batch_size=batch, precision=precision,
                      threads=threads, max_steps=10**6, progress=False)
    t = Trainer(cfg)
    if variant == "channels-last":
        for m in (t.G, t.D):
            m.to(memory_format=torch.channels_last)
    elif variant == "compile-g":
        # Only G: R1 differentiates D's gradient, which compiled graphs do not support.
        t.G = torch.compile(t.G)
    elif variant != "plain":
        raise ValueError(f"unknown variant {variant!r}; choose from {VARIANTS}")
    for _ in range(10):  # warm-up (and compilation), including G steps
        t.train_step()
    return t


def timed(t: Trainer, steps: int, batch: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        t.train_step()
    return steps * batch / (time.perf_counter() - start)


def measure_variants(preset: str, precision: str, threads: int, steps: int, batch: int, variants: list[str],
                     repeats: int) -> dict[str, float]:
    """Best-of-``repeats`` images/s per variant, the variants timed in turn within each round."""
    best = dict.fromkeys(variants, 0.0)
    with tempfile.TemporaryDirectory() as tmp:
        trainers = {v: make_trainer(preset, precision, threads, batch, v, f"{tmp}/{v}") for v in variants}
        for _ in range(repeats):
            for v, t in trainers.items():
                best[v] = max(best[v], timed(t, steps, batch))
    return best


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="+", default=[n for n in list_presets() if n != "tiny"])
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    p.add_argument("--threads", nargs="+", type=int, default=[torch.get_num_threads()])
    p.add_argument("--steps", type=int, default=30, help="timed iterations (one D step each; G every n_critic-th)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=["plain"],
                   help="speed-only levers to compare on the same step (default: plain)")
    p.add_argument("--repeats", type=int, default=1, help="rounds of all variants, the best kept (default 1)")
    args = p.parse_args()

    print(f"# training images/s at 48x48 gray, batch {args.batch_size}, the preset's D steps per G step, "
          f"best of {args.repeats} round(s)")
    print(f"# {cpu_name()}, torch {torch.__version__}")
    print(f"{'preset':20s} {'precision':9s} {'threads':>7s} {'variant':14s} {'images/s':>9s}")
    rows = []
    for preset in args.presets:
        for precision in args.precisions:
            for threads in args.threads:
                res = measure_variants(preset, precision, threads, args.steps, args.batch_size, args.variants,
                                       args.repeats)
                for v, ips in res.items():
                    rows.append({"preset": preset, "precision": precision, "threads": threads, "variant": v,
                                 "batch_size": args.batch_size, "images_per_s": ips})
                    print(f"{preset:20s} {precision:9s} {threads:7d} {v:14s} {ips:9.1f}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"cpu": cpu_name(), "torch": torch.__version__, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
