"""Named model presets, one per row of the report's Table 2 plus CPU-sized ones.

Each preset is a tiny function registered with :func:`register_preset`, like
timm's model entry points; ``get_preset(name)`` builds it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from fexsdk.training.models import GeneratorConfig


#: Adversarial losses the trainer implements (see LossConfig.adversarial).
ADVERSARIAL_LOSSES = ("wgan-gp", "r1")


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
    #: "wgan-gp": StarGAN's Wasserstein loss with gradient penalty (the report's recipe);
    #: "r1": non-saturating logistic loss with an R1 penalty on real images (StarGAN v2, StyleGAN2).
    adversarial: str = "wgan-gp"
    #: R1 weight: the penalty is r1_gamma / 2 * E|grad_x D(x_real)|^2.
    r1_gamma: float = 1.0
    #: Lazy regularisation: apply R1 every k-th D step, scaled by k (StyleGAN2); 1 = every step.
    r1_every: int = 16
    #: Warp heads only: weight of the flow's total variation (in pixels per pixel) and of the mean mask
    #: (painting is the exception: most of the expression should come from moving pixels).
    lambda_flow_tv: float = 1.0
    lambda_mask: float = 1.0
    #: Warp heads with paint: weight of the mask's total variation. A hard, thin mask lets the generator
    #: paint dark bars over the face; a smooth one has to blend its paint in (GANimation's mask TV).
    lambda_mask_tv: float = 0.0
    #: Read images through a random small rotation/scale/shift and a cutout on D's classification
    #: path (real images for D, generated ones for G); D's real/fake output sees them unchanged.
    #: See fexsdk.training.augment.
    cls_augment: bool = False
    #: With cls_augment: also blur with a Gaussian of sigma up to this many pixels (0: no blur).
    cls_blur: float = 0.0
    #: Weight of the mean |Laplacian| of the change G(x) - x (pixels in [-1, 1]). Stripes and bars
    #: that only D's classifier reads oscillate from pixel to pixel; an expression's change is smooth.
    lambda_change_lap: float = 0.0
    #: Weight of D learning that a generated face is *not* its target emotion: -log(1 - p_target)
    #: on D's classification of fakes. G can then only win its classification loss with changes
    #: that D also reads on real faces, not with patterns only fakes carry (0: StarGAN's D).
    lambda_cls_fake: float = 0.0
    #: Focusing exponent of G's classification loss: (1 - p_target)^gamma * cross-entropy (focal
    #: loss, Lin et al. 2017). Faces D already reads as their target stop being pushed further
    #: (caricatures), hard targets keep their pull. 0: plain cross-entropy (StarGAN).
    cls_focal: float = 0.0
    #: Weight of the class-mean matching loss: the running mean of G(x, t) against the mean real
    #: face of emotion t (see fexsdk.training.mean_match). Fixed patterns that real faces of that
    #: emotion do not share on average (fear's chin grid) cost; those they share do not. 0: off.
    lambda_mean_match: float = 0.0
    #: Warp heads only, the believability priors of fexsdk.training.flow_priors: area change outside the
    #: mouth ((det J - 1)^2), still nose and eye corners (px^2), left-right symmetry (px), painted
    #: amplitude (L1, cheaper in the mouth) and broad painted shading (L1 after a blur of
    #: ``shading_sigma`` px). 0: off.
    lambda_area: float = 0.0
    lambda_still: float = 0.0
    lambda_symmetry: float = 0.0
    lambda_paint: float = 0.0
    lambda_shading: float = 0.0
    shading_sigma: float = 2.0
    #: Multiplier of the paint and shading penalties for targets outside flow_priors.PAINTS_MOUTH (1: all alike).
    paint_others: float = 1.0
    #: Weight of the broad shading of the whole change, L1 of the low-passed G(x, t) - x (same sigma as
    #: above): moved pixels shade too (a raised brow, a squeezed eye), and the real-photo benchmark's
    #: shading line binds before its still-point line. 0: off.
    lambda_change_shading: float = 0.0
    #: Weight of a frozen classifier's cross-entropy on G's outputs (``TrainConfig.teacher``; see
    #: fexsdk.training.teacher). 0: off.
    lambda_teacher: float = 0.0

    def validate(self) -> None:
        if self.perceptual_mode not in ("replace", "add"):
            raise ValueError(f"perceptual_mode must be 'replace' or 'add', got {self.perceptual_mode!r}")
        if self.adversarial not in ADVERSARIAL_LOSSES:
            raise ValueError(f"adversarial must be one of {ADVERSARIAL_LOSSES}, got {self.adversarial!r}")
        if self.r1_gamma < 0 or self.r1_every < 1:
            raise ValueError(f"r1_gamma must be >= 0 and r1_every >= 1, got {self.r1_gamma} and {self.r1_every}")
        if self.cls_blur < 0 or self.cls_blur > 0 and not self.cls_augment:
            raise ValueError(f"cls_blur must be >= 0 and needs cls_augment, got {self.cls_blur} (cls_augment={self.cls_augment})")
        if self.lambda_rec < 0:
            raise ValueError(f"lambda_rec must be >= 0, got {self.lambda_rec}")
        if self.lambda_change_lap < 0 or self.lambda_cls_fake < 0:
            raise ValueError(f"lambda_change_lap and lambda_cls_fake must be >= 0, got {self.lambda_change_lap} and {self.lambda_cls_fake}")
        if self.cls_focal < 0:
            raise ValueError(f"cls_focal must be >= 0, got {self.cls_focal}")
        if self.lambda_mean_match < 0:
            raise ValueError(f"lambda_mean_match must be >= 0, got {self.lambda_mean_match}")
        if self.lambda_teacher < 0:
            raise ValueError(f"lambda_teacher must be >= 0, got {self.lambda_teacher}")
        priors = {"lambda_area": self.lambda_area, "lambda_still": self.lambda_still, "lambda_symmetry": self.lambda_symmetry,
                  "lambda_paint": self.lambda_paint, "lambda_shading": self.lambda_shading,
                  "lambda_change_shading": self.lambda_change_shading}
        bad = {k: v for k, v in priors.items() if v < 0}
        if self.paint_others < 0:
            bad["paint_others"] = self.paint_others
        if bad or self.shading_sigma <= 0:
            raise ValueError(f"the flow-prior weights must be >= 0 and shading_sigma > 0, got {bad or self.shading_sigma}")


@dataclass
class Preset:
    name: str
    description: str
    generator: GeneratorConfig
    loss: LossConfig = field(default_factory=LossConfig)
    d_conv_dim: int = 64
    #: D steps per G step: 5 for WGAN-GP (StarGAN), 1 for the R1 recipe.
    n_critic: int = 5


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
    return Preset("stargan", "original StarGAN (Table 2 row d)", GeneratorConfig(upsample="transpose"))


@register_preset
def perceptual() -> Preset:
    return Preset("perceptual", "StarGAN + perceptual loss from D (row e)", GeneratorConfig(upsample="transpose"), LossConfig(perceptual=True))


@register_preset
def perceptual_skip() -> Preset:
    return Preset(
        "perceptual-skip",
        "StarGAN + perceptual loss + U-Net skips (row f)",
        GeneratorConfig(unet_skips=True, upsample="transpose"),
        LossConfig(perceptual=True),
    )


@register_preset
def dropout() -> Preset:
    return Preset(
        "dropout",
        "StarGAN + dropout after first/last activation + LeakyReLU (row g)",
        GeneratorConfig(leaky_relu=True, dropout_at=["first", "last"], upsample="transpose"),
    )


@register_preset
def skip() -> Preset:
    return Preset("skip", "StarGAN + U-Net skips (row h)", GeneratorConfig(unet_skips=True, upsample="transpose"))


@register_preset
def skip_dropout() -> Preset:
    return Preset(
        "skip-dropout",
        "StarGAN + U-Net skips + dropout in residual blocks + LeakyReLU (row i, the report's best)",
        GeneratorConfig(unet_skips=True, leaky_relu=True, dropout_at=["residual"], upsample="transpose"),
    )


# -- CPU-sized ---------------------------------------------------------------
@register_preset
def skip_dropout_small() -> Preset:
    """The best row at half width and half depth: the bundled default model's size."""
    return Preset(
        "skip-dropout-small",
        "skip-dropout at conv_dim 32 with 3 residual blocks (CPU-sized)",
        GeneratorConfig(conv_dim=32, n_res=3, unet_skips=True, leaky_relu=True, dropout_at=["residual"],
                        upsample="transpose"),
        d_conv_dim=32,
    )


