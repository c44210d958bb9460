"""StarGAN generator and discriminator with the report's switches.

Constructor arguments are the saved config: ``Generator(**cfg)`` rebuilds the
model a checkpoint describes (see :func:`GeneratorConfig`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from fexsdk.emotions import EMOTIONS
from fexsdk.training.flow_priors import paint_region_map

#: Dropout positions the generator understands.
#: "first"/"last": after the first and the last activation (the report's dropout preset);
#: "residual": after the activation inside every residual block (skip+dropout preset).
DROPOUT_POSITIONS = ("first", "last", "residual")

#: Up-sampling layers the generator understands. "transpose": StarGAN's 4x4 stride-2
#: transposed convolutions (the report's; they leave a period-2 checkerboard);
#: "nearest"/"bilinear": resize x2 then a 3x3 convolution (no checkerboard by construction).
UPSAMPLE_MODES = ("transpose", "nearest", "bilinear")

#: What the generator's last layer predicts. "image": the output image (StarGAN);
#: "warp": a displacement field, a painted image and a mask, combined as
#: ``mask * painted + (1 - mask) * warp(input, flow)``: the face's own pixels move.
OUTPUT_MODES = ("image", "warp")
#: Where a painting warp head may paint (see GeneratorConfig.paint_region).
PAINT_REGIONS = ("", "mouth")

#: Largest displacement a warp head can predict, in grid units ([-1, 1] spans the image): 1/8 of the size.
MAX_FLOW = 0.25


@dataclass
class GeneratorConfig:
    """Everything that defines a generator's architecture."""

    in_channels: int = 1
    image_size: int = 48
    label_dim: int = 7
    conv_dim: int = 64
    n_res: int = 6
    #: U-Net style additive skips between mirrored down/up layers.
    unet_skips: bool = False
    #: output = input + learned residual (clamped to [-1, 1]).
    input_skip: bool = False
    leaky_relu: bool = False
    dropout_p: float = 0.5
    dropout_at: list[str] = field(default_factory=list)
    #: How the two up-sampling layers double the size (see UPSAMPLE_MODES).
    upsample: str = "nearest"
    #: What the last layer predicts (see OUTPUT_MODES).
    output: str = "image"
    #: Warp heads only: also paint a masked residual (False: the output is the warped input alone,
    #: so every change is a movement of the face's own pixels and nothing can be painted on).
    paint: bool = True
    #: Warp heads only: largest displacement, in grid units ([-1, 1] spans the image).
    max_flow: float = MAX_FLOW
    #: Warp heads only: 0 = one displacement per pixel; c = the flow is averaged over c x c cells of
    #: control points and bilinearly interpolated back, so it is smooth by construction and cannot
    #: fold while neighbouring control points cannot cross: max_flow < c / image_size.
    flow_cell: int = 0
    #: Painting warp heads only: "" = paint anywhere the mask says; "mouth" = the mask is multiplied by a
    #: fixed map of the average face's mouth (training/flow_priors.paint_region_map), so paint can only
    #: darken an opening mouth or cover teeth, never draw over eyes, brows or cheeks.
    paint_region: str = ""
    #: Painting warp heads only: () = any target may paint; otherwise only these emotions may (the mask is
    #: zero for every other target label), e.g. ("surprise",): the dark gap of an opening mouth is the one
    #: change a flow cannot make, and every other target keeps a flow-only, photographic edit.
    paint_targets: tuple = ()

    @classmethod
    def from_saved(cls, saved: dict) -> "GeneratorConfig":
        """Rebuild a config saved by any fexsdk version (older ones had no ``upsample``: transposed convs)."""
        cfg = {"upsample": "transpose", **saved}
        cfg["paint_targets"] = tuple(cfg.get("paint_targets", ()))
        return cls(**cfg)

    def validate(self) -> None:
        if self.upsample not in UPSAMPLE_MODES:
            raise ValueError(f"unknown upsample {self.upsample!r}; allowed: {UPSAMPLE_MODES}")
        if self.output not in OUTPUT_MODES:
            raise ValueError(f"unknown output {self.output!r}; allowed: {OUTPUT_MODES}")
        if self.flow_cell < 0 or (self.flow_cell and self.image_size % self.flow_cell):
            raise ValueError(f"flow_cell must be 0 or divide image_size {self.image_size}, got {self.flow_cell}")
        if not 0.0 < self.max_flow <= 1.0:
            raise ValueError(f"max_flow must be in (0, 1] (grid units), got {self.max_flow}")
        if self.paint_region not in PAINT_REGIONS:
            raise ValueError(f"unknown paint_region {self.paint_region!r}; allowed: {PAINT_REGIONS}")
        if self.paint_region and not (self.output == "warp" and self.paint):
            raise ValueError("paint_region needs a painting warp head (output='warp', paint=True)")
        unknown = [t for t in self.paint_targets if t not in EMOTIONS]
        if unknown:
            raise ValueError(f"unknown paint_targets {unknown}; allowed: {list(EMOTIONS)}")
        if self.paint_targets and not (self.output == "warp" and self.paint):
            raise ValueError("paint_targets needs a painting warp head (output='warp', paint=True)")
        if self.output == "warp" and self.input_skip:
            raise ValueError("input_skip applies to output='image' only: a warp head starts from the input by design")
        bad = [p for p in self.dropout_at if p not in DROPOUT_POSITIONS]
        if bad:
            raise ValueError(f"unknown dropout position(s) {bad}; allowed: {DROPOUT_POSITIONS}")
        if self.dropout_at and not 0.0 < self.dropout_p < 1.0:
            raise ValueError(f"dropout_p must be in (0, 1), got {self.dropout_p}")
        if self.in_channels not in (1, 3):
            raise ValueError(f"in_channels must be 1 or 3, got {self.in_channels}")
        if self.image_size % 4:
            raise ValueError(f"image_size must be a multiple of 4 (two stride-2 layers), got {self.image_size}")


