"""Priors that keep a warp head's edit believable: real expressions move a face in known ways.

A classifier rewards any geometry it reads as the target, so a flow trained on the
classification loss alone draws caricatures (squashed noses, eyes pulled apart). These
penalties encode what faces do when their expression changes:

- area: skin stretches little outside the mouth, so the flow's Jacobian determinant stays
  near 1 there (a pure translation has determinant 1 everywhere; a squash does not);
- still points: the nose bridge and tip do not move, the eye corners do not move sideways;
- symmetry: most expressions move both halves of the face alike (disgust less so);
- paint: what is painted instead of moved should be small, local and carry no broad shading.

Positions are those of FER2013's average face at 48x48 (YuNet's five landmarks, median over
1,486 Training faces: eyes (14.6, 18.2) and (32.7, 18.4), nose tip (23.7, 28.4), mouth corners
(16.6, 36.1) and (30.9, 36.3)); FER2013 crops vary by 3-5 px, so the maps are soft.
All functions take flows in pixels, (B, 2, S, S) as (dx, dy).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fexsdk.emotions import EMOTIONS

#: Landmarks of FER2013's average face at 48x48, (x, y) in pixels.
FER_EYES = ((14.6, 18.2), (32.7, 18.4))
FER_NOSE_TIP = (23.7, 28.4)
FER_MOUTH_CORNERS = ((16.6, 36.1), (30.9, 36.3))
#: Emotions whose movement may be asymmetric (a one-sided sneer): their symmetry weight is lower.
ASYMMETRIC = {"disgust": 0.3}
#: Emotions whose paint is expected: the dark gap of an opening mouth (surprise, fear), teeth (happy).
#: Paint for the others (dark lips for sad, a shadow for angry) read as smears in early runs.
PAINTS_MOUTH = ("surprise", "fear", "happy")


def _gauss(size: int, cx: float, cy: float, sx: float, sy: float) -> torch.Tensor:
    r = torch.arange(size, dtype=torch.float32) + 0.5
    yy, xx = torch.meshgrid(r, r, indexing="ij")
    return torch.exp(-0.5 * (((xx - cx) / sx) ** 2 + ((yy - cy) / sy) ** 2))


@dataclass
class PriorMaps:
    """Weight maps at the model's size: (1, 2, S, S) still-point weights per flow component, (1, 1, S, S) mouth."""

    still: torch.Tensor
    mouth: torch.Tensor


def prior_maps(size: int = 48) -> PriorMaps:
    """Still points and the mouth region of the average FER2013 face, scaled to ``size``."""
    k = size / 48.0
    (ex0, ey0), (ex1, ey1) = FER_EYES
    nx, ny = FER_NOSE_TIP
    nose = torch.zeros(size, size)
    for y in (ey0 + 1.0, (ey0 + ny) / 2, ny):  # bridge, middle, tip
        nose = torch.maximum(nose, _gauss(size, nx * k, y * k, 2.5 * k, 2.5 * k))
    corners = torch.zeros(size, size)
    half = 0.25 * (ex1 - ex0)  # eye corners ~ a quarter of the eye distance from each centre
    for cx, cy in ((ex0 - half, ey0), (ex0 + half, ey0), (ex1 - half, ey1), (ex1 + half, ey1)):
        corners = torch.maximum(corners, _gauss(size, cx * k, cy * k, 2.0 * k, 2.0 * k))
    # dx: nose and eye corners still; dy: nose still (lids and brows may move up and down).
    still = torch.stack([torch.maximum(nose, corners), nose])[None]
    (mx0, my0), (mx1, my1) = FER_MOUTH_CORNERS
    mouth = _gauss(size, (mx0 + mx1) / 2 * k, (my0 + my1) / 2 * k, 0.75 * (mx1 - mx0) * k, 5.5 * k)
    return PriorMaps(still, mouth[None, None])


#: Where a mouth-region painting head may paint: the lips and the gap between them, in FER pixels.
PAINT_REGION_SIGMA = (0.6, 4.0)  # x: fraction of the mouth width; y: pixels at 48x48


