"""Random, differentiable augmentation of the images D's classifier reads.

Why: the generator learns whatever makes D's emotion classifier say the target, and on the CPU
runs that was thin streaks and blocks at fixed pixels, which an independent classifier does not
read as that emotion. Reading the images through a random small rotation, scale and sub-pixel shift
(bilinear, so pixel-exact patterns blur and move) plus a cutout square makes such patterns useless;
what is left to learn is expression a classifier sees from any small shift. The same transform is
applied to real images when D learns to classify them and to generated ones when G is scored, as
in DiffAugment (Zhao et al. 2020), but only on the classification path: D's real/fake output still
sees the images unchanged, so it still penalises the artefacts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class ClassAugment:
    """Ranges of the random transform, drawn per image from torch's global generator (so resume is exact)."""

    #: Rotation up to +- this many degrees.
    max_rotate_deg: float = 10.0
    #: Scale factor in [1 - max_scale, 1 + max_scale].
    max_scale: float = 0.1
    #: Shift up to +- this fraction of the image side, in x and y independently.
    max_shift: float = 0.08
    #: Side of a square set to mid-gray (0), as a fraction of the image side; 0 turns cutout off.
    cutout: float = 0.25
    #: Gaussian blur with a sigma drawn in [0, max_blur] pixels per image; 0 turns it off. Stripes a
    #: few pixels wide fade under it while the shapes of mouth, brows and eyes stay readable.
    max_blur: float = 0.0

    def __post_init__(self) -> None:
        if not 0 <= self.max_rotate_deg <= 180:
            raise ValueError(f"max_rotate_deg must be in [0, 180], got {self.max_rotate_deg}")
        if not 0 <= self.max_scale < 1:
            raise ValueError(f"max_scale must be in [0, 1), got {self.max_scale}")
        if not 0 <= self.max_shift <= 0.5 or not 0 <= self.cutout <= 1:
            raise ValueError(f"max_shift must be in [0, 0.5] and cutout in [0, 1], got {self.max_shift} and {self.cutout}")
        if not 0 <= self.max_blur <= 8:
            raise ValueError(f"max_blur must be a sigma in [0, 8] pixels, got {self.max_blur}")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Augment a (B, C, H, W) batch in [-1, 1]; gradients flow to ``x``."""
        b, _, h, w = x.shape
        u = torch.rand(b, 6) * 2 - 1  # CPU draws: the same sequence on any device
        angle = u[:, 0] * math.radians(self.max_rotate_deg)
        scale = 1 + u[:, 1] * self.max_scale
        shift = u[:, 2:4] * 2 * self.max_shift  # affine_grid's coordinates span 2 per side
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
        grid = F.affine_grid(theta.to(x.device), [b, x.size(1), h, w], align_corners=False)
        out = F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
        if self.cutout > 0:
            side_h, side_w = max(1, round(self.cutout * h)), max(1, round(self.cutout * w))
            cy = ((u[:, 4] + 1) / 2 * h).long().to(x.device)  # square centre anywhere; it may hang off the edge
            cx = ((u[:, 5] + 1) / 2 * w).long().to(x.device)
            ys = torch.arange(h, device=x.device)[None, :, None]
            xs = torch.arange(w, device=x.device)[None, None, :]
            dy = ys - (cy - side_h // 2)[:, None, None]  # rows cy - side/2 .. cy + side/2 - 1
            dx = xs - (cx - side_w // 2)[:, None, None]
            inside = (dy >= 0) & (dy < side_h) & (dx >= 0) & (dx < side_w)
            out = out * (~inside)[:, None].to(out.dtype)
        if self.max_blur > 0:
            out = gaussian_blur(out, torch.rand(b) * self.max_blur)  # drawn after the rest: old runs keep their draws
        return out.to(x.dtype)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Blur each image of a (B, C, H, W) batch with its own Gaussian ``sigma[b]`` (pixels; 0 leaves it as is).

    Separable and differentiable; edges are reflected so a border does not darken.
    """
    b, c, h, w = x.shape
    radius = max(1, math.ceil(3 * float(sigma.max())))
    if 2 * radius + 1 > min(h, w):
        raise ValueError(f"blur sigma {float(sigma.max()):.2f} needs a kernel wider than the {h}x{w} image")
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    s = sigma.float().clamp_min(1e-3)[:, None]
    kernel = torch.exp(-0.5 * (offsets[None, :] / s) ** 2)
    kernel = (kernel / kernel.sum(1, keepdim=True)).to(x.device, x.dtype)  # (B, K); sigma ~0 gives a unit impulse
    kernel = kernel.repeat_interleave(c, 0)  # one kernel per (image, channel) group
    y = x.reshape(1, b * c, h, w)
    y = F.conv2d(F.pad(y, (radius, radius, 0, 0), mode="reflect"), kernel[:, None, None, :], groups=b * c)
    y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode="reflect"), kernel[:, None, :, None], groups=b * c)
    return y.reshape(b, c, h, w)