def _norm(channels: int) -> nn.InstanceNorm2d:
    # Affine, and no running stats: test-time behaviour equals train-time (a StarGAN trap).
    return nn.InstanceNorm2d(channels, affine=True, track_running_stats=False)


class MaskDropout(nn.Module):
    """Dropout that stays on at test time, or applies a keep-mask given from outside.

    Eval mode does not switch it off: the report keeps the noise at test time.
    Exported graphs take the mask as an input so the runtime can seed it.
    """

    def __init__(self, p: float, shape: tuple[int, int, int], name: str) -> None:
        super().__init__()
        self.p = p
        self.shape = shape
        self.name = name

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
        """``mask`` holds the multipliers themselves: 0 or 1/(1-p) for dropout, all 1 for none (eval-mode dropout)."""
        if mask is None:
            mask = (torch.rand_like(x) >= self.p).to(x.dtype) * (1.0 / (1.0 - self.p))
        return x * mask


class ResidualBlock(nn.Module):
    def __init__(self, dim: int, act: nn.Module, dropout: Optional[MaskDropout]) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(dim, dim, 3, 1, 1, bias=False)
        self.norm1 = _norm(dim)
        self.act = act
        self.dropout = dropout
        self.conv2 = nn.Conv2d(dim, dim, 3, 1, 1, bias=False)
        self.norm2 = _norm(dim)

    def forward(self, x: torch.Tensor, masks: dict[str, torch.Tensor]) -> torch.Tensor:
        h = self.act(self.norm1(self.conv1(x)))
        if self.dropout is not None:
            h = self.dropout(h, masks.get(self.dropout.name))
        return x + self.norm2(self.conv2(h))


def _upsample(dim_in: int, dim_out: int, mode: str) -> nn.Module:
    """x2 up-sampling: a transposed conv (StarGAN) or resize + 3x3 conv (no checkerboard)."""
    if mode == "transpose":
        return nn.ConvTranspose2d(dim_in, dim_out, 4, 2, 1, bias=False)
    return nn.Sequential(nn.Upsample(scale_factor=2, mode=mode), nn.Conv2d(dim_in, dim_out, 3, 1, 1, bias=False))


def identity_grid(size: int) -> torch.Tensor:
    """(1, S, S, 2) sampling grid of pixel centres in grid_sample's [-1, 1] units (align_corners=False)."""
    r = (torch.arange(size, dtype=torch.float32) * 2 + 1) / size - 1
    yy, xx = torch.meshgrid(r, r, indexing="ij")
    return torch.stack([xx, yy], dim=-1)[None]


def paint_gate_vector(targets, label_dim: int) -> torch.Tensor:
    """(label_dim,) 0/1 weights: label @ gate is 1 when the target is one of ``targets`` (in any domain).

    The label is ``[emotions of domain 0, emotions of domain 1, ..., domain mask]`` (fexsdk.metadata.label_layout);
    the mask columns get weight 0."""
    k = len(EMOTIONS)
    n_domains = 1 if label_dim == k else label_dim // (k + 1)
    gate = torch.zeros(label_dim)
    for d in range(n_domains):
        for name in targets:
            gate[d * k + EMOTIONS.index(name)] = 1.0
    return gate


