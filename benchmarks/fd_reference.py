"""What plain realism FD can a generator reach at a given accuracy, if its outputs were real faces?

``fex eval`` makes every PublicTest face in all 7 emotions, so the generated set has each target
in equal shares, while the real set has FER2013's (25% happy, 1.6% disgust). Plain FD therefore
charges a generator for reaching its targets. This script measures that charge with two
"generators" made of real PublicTest faces, scored by the evaluation classifier:

- **reach**: for each target, with probability ``beta`` a real face of that emotion, else the
  input face unchanged. ``beta = 1`` reaches every target as well as real faces of it do.
- **mix**: real faces picked by what the classifier reads them as, in shares moved from
  FER2013's (``t = 0``) towards equal (``t = 1``). High accuracy at low FD here means answering
  rare targets (disgust) with faces of common emotions (happy): the weakest target's accuracy is
  printed beside it.

    python benchmarks/fd_reference.py --data ../shared/data/fer2013.npz
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

try:
    import fexsdk  # noqa: F401
except ImportError:  # running from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fexsdk.emotions import NUM_EMOTIONS
from fexsdk.training.evaluate import class_balanced_weights, frechet_distance


def reach_weights(labels: np.ndarray, beta: float) -> np.ndarray:
    """Weights on the real faces that describe the 'reach' generator's outputs (they sum to 1)."""
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    return beta * class_balanced_weights(labels) + (1.0 - beta) / len(labels)


def reach_accuracy(labels: np.ndarray, preds: np.ndarray, beta: float) -> float:
    """Accuracy of the 'reach' generator: real faces of the target as often as beta, copies otherwise.

    A copy of face i is scored once per target, so it is counted right for exactly one of the 7.
    """
    per_class = np.array([(preds[labels == k] == k).mean() for k in range(NUM_EMOTIONS)])
    return float(beta * per_class.mean() + (1.0 - beta) / NUM_EMOTIONS)


def mix_weights(preds: np.ndarray, t: float) -> tuple[np.ndarray, float, float]:
    """('mix' weights on the real faces, accuracy, weakest target's accuracy) at mixing fraction t.

    Faces the classifier reads as emotion k make up a share q_k of the outputs, q moving from the
    natural shares to equal ones. Target k can be answered right at most q_k of the time, and has
    1/7 of the outputs, so its accuracy is min(7 q_k, 1).
    """
    if not 0.0 <= t <= 1.0:
        raise ValueError(f"t must be in [0, 1], got {t}")
    counts = np.bincount(preds, minlength=NUM_EMOTIONS).astype(np.float64)
    present = counts > 0
    uniform = present / present.sum()
    q = (1.0 - t) * counts / counts.sum() + t * uniform
    per_target = np.minimum(q * NUM_EMOTIONS, 1.0)
    return q[preds] / counts[preds], float(per_target.mean()), float(per_target.min())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="../shared/data/fer2013.npz", help="FER2013 .npz (PublicTest is used)")
    parser.add_argument("--classifier", default="training/weights/resnet18_fer2013.safetensors")
    args = parser.parse_args(argv)

    import torch

    from fexsdk.training.classifier import load_classifier, predict_with_features, to_input
    from fexsdk.training.data import load_dataset

    clf = load_classifier(args.classifier).to(memory_format=torch.channels_last)
    data = load_dataset(args.data, "test", clf.config.image_size, clf.config.in_channels)
    logits, feats = predict_with_features(clf, to_input(data.images))
    labels, preds = data.labels, logits.argmax(1)
    print(f"{len(labels)} PublicTest faces; the classifier reads {100 * (preds == labels).mean():.2f}% of them right\n")
    print("| 'reach' generator: beta | accuracy % | plain FD |\n| --- | --- | --- |")
    for beta in (0.0, 0.5, 0.7, 0.8, 0.85, 0.9, 1.0):
        fd = frechet_distance(feats, feats, weights_a=reach_weights(labels, beta))
        print(f"| {beta:.2f} | {100 * reach_accuracy(labels, preds, beta):.2f} | {fd:.3f} |")
    print("\n| 'mix' generator: t | accuracy % | weakest target % | plain FD |\n| --- | --- | --- | --- |")
    for t in (0.0, 0.25, 0.5, 0.75, 1.0):
        w, acc, weakest = mix_weights(preds, t)
        print(f"| {t:.2f} | {100 * acc:.2f} | {100 * weakest:.1f} | {frechet_distance(feats, feats, weights_a=w):.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