# -- fexsdk's own recipe ------------------------------------------------------
def _fex_generator(conv_dim: int, n_res: int, upsample: str = "nearest") -> GeneratorConfig:
    """skip-dropout with resize-conv up-sampling and the input-to-output skip."""
    return GeneratorConfig(conv_dim=conv_dim, n_res=n_res, unet_skips=True, leaky_relu=True,
                           dropout_at=["residual"], input_skip=True, upsample=upsample)


def _fex_loss() -> LossConfig:
    """R1 + non-saturating loss (one D step per G step) and a 3x classification weight."""
    return LossConfig(adversarial="r1", lambda_cls=3.0)


@register_preset
def fex_small() -> Preset:
    """The bundled default's recipe at CPU size: converges in hours on 2 cores."""
    return Preset("fex-small", "skip-dropout-small + input skip + resize-conv, R1 recipe, lambda_cls 3",
                  _fex_generator(32, 3), _fex_loss(), d_conv_dim=32, n_critic=1)


@register_preset
def fex_small_bilinear_wgan() -> Preset:
    """fex-small's generator with bilinear resize-conv, trained with the report's WGAN-GP recipe.

    At equal wall-clock on 2 CPU cores (105 min) bilinear beat nearest by 6.6 points of
    generated accuracy with the same realism (docs/research/training-log.md, "Long CPU runs").
    """
    return Preset("fex-small-bilinear-wgan", "fex-small generator with bilinear resize-conv, WGAN-GP (5 D steps per G step), lambda_cls 3",
                  _fex_generator(32, 3, upsample="bilinear"), LossConfig(adversarial="wgan-gp", lambda_cls=3.0), d_conv_dim=32, n_critic=5)


