"""Training throughput (images/s through D) of each preset on this machine at 48x48 gray.

    python benchmarks/train_speed.py [--presets stargan skip-dropout-small] [--steps 30] [--json out.json]

Runs the real training step on synthetic data: warm-up, then timed steps, for
FP32 and bf16 autocast and, optionally, several thread counts.
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


def measure(preset: str, precision: str, threads: int, steps: int, batch: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(preset=preset, synthetic=max(256, batch * 4), out=tmp, batch_size=batch, precision=precision,
                          threads=threads, max_steps=10**6, progress=False)
        t = Trainer(cfg)
        for _ in range(5):  # warm-up, including one G step
            t.train_step()
        start = time.perf_counter()
        for _ in range(steps):
            t.train_step()
        return steps * batch / (time.perf_counter() - start)


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
    p.add_argument("--steps", type=int, default=30, help="timed iterations (one D step each; G every 5th)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args()

    print(f"# training images/s at 48x48 gray, batch {args.batch_size}, 5 D steps per G step")
    print(f"# {cpu_name()}, torch {torch.__version__}")
    print(f"{'preset':20s} {'precision':9s} {'threads':>7s} {'images/s':>9s}")
    rows = []
    for preset in args.presets:
        for precision in args.precisions:
            for threads in args.threads:
                ips = measure(preset, precision, threads, args.steps, args.batch_size)
                rows.append({"preset": preset, "precision": precision, "threads": threads, "images_per_s": ips})
                print(f"{preset:20s} {precision:9s} {threads:7d} {ips:9.1f}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"cpu": cpu_name(), "torch": torch.__version__, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
