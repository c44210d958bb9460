"""Named model presets, one per row of the report's Table 2 plus CPU-sized ones.

Each preset is a tiny function registered with :func:`register_preset`, like
timm's model entry points; ``get_preset(name)`` builds it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from training.models import GeneratorConfig


@dataclass
class LossConfig:
    """Loss weights and the perceptual switch (StarGAN's defaults)."""

    lambda_cls: float = 1.0
    lambda_rec: float = 10.0
    lambda_gp: float = 10.0
    #: Use the feature (perceptual) cycle loss over D's first 4 layers.
    perceptual: bool = False
    #: Epoch at which the feature loss switches in (the report: 40).
    perceptual_start_epoch: float = 40.0
    #: "replace": the feature loss replaces the pixel loss (the report); "add": both.
    perceptual_mode: str = "replace"

    def validate(self) -> None:
        if self.perceptual_mode not in ("replace", "add"):
            raise ValueError(f"perceptual_mode must be 'replace' or 'add', got {self.perceptual_mode!r}")


@dataclass
class Preset:
    name: str
    description: str
    generator: GeneratorConfig
    loss: LossConfig = field(default_factory=LossConfig)
    d_conv_dim: int = 64


_PRESETS: dict[str, Callable[[], Preset]] = {}


def register_preset(fn: Callable[[], Preset]) -> Callable[[], Preset]:
    """Register a preset under its function name with '_' written as '-'."""
    _PRESETS[fn.__name__.replace("_", "-")] = fn
    return fn


def list_presets() -> list[str]:
    return sorted(_PRESETS)


def get_preset(name: str) -> Preset:
    if name not in _PRESETS:
        raise ValueError(f"unknown preset {name!r}; available: {', '.join(list_presets())}")
    return _PRESETS[name]()


# -- Table 2 of the report ---------------------------------------------------
@register_preset
def stargan() -> Preset:
    return Preset("stargan", "original StarGAN (Table 2 row d)", GeneratorConfig())


@register_preset
def perceptual() -> Preset:
    return Preset("perceptual", "StarGAN + perceptual loss from D (row e)", GeneratorConfig(), LossConfig(perceptual=True))


@register_preset
def perceptual_skip() -> Preset:
    return Preset(
        "perceptual-skip",
        "StarGAN + perceptual loss + U-Net skips (row f)",
        GeneratorConfig(unet_skips=True),
        LossConfig(perceptual=True),
    )


@register_preset
def dropout() -> Preset:
    return Preset(
        "dropout",
        "StarGAN + dropout after first/last activation + LeakyReLU (row g)",
        GeneratorConfig(leaky_relu=True, dropout_at=["first", "last"]),
    )


@register_preset
def skip() -> Preset:
    return Preset("skip", "StarGAN + U-Net skips (row h)", GeneratorConfig(unet_skips=True))


@register_preset
def skip_dropout() -> Preset:
    return Preset(
        "skip-dropout",
        "StarGAN + U-Net skips + dropout in residual blocks + LeakyReLU (row i, the report's best)",
        GeneratorConfig(unet_skips=True, leaky_relu=True, dropout_at=["residual"]),
    )


# -- CPU-sized ---------------------------------------------------------------
@register_preset
def skip_dropout_small() -> Preset:
    """The best row at half width and half depth: the bundled default model's size."""
    return Preset(
        "skip-dropout-small",
        "skip-dropout at conv_dim 32 with 3 residual blocks (CPU-sized)",
        GeneratorConfig(conv_dim=32, n_res=3, unet_skips=True, leaky_relu=True, dropout_at=["residual"]),
        d_conv_dim=32,
    )


@register_preset
def tiny() -> Preset:
    """A few thousand parameters: for tests and smoke runs, not for results."""
    return Preset(
        "tiny",
        "skip-dropout at conv_dim 8, 1 residual block (tests and smoke runs only)",
        GeneratorConfig(conv_dim=8, n_res=1, unet_skips=True, leaky_relu=True, dropout_at=["residual"]),
        d_conv_dim=8,
    )