def warp(x: torch.Tensor, flow: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Sample x at grid + flow (flow (B, 2, S, S) as (dx, dy) in [-1, 1] units); borders repeat."""
    g = grid.to(x.dtype) + flow.permute(0, 2, 3, 1).to(x.dtype)
    return F.grid_sample(x, g, mode="bilinear", padding_mode="border", align_corners=False)


@dataclass
class WarpOutput:
    """A warp head's parts at the model's size: ``image = warped + residual``."""

    image: torch.Tensor
    #: (B, 2, S, S) displacement (dx, dy) in grid units: pixels = flow * S / 2.
    flow: torch.Tensor
    #: mask * (painted - warped): what the warp alone cannot make, already masked.
    residual: torch.Tensor
    #: (B, 1, S, S) in [0, 1]: where painted pixels replace the warped ones.
    mask: torch.Tensor


class Generator(nn.Module):
    """StarGAN generator: label tiled as channels, 7x7 conv, 2 down, N residual, 2 up, 7x7 conv, tanh."""

    def __init__(self, **config) -> None:
        super().__init__()
        cfg = GeneratorConfig(**config)
        cfg.validate()
        self.config = cfg
        d, s = cfg.conv_dim, cfg.image_size
        act = lambda: nn.LeakyReLU(0.2) if cfg.leaky_relu else nn.ReLU()  # noqa: E731
        drop = lambda name, shape: MaskDropout(cfg.dropout_p, shape, name)  # noqa: E731

        self.stem = nn.Sequential(nn.Conv2d(cfg.in_channels + cfg.label_dim, d, 7, 1, 3, bias=False), _norm(d), act())
        self.drop_first = drop("first", (d, s, s)) if "first" in cfg.dropout_at else None
        self.down1 = nn.Sequential(nn.Conv2d(d, 2 * d, 4, 2, 1, bias=False), _norm(2 * d), act())
        self.down2 = nn.Sequential(nn.Conv2d(2 * d, 4 * d, 4, 2, 1, bias=False), _norm(4 * d), act())
        q = s // 4
        self.blocks = nn.ModuleList(
            ResidualBlock(4 * d, act(), drop(f"res{i}", (4 * d, q, q)) if "residual" in cfg.dropout_at else None)
            for i in range(cfg.n_res)
        )
        self.up1 = nn.Sequential(_upsample(4 * d, 2 * d, cfg.upsample), _norm(2 * d), act())
        self.up2 = nn.Sequential(_upsample(2 * d, d, cfg.upsample), _norm(d), act())
        self.drop_last = drop("last", (d, s, s)) if "last" in cfg.dropout_at else None
        if cfg.output == "warp":
            # flow (2) + painted image (C) + mask (1); starts as "no move, little paint".
            self.head = nn.Conv2d(d, 3 + cfg.in_channels if cfg.paint else 2, 7, 1, 3, bias=True)
            with torch.no_grad():
                self.head.weight.mul_(0.1)
                self.head.bias.zero_()
                if cfg.paint:
                    self.head.bias[-1] = -3.0
            self.register_buffer("grid", identity_grid(s), persistent=False)
            if cfg.paint_region == "mouth":
                self.register_buffer("region", paint_region_map(s), persistent=False)
            if cfg.paint_targets:
                self.register_buffer("paint_gate", paint_gate_vector(cfg.paint_targets, cfg.label_dim),
                                     persistent=False)
        else:
            self.head = nn.Conv2d(d, cfg.in_channels, 7, 1, 3, bias=False)

    # -- noise layout, shared with the exporter and the runtime ------------
    def dropout_sites(self) -> list[MaskDropout]:
        """Dropout modules in the order their masks are packed into the ``noise`` input."""
        sites = [self.drop_first] + [b.dropout for b in self.blocks] + [self.drop_last]
        return [m for m in sites if m is not None]

    def noise_size(self) -> int:
        return sum(m.shape[0] * m.shape[1] * m.shape[2] for m in self.dropout_sites())

    def unpack_noise(self, noise: Optional[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Split packed (B, noise_size) dropout multipliers into one (B, C, H, W) mask per site."""
        if noise is None:
            return {}
        masks, offset = {}, 0
        for m in self.dropout_sites():
            c, h, w = m.shape
            n = c * h * w
            masks[m.name] = noise[:, offset : offset + n].reshape(-1, c, h, w)
            offset += n
        return masks

    def forward(self, x: torch.Tensor, label: torch.Tensor, noise: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x: (B, C, S, S) in [-1, 1]; label: (B, label_dim); noise: optional packed dropout keep-masks."""
        if self.config.output == "warp":
            return self.forward_parts(x, label, noise).image
        out = torch.tanh(self.head(self._features(x, label, noise)))
        if self.config.input_skip:
            out = (x + out).clamp(-1.0, 1.0)
        return out

    def forward_parts(self, x: torch.Tensor, label: torch.Tensor, noise: Optional[torch.Tensor] = None) -> WarpOutput:
        """A warp head's flow, residual and mask besides the image (output='warp' only)."""
        if self.config.output != "warp":
            raise ValueError("forward_parts needs a generator with output='warp'")
        raw = self.head(self._features(x, label, noise)).float()
        c = self.config.in_channels
        flow = self._flow(raw[:, :2])
        warped = warp(x.float(), flow, self.grid)
        if not self.config.paint:
            zeros = torch.zeros_like(warped)
            return WarpOutput(warped, flow, zeros, zeros[:, :1])
        painted = torch.tanh(raw[:, 2 : 2 + c])
        mask = torch.sigmoid(raw[:, 2 + c :])
        if self.config.paint_region:
            mask = mask * self.region
        if self.config.paint_targets:
            gate = (label.float() @ self.paint_gate).clamp(0.0, 1.0)
            mask = mask * gate.view(-1, 1, 1, 1)
        residual = mask * (painted - warped)
        return WarpOutput(warped + residual, flow, residual, mask)

    def _flow(self, raw: torch.Tensor) -> torch.Tensor:
        """Bound the head's two flow channels to max_flow; on a grid of control points when flow_cell is set."""
        cfg = self.config
        if not cfg.flow_cell:
            return cfg.max_flow * torch.tanh(raw)
        coarse = cfg.max_flow * torch.tanh(F.avg_pool2d(raw, cfg.flow_cell))
        return F.interpolate(coarse, size=(cfg.image_size, cfg.image_size), mode="bilinear", align_corners=False)

    def _features(self, x: torch.Tensor, label: torch.Tensor, noise: Optional[torch.Tensor]) -> torch.Tensor:
        masks = self.unpack_noise(noise)
        c = label.view(label.size(0), label.size(1), 1, 1).expand(-1, -1, x.size(2), x.size(3))
        h0 = self.stem(torch.cat([x, c.to(x.dtype)], dim=1))
        if self.drop_first is not None:
            h0 = self.drop_first(h0, masks.get("first"))
        h1 = self.down1(h0)
        h = self.down2(h1)
        for block in self.blocks:
            h = block(h, masks)
        h = self.up1(h)
        if self.config.unet_skips:
            h = h + h1
        h = self.up2(h)
        if self.config.unet_skips:
            h = h + h0
        if self.drop_last is not None:
            h = self.drop_last(h, masks.get("last"))
        return h


@dataclass
class DiscriminatorConfig:
    in_channels: int = 1
    image_size: int = 48
    #: Number of classification logits (7 per domain).
    num_classes: int = 7
    conv_dim: int = 64
    max_dim: int = 2048

    def depth(self) -> int:
        """Number of stride-2 layers: halve while the size stays even and >= 2 (48 -> 4, 128 -> 6)."""
        size, n = self.image_size, 0
        while size % 2 == 0 and size // 2 >= 2 and n < 6:
            size //= 2
            n += 1
        if n < 1:
            raise ValueError(f"image_size {self.image_size} is too small or odd for the discriminator")
        return n


class Discriminator(nn.Module):
    """StarGAN's PatchGAN with a real/fake head and an emotion-classification head.

    ``forward(x, return_features=True)`` also returns the activations of the first
    4 layers, used by the perceptual (feature) reconstruction loss.
    """

    def __init__(self, **config) -> None:
        super().__init__()
        cfg = DiscriminatorConfig(**config)
        self.config = cfg
        n = cfg.depth()
        layers, dim_in = [], cfg.in_channels
        for i in range(n):
            dim_out = min(cfg.conv_dim * 2**i, cfg.max_dim)
            layers.append(nn.Sequential(nn.Conv2d(dim_in, dim_out, 4, 2, 1), nn.LeakyReLU(0.01)))
            dim_in = dim_out
        self.layers = nn.ModuleList(layers)
        final = cfg.image_size // 2**n
        self.src = nn.Conv2d(dim_in, 1, 3, 1, 1, bias=False)
        self.cls = nn.Conv2d(dim_in, cfg.num_classes, final, 1, 0, bias=False)

    def forward(self, x: torch.Tensor, return_features: bool = False):
        feats = []
        h = x
        for layer in self.layers:
            h = layer(h)
            feats.append(h)
        src = self.src(h)
        cls = self.cls(h).flatten(1)
        if return_features:
            return src, cls, feats[:4]
        return src, cls


def config_dict(model: nn.Module) -> dict:
    """The constructor arguments of a Generator or Discriminator, as saved in checkpoints."""
    return asdict(model.config)