def paint_region_map(size: int = 48) -> torch.Tensor:
    """(1, 1, S, S) in [0, 1]: 1 between the average face's lips, falling to ~0 at the nose tip and chin.

    Multiplied into a painting head's mask, it makes paint anywhere else impossible by construction:
    penalties alone did not stop a classifier-driven head from painting blobs over eyes and brows.
    """
    k = size / 48.0
    (mx0, my0), (mx1, my1) = FER_MOUTH_CORNERS
    sx, sy = PAINT_REGION_SIGMA
    region = _gauss(size, (mx0 + mx1) / 2 * k, (my0 + my1) / 2 * k, sx * (mx1 - mx0) * k, sy * k)
    return region[None, None]


def jacobian_det(flow_px: torch.Tensor) -> torch.Tensor:
    """det(I + grad u) of a pixel flow by forward differences: (B, 1, S-1, S-1); 1 = no area change."""
    u, v = flow_px[:, 0:1], flow_px[:, 1:2]
    ux, uy = u[:, :, :-1, 1:] - u[:, :, :-1, :-1], u[:, :, 1:, :-1] - u[:, :, :-1, :-1]
    vx, vy = v[:, :, :-1, 1:] - v[:, :, :-1, :-1], v[:, :, 1:, :-1] - v[:, :, :-1, :-1]
    return (1 + ux) * (1 + vy) - uy * vx


def area_loss(flow_px: torch.Tensor, mouth: torch.Tensor) -> torch.Tensor:
    """Mean (det J - 1)^2 outside the mouth (the mouth may open and stretch)."""
    w = 1.0 - mouth[:, :, :-1, :-1].to(flow_px)
    return (w * (jacobian_det(flow_px) - 1.0) ** 2).mean()


def still_loss(flow_px: torch.Tensor, still: torch.Tensor) -> torch.Tensor:
    """Weighted mean squared displacement (pixels^2) where expressions barely move the face."""
    w = still.to(flow_px)
    return (w * flow_px ** 2).sum(dim=(1, 2, 3)).mean() / w.sum()


def mirror_flow(flow_px: torch.Tensor) -> torch.Tensor:
    """The flow of the left-right mirrored face: flip the field and negate its dx."""
    flipped = flow_px.flip(-1)
    return torch.cat([-flipped[:, 0:1], flipped[:, 1:2]], dim=1)


def symmetry_weights(targets: torch.Tensor) -> torch.Tensor:
    """(B,) symmetry weights for target emotion indices: lower for emotions that may be one-sided."""
    table = torch.tensor([ASYMMETRIC.get(name, 1.0) for name in EMOTIONS], dtype=torch.float32)
    return table.to(targets.device)[targets]


def symmetry_loss(flow_px: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Mean |u - mirror(u)| in pixels, per face weighted."""
    per_face = (flow_px - mirror_flow(flow_px)).abs().mean(dim=(1, 2, 3))
    return (weights.to(per_face.dtype) * per_face).mean()


def gaussian_blur(t: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (B, C, H, W), borders replicated."""
    radius = max(1, int(3 * sigma + 0.5))
    x = torch.arange(-radius, radius + 1, dtype=t.dtype, device=t.device)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    k = k / k.sum()
    c = t.shape[1]
    t = F.pad(t, (radius, radius, radius, radius), mode="replicate")
    t = F.conv2d(t, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(t, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def paint_weights(targets: torch.Tensor, others: float = 1.0) -> torch.Tensor:
    """(B,) weights of the paint penalties for target emotion indices: 1 for PAINTS_MOUTH, ``others`` for the rest."""
    table = torch.tensor([1.0 if name in PAINTS_MOUTH else others for name in EMOTIONS], dtype=torch.float32)
    return table.to(targets.device)[targets]


def _weighted_mean(per_pixel: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    if weights is None:
        return per_pixel.mean()
    return (weights.to(per_pixel.dtype) * per_pixel.mean(dim=(1, 2, 3))).mean()


def paint_loss(residual: torch.Tensor, mouth: torch.Tensor, mouth_discount: float = 0.75,
               weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean |residual|, cheaper inside the mouth (an opening mouth's dark gap needs paint); ``weights``: per face."""
    w = 1.0 - mouth_discount * mouth.to(residual)
    return _weighted_mean(w * residual.abs(), weights)


def shading_loss(residual: torch.Tensor, sigma: float, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean |low-pass residual|: broad shading (grey bands, pale masks) costs, fine local paint less."""
    return _weighted_mean(gaussian_blur(residual, sigma).abs(), weights)