@register_preset
def fex_small_bilinear_wgan_aug() -> Preset:
    """fex-small-bilinear-wgan whose D classifier reads randomly shifted/rotated/cut-out images (augment.py)."""
    return Preset("fex-small-bilinear-wgan-aug", "fex-small-bilinear-wgan + classifier-path augmentation (rotate/scale/shift + cutout)",
                  _fex_generator(32, 3, upsample="bilinear"), LossConfig(adversarial="wgan-gp", lambda_cls=3.0, cls_augment=True),
                  d_conv_dim=32, n_critic=5)


@register_preset
def fex_small_bilinear_wgan_clean() -> Preset:
    """fex-small-bilinear-wgan-aug whose D also rejects fakes as their target, with a blur and a smooth-change penalty.

    Against the stripes and bars the -aug model draws for D's classifier (docs/research/training-log.md, "Against the stripes").
    """
    loss = LossConfig(adversarial="wgan-gp", lambda_cls=3.0, cls_augment=True, cls_blur=1.5,
                      lambda_change_lap=8.0, lambda_cls_fake=0.5)
    return Preset("fex-small-bilinear-wgan-clean",
                  "fex-small-bilinear-wgan-aug + D rejects fakes as their target (0.5), blur 1.5 px, change Laplacian 8, lambda_cls 3",
                  _fex_generator(32, 3, upsample="bilinear"), loss, d_conv_dim=32, n_critic=5)


@register_preset
def fex() -> Preset:
    """The same recipe at the report's size (conv_dim 64, 6 blocks): for GPUs."""
    return Preset("fex", "skip-dropout + input skip + resize-conv, R1 recipe, lambda_cls 3 (paper size)",
                  _fex_generator(64, 6), _fex_loss(), d_conv_dim=64, n_critic=1)


@register_preset
def fex_small_warp() -> Preset:
    """fex-small whose generator moves the face's pixels (flow + masked residual) instead of painting them."""
    gen = _fex_generator(32, 3)
    gen.input_skip, gen.output = False, "warp"
    return Preset("fex-small-warp", "fex-small with a warp head: flow field + masked residual",
                  gen, _fex_loss(), d_conv_dim=32, n_critic=1)


