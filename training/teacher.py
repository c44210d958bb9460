"""A frozen expression classifier that pulls G towards its target (``fex train --teacher``).

D's own classifier learns beside G, on augmented and blurred faces, and reads small, smooth movements
of the face poorly: a flow-only warp head then gets almost no class signal (its classification loss
stays near ln 7). A classifier trained apart, on the same 48x48 faces, is a sharper ruler of what an
expression looks like. It must not be the classifier that scores the project's outputs
(``training/weights/resnet18_fer2013.safetensors``, read by ``fex eval`` and the benchmarks): a
generator trained against its own judge would be graded by it. ``load_teacher`` refuses that one.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from fexsdk.training.classifier import ResNet18, load_classifier

#: The classifier that scores generated images (Table 2, fex eval, benchmarks/believable.py).
SCORING_CLASSIFIER = Path(__file__).resolve().parent / "weights" / "resnet18_fer2013.safetensors"


def same_weights(a: ResNet18, b: ResNet18, atol: float = 2e-3) -> bool:
    """True when two classifiers hold the same weights (up to the fp16 rounding of an export)."""
    if a.config != b.config:
        return False
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(
        torch.allclose(sa[k].float(), sb[k].float(), atol=atol, rtol=1e-2) for k in sa)


def load_teacher(path: str | Path, image_size: int, channels: int,
                 scoring: Path = SCORING_CLASSIFIER) -> ResNet18:
    """The teacher, frozen in eval mode; a ValueError if it is the scoring classifier or reads other images."""
    teacher = load_classifier(path)
    cfg = teacher.config
    if (cfg.image_size, cfg.in_channels) != (image_size, channels):
        raise ValueError(f"teacher {path} reads {cfg.image_size}x{cfg.image_size} images with {cfg.in_channels} "
                         f"channel(s); this run's generator makes {image_size}x{image_size} with {channels}")
    if scoring.is_file() and same_weights(teacher, load_classifier(scoring)):
        raise ValueError(f"teacher {path} holds the weights of the scoring classifier ({scoring.name}); train a "
                         "separate one (fex train-classifier --seed 1 --width 32 --out runs/teacher) so that the "
                         "classifier that scores the outputs never enters a loss")
    return teacher.requires_grad_(False).eval()


def teacher_loss(teacher: ResNet18, x_fake: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the teacher's reading of G's outputs against their targets; gradients reach G only."""
    return F.cross_entropy(teacher(x_fake.float()), targets)
