"""How well a training checkpoint's discriminator reads emotions: on real faces, and on its G's fakes.

G's classification loss is D's opinion, so a generator can only learn expressions as well as its D
reads them. After a warm start from an exported model (``fex train --init-from model.onnx``) D
starts from scratch; this says when it has caught up. Two figures per checkpoint:

- **real**: D's emotion accuracy on PublicTest faces;
- **fakes**: how often D reads G(x, k) as k (EMA generator, first ``--fakes`` PublicTest faces,
  every target k, noise seed 0), overall and per target.

    python benchmarks/discriminator_reads.py runs/dwarm/last.pt runs/mmA/last.pt
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

try:
    import fexsdk  # noqa: F401
except ImportError:  # running from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from fexsdk.emotions import EMOTIONS, NUM_EMOTIONS
from fexsdk.metadata import normalize
from fexsdk.training.checkpoint import generator_from_checkpoint, load_checkpoint
from fexsdk.training.models import Discriminator


@dataclass
class DiscriminatorReads:
    """D's emotion accuracy on real faces and on generated faces (fractions in [0, 1])."""

    real: float
    fakes: float
    fakes_per_target: dict[str, float]


@torch.no_grad()
def _predict(D: torch.nn.Module, x: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """D's emotion (first domain's logits) for each image."""
    return torch.cat([D(x[i:i + batch])[1][:, :NUM_EMOTIONS].argmax(1) for i in range(0, len(x), batch)])


@torch.no_grad()
def discriminator_reads(D: torch.nn.Module, G: torch.nn.Module, images: np.ndarray, labels: np.ndarray,
                        n_fakes: int = 500, seed: int = 0) -> DiscriminatorReads:
    """Score D on ``images`` (uint8, N x C x H x W) with their ``labels``, and on G's fakes of the first ``n_fakes``."""
    x = normalize(torch.from_numpy(np.ascontiguousarray(images)).float())
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    real = (_predict(D, x) == y).float().mean().item()
    xs = x[:n_fakes]
    per_target = {}
    torch.manual_seed(seed)
    for k in range(NUM_EMOTIONS):
        c = torch.zeros(len(xs), G.config.label_dim)
        c[:, k] = 1
        fake = torch.cat([G(xs[i:i + 256], c[i:i + 256]) for i in range(0, len(xs), 256)])
        per_target[EMOTIONS[k]] = (_predict(D, fake) == k).float().mean().item()
    return DiscriminatorReads(real, float(np.mean(list(per_target.values()))), per_target)


def load_pair(path: str | Path) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The D and the EMA G of a full training checkpoint (``OUT/last.pt``), in eval mode."""
    ckpt = load_checkpoint(path)
    if "D" not in ckpt:
        raise ValueError(f"{path} has no discriminator (a slim or exported file); give OUT/last.pt of `fex train`")
    D = Discriminator(**ckpt["discriminator_config"])
    D.load_state_dict(ckpt["D"])
    return D.eval(), generator_from_checkpoint(ckpt).eval()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoints", nargs="+", help="training checkpoints (OUT/last.pt)")
    p.add_argument("--data", default="../shared/data/fer2013.npz")
    p.add_argument("--fakes", type=int, default=500, help="PublicTest faces turned into every target")
    a = p.parse_args(argv)
    from fexsdk.training.data import load_dataset

    test = load_dataset(a.data, "public", 48, 1)
    print(f"{len(test.images)} PublicTest faces (real); fakes: the first {a.fakes} in all 7 targets, noise seed 0\n")
    print("| checkpoint | D reads real faces % | D reads fakes as their target % | "
          + " | ".join(EMOTIONS) + " |")
    print("| --- | --- | --- | " + " | ".join("---" for _ in EMOTIONS) + " |")
    for path in a.checkpoints:
        D, G = load_pair(path)
        r = discriminator_reads(D, G, test.images, test.labels, a.fakes)
        cells = " | ".join(f"{100 * r.fakes_per_target[e]:.0f}" for e in EMOTIONS)
        print(f"| {path} | {100 * r.real:.1f} | {100 * r.fakes:.1f} | {cells} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