@register_preset
def fex_small_flow() -> Preset:
    """fex-small-warp without the painted residual: every change is a smooth movement of the face's pixels."""
    gen = _fex_generator(32, 3)
    gen.input_skip, gen.output, gen.paint = False, "warp", False
    return Preset("fex-small-flow", "fex-small with a flow-only warp head (no painting)",
                  gen, _fex_loss(), d_conv_dim=32, n_critic=1)


@register_preset
def fex_small_smoothflow() -> Preset:
    """fex-small-flow on a grid of control points 8 px apart (6x6 at 48x48): smooth and fold-free by construction."""
    gen = _fex_generator(32, 3)
    gen.input_skip, gen.output, gen.paint = False, "warp", False
    gen.flow_cell, gen.max_flow = 8, 0.16
    return Preset("fex-small-smoothflow",
                  "fex-small-flow with the flow on a 6x6 control grid, at most 3.8 px at 48x48",
                  gen, _fex_loss(), d_conv_dim=32, n_critic=1)


@register_preset
def fex_small_softwarp() -> Preset:
    """fex-small-warp tamed: a fold-free flow of at most 1.9 px at 48x48 on 4-px cells, and a smooth paint mask.

    Tried on the CPU: after 2,500 updates it still paints black blobs and striped
    patches that D's classifier reads as the target; kept for longer (GPU) runs, not recommended."""
    gen = _fex_generator(32, 3)
    gen.input_skip, gen.output = False, "warp"
    gen.flow_cell, gen.max_flow = 4, 0.08
    loss = _fex_loss()
    loss.lambda_mask_tv = 1.0
    return Preset("fex-small-softwarp",
                  "fex-small-warp with the flow on 4-px cells (at most 1.9 px at 48x48) and a smooth paint mask",
                  gen, loss, d_conv_dim=32, n_critic=1)


@register_preset
def fex_small_fineflow() -> Preset:
    """fex-small-smoothflow on a finer grid with half the reach: 4-px cells (12x12), at most 1.9 px at 48x48.

    Finer cells move mouth corners and brows on their own instead of whole regions, and the smaller
    reach keeps the face's geometry: the 8-px, 3.8-px field drew caricatures."""
    gen = _fex_generator(32, 3)
    gen.input_skip, gen.output, gen.paint = False, "warp", False
    gen.flow_cell, gen.max_flow = 4, 0.08
    return Preset("fex-small-fineflow",
                  "fex-small-flow on a 12x12 control grid, at most 1.9 px at 48x48",
                  gen, _fex_loss(), d_conv_dim=32, n_critic=1)


@register_preset
def fex_small_believable() -> Preset:
    """fex-small-fineflow that may also paint, trained under the believability priors (flow_priors.py).

    Moving the face's own pixels keeps photographic detail; the priors keep the movement to what
    faces do (little area change outside the mouth, still nose and eye corners, symmetric), and
    paint is charged by amplitude and by broad shading, so it is left for what flow cannot make:
    the dark gap of an opening mouth. D's classifier reads augmented, blurred images and rejects
    fakes as their target, against patterns only a classifier reads."""
    gen = _fex_generator(32, 3)
    gen.input_skip, gen.output, gen.paint = False, "warp", True
    gen.flow_cell, gen.max_flow = 4, 0.08
    loss = LossConfig(adversarial="r1", lambda_cls=2.0, cls_augment=True, cls_blur=1.5, lambda_cls_fake=0.5,
                      lambda_flow_tv=1.0, lambda_mask=0.5, lambda_mask_tv=1.0,
                      lambda_area=20.0, lambda_still=2.0, lambda_symmetry=1.0, lambda_paint=8.0, lambda_shading=16.0)
    return Preset("fex-small-believable",
                  "fex-small-fineflow + masked paint, under flow priors (area, still points, symmetry) and paint penalties",
                  gen, loss, d_conv_dim=32, n_critic=1)


