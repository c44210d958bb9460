"""Class-mean matching: the mean generated face of each target should be that emotion's mean real face.

About half of what the generator paints is one fixed pattern per target (``benchmarks/change_map.py``:
the template share). Part of that pattern is real: surprised faces open the mouth at the same
place on aligned crops, so the real class means show it too. Part is not: "fear" paints a grid
over the chin that no real face carries. This loss penalises only the second part, the distance
between the running mean of G(x, t) and the mean real face of emotion t, so patterns that real
faces of that emotion share on average cost nothing.

The mean of the fakes is tracked as an exponential moving average over G steps (a batch of 16
holds two or three faces per target: too few for a mean). The loss's value is the squared
distance of that running mean from the real one; its gradient reaches only the current batch
(straight-through: ``ema + batch_mean - batch_mean.detach()``), so every fake of target t is
moved along the same low-noise direction, ``running_mean_t - real_mean_t``.
"""

from __future__ import annotations

import torch


def class_means(images: torch.Tensor, labels: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class mean image (``(K, C, H, W)``, float32) and count (``(K,)``) of ``images`` in model units."""
    if images.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
    if labels.shape != images.shape[:1]:
        raise ValueError(f"labels must be (N,) = ({images.shape[0]},), got shape {tuple(labels.shape)}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got {int(labels.min())}..{int(labels.max())}")
    sums = torch.zeros((num_classes,) + tuple(images.shape[1:]), dtype=torch.float32, device=images.device)
    sums.index_add_(0, labels, images.float())
    counts = torch.bincount(labels, minlength=num_classes).to(images.device)
    means = sums / counts.clamp(min=1).view(-1, 1, 1, 1).float()
    return means, counts


class ClassMeanMatch:
    """Running mean of generated faces per target, and the loss that pulls it to the real class mean.

    ``real_means``: ``(K, C, H, W)`` mean real face per emotion (flip-symmetrised when training
    flips, so that it matches the faces G is fed); ``known``: which of the K have real faces at all
    (targets without any are left alone). ``decay``: the running mean's weight on its past.
    """

    def __init__(self, real_means: torch.Tensor, known: torch.Tensor, decay: float = 0.99) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        if known.shape != real_means.shape[:1]:
            raise ValueError(f"known must have one entry per class ({real_means.shape[0]}), got shape {tuple(known.shape)}")
        self.real = real_means.float()
        self.known = known.bool()
        self.decay = decay
        #: Running mean of G(x, t) per target; None until :meth:`start` (or a checkpoint) sets it.
        self.fake: torch.Tensor | None = None

    def start(self, fake_means: torch.Tensor) -> None:
        """Set the running means from a first estimate (e.g. G on a few hundred training faces)."""
        if fake_means.shape != self.real.shape:
            raise ValueError(f"fake_means must have shape {tuple(self.real.shape)}, got {tuple(fake_means.shape)}")
        self.fake = fake_means.detach().float().clone()

    def loss(self, x_fake: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean over the batch's (known) targets and pixels of (running mean - real mean)^2.

        Updates the running means with this batch (no gradient flows into them).
        """
        if self.fake is None:
            raise RuntimeError("ClassMeanMatch.start() must be called before loss()")
        k = self.real.shape[0]
        batch_mean, counts = class_means(x_fake, target, k)
        present = (counts > 0) & self.known
        if not bool(present.any()):
            return x_fake.sum() * 0.0
        with torch.no_grad():
            self.fake[present] = torch.lerp(batch_mean.detach()[present], self.fake[present], self.decay)
        estimate = self.fake[present] + (batch_mean[present] - batch_mean[present].detach())
        return (estimate - self.real[present]).pow(2).mean()

    def distance(self) -> torch.Tensor:
        """Per-class RMS distance (model units) between the running fake mean and the real mean."""
        if self.fake is None:
            raise RuntimeError("ClassMeanMatch.start() must be called first")
        return (self.fake - self.real).pow(2).flatten(1).mean(1).sqrt()