@register_preset
def fex_small_believable_flow() -> Preset:
    """fex-small-believable without paint, and a stronger pull to the target: every change is moved pixels.

    With paint, a classification weight of 5 drew black blobs (an "o" mouth for surprise, arcs over the eyes)
    that the paint penalties did not stop; a flow-only head cannot paint them."""
    p = fex_small_believable()
    p.name = "fex-small-believable-flow"
    p.description = "fex-small-believable without paint (flow only), lambda_cls 4"
    p.generator.paint = False
    p.loss.lambda_cls = 4.0
    p.loss.lambda_paint = p.loss.lambda_shading = p.loss.lambda_mask = p.loss.lambda_mask_tv = 0.0
    return p


@register_preset
def fex_small_believable_reach() -> Preset:
    """fex-small-believable-flow with 1.5 times the reach: 6-px cells (8x8 at 48x48), at most 2.9 px.

    At 1.9 px the flow is pinned at its bound around the mouth for disgust and surprise, and too
    short to flatten a broad smile; 6-px cells keep it fold-free at the longer reach (0.12 < 6/48),
    and the priors (area, still points, symmetry) keep the rest of the face where it was. The cells
    must divide the image size: 48 or 96 px, not 64 or 128."""
    p = fex_small_believable_flow()
    p.name = "fex-small-believable-reach"
    p.description = "fex-small-believable-flow on 6-px cells, at most 2.9 px at 48x48"
    p.generator.flow_cell, p.generator.max_flow = 6, 0.12
    return p


@register_preset
def fex_small_believable_shade() -> Preset:
    """fex-small-believable-flow that pays for the broad shading its movements cause, with a stronger class pull.

    On the real-photo benchmark the shading line (low-passed luminance change) binds before the
    still points do: raising a brow or squeezing an eye moves dark pixels over light ones. Charging
    that change in training asks for edits that read with less broad shading, not just weaker ones."""
    p = fex_small_believable_flow()
    p.name = "fex-small-believable-shade"
    p.description = "fex-small-believable-flow + broad shading of the whole change x30, lambda_cls 5"
    p.loss.lambda_cls = 5.0
    p.loss.lambda_change_shading = 30.0
    return p


@register_preset
def fex_small_believable_mouth() -> Preset:
    """fex-small-believable-flow that may also paint, but only between the lips (paint_region="mouth").

    A flow cannot open a closed mouth: surprise and fear need the dark gap between the lips, which only
    paint can make. Earlier painting heads drew blobs over eyes and brows under a strong class weight;
    here the mask is multiplied by a fixed mouth map, so nothing can be painted elsewhere, and paint
    inside the mouth is charged by amplitude and broad shading only lightly."""
    p = fex_small_believable()
    p.name = "fex-small-believable-mouth"
    p.description = "fex-small-believable-flow + paint only between the lips (fixed mouth map), lambda_cls 4"
    p.generator.paint_region = "mouth"
    p.loss.lambda_cls = 4.0
    p.loss.lambda_paint, p.loss.lambda_shading = 2.0, 8.0
    return p


@register_preset
def fex_small_believable_surprise() -> Preset:
    """fex-small-believable-mouth where only surprise may paint, under run F's firmer class and still-point weights.

    Mouth paint opened surprise's mouth in a way that reads (run D), but every other target drew moustaches,
    blobs or grey teeth; a penalty six times dearer did not stop them (run E). Here the mask is zero for every
    target but surprise, so the others are flow-only by construction."""
    p = fex_small_believable_mouth()
    p.name = "fex-small-believable-surprise"
    p.description = "fex-small-believable-mouth, only surprise may paint; lambda_cls 6, lambda_still 6"
    p.generator.paint_targets = ("surprise",)
    p.loss.lambda_cls, p.loss.lambda_still = 6.0, 6.0
    return p


@register_preset
def tiny() -> Preset:
    """A few thousand parameters: for tests and smoke runs, not for results."""
    return Preset(
        "tiny",
        "skip-dropout at conv_dim 8, 1 residual block (tests and smoke runs only)",
        GeneratorConfig(conv_dim=8, n_res=1, unet_skips=True, leaky_relu=True, dropout_at=["residual"],
                        upsample="transpose"),
        d_conv_dim=8,
    )
