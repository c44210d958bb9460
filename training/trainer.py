"""The StarGAN training loop: WGAN-GP, domain classification, cycle and perceptual losses.

Resumable exactly: the data order is a pure function of (seed, domain, epoch),
and the checkpoint holds the step, the optimizers and the torch RNG state.
"""

from __future__ import annotations

import copy
import math
import os
import subprocess
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from fexsdk.emotions import EMOTIONS, NUM_EMOTIONS
from fexsdk.metadata import label_dim_for, label_layout, normalize
from fexsdk.training.checkpoint import (checkpoint_from_onnx, generator_config, load_checkpoint, load_discriminator,
                                        save_checkpoint)
from fexsdk.training.data import FaceDataset, load_dataset, load_image_folder, load_training_data
from fexsdk.training.logs import ScalarLog, plot_losses, save_grid
from fexsdk.training import flow_priors as priors
from fexsdk.training.augment import ClassAugment
from fexsdk.training.mean_match import ClassMeanMatch, class_means
from fexsdk.training.models import Discriminator, Generator, config_dict
from fexsdk.training.presets import LossConfig, get_preset
from fexsdk.training.teacher import load_teacher, teacher_loss


@dataclass
class TrainConfig:
    """Options of one training run (``fex train`` flags map one to one)."""

    preset: str = "skip-dropout-small"
    #: FER2013 as CSV, Kaggle folder or .npz; ignored when ``synthetic`` > 0.
    data: Optional[str] = None
    #: Train on this many synthetic images instead of ``data`` (smoke runs, tests).
    synthetic: int = 0
    #: Optional second domain: an image folder <root>/<emotion>/*, trained jointly via the mask vector.
    second_domain: Optional[str] = None
    out: str = "runs/default"
    epochs: float = 1.0
    #: Stop after this many iterations (one D step each) instead of ``epochs``.
    max_steps: Optional[int] = None
    batch_size: int = 16
    lr_g: float = 1e-4
    lr_d: float = 1e-4
    beta1: float = 0.5
    beta2: float = 0.999
    #: D steps per G step (None keeps the preset's: 5 for WGAN-GP, 1 for the R1 recipe).
    n_critic: Optional[int] = None
    #: Adversarial loss override, "wgan-gp" or "r1" (None keeps the preset's).
    adversarial: Optional[str] = None
    #: Up-sampling override, "transpose", "nearest" or "bilinear" (None keeps the preset's).
    upsample: Optional[str] = None
    #: Decay of the exponential moving average of G's weights (StarGAN v2: 0.999); 0 turns it off.
    ema_beta: float = 0.999
    #: Fraction of the run after which the learning rates decay linearly to zero.
    decay_start: float = 0.5
    seed: int = 0
    #: "auto" (bf16 where the hardware runs it fast, see resolve_precision), "fp32" or "bf16".
    precision: str = "auto"
    device: str = "auto"
    threads: Optional[int] = None
    log_every: int = 50
    sample_every: int = 500
    ckpt_every: int = 500
    #: Overrides of the preset's loss settings (None keeps the preset's).
    #: Override the preset's generator: output = input + learned residual.
    input_skip: Optional[bool] = None
    perceptual: Optional[bool] = None
    perceptual_start_epoch: Optional[float] = None
    perceptual_mode: Optional[str] = None
    #: Weight of the domain-classification loss (None keeps the preset's, StarGAN's 1).
    lambda_cls: Optional[float] = None
    #: Augment the images D's classifier reads (None keeps the preset's; see training/augment.py).
    cls_augment: Optional[bool] = None
    #: Blur sigma (pixels) on D's classification path (None keeps the preset's; needs cls_augment).
    cls_blur: Optional[float] = None
    #: Weight of the change's Laplacian penalty (None keeps the preset's; see LossConfig).
    lambda_change_lap: Optional[float] = None
    #: Weight of D's "a fake is not its target" loss (None keeps the preset's; see LossConfig).
    lambda_cls_fake: Optional[float] = None
    #: Focusing exponent of G's classification loss (None keeps the preset's, 0; see LossConfig).
    cls_focal: Optional[float] = None
    #: Weight of the class-mean matching loss (None keeps the preset's, 0; see LossConfig).
    lambda_mean_match: Optional[float] = None
    #: Weight of the cycle (reconstruction) loss (None keeps the preset's, StarGAN's 10).
    lambda_rec: Optional[float] = None
    #: Painting warp heads: weights of the paint amplitude and broad-shading penalties (None keeps the preset's).
    lambda_paint: Optional[float] = None
    lambda_shading: Optional[float] = None
    #: Multiplier of those penalties for targets that neither open the mouth nor show teeth (None: the preset's, 1).
    paint_others: Optional[float] = None
    #: Warp heads: weight of the still-point prior (nose, eye corners; None keeps the preset's).
    lambda_still: Optional[float] = None
    #: Weight of the broad shading of the whole change (None keeps the preset's; see LossConfig).
    lambda_change_shading: Optional[float] = None
    #: A frozen expression classifier (.safetensors or `fex train-classifier` checkpoint) whose reading of
    #: G's outputs joins G's loss with weight ``lambda_teacher``; never the scoring classifier.
    teacher: Optional[str] = None
    lambda_teacher: Optional[float] = None
    #: Start from the G, EMA G and D weights of this checkpoint (same generator), with fresh optimizers
    #: and schedule: a warm start, unlike ``resume``, which continues a run exactly. An exported ``.onnx``
    #: (the bundled model, say) gives G and EMA G only: D then starts from scratch (see ``d_warmup``).
    init_from: Optional[str] = None
    #: Iterations at the start of the run in which only D learns (G and EMA G frozen). A fresh D next to a
    #: trained G would otherwise feed G random adversarial and classification gradients.
    d_warmup: int = 0
    #: With ``init_from``: D's weights from this file (``save_discriminator``'s safetensors), e.g. the D
    #: shipped beside the bundled model, in place of the checkpoint's D or a fresh one.
    init_discriminator: Optional[str] = None
    #: Width and depth overrides: G and D base channels, G residual blocks (None keeps the preset's).
    conv_dim: Optional[int] = None
    n_res: Optional[int] = None
    #: Painting warp heads: only these targets may paint (None keeps the preset's; see GeneratorConfig).
    paint_targets: Optional[tuple[str, ...]] = None
    image_size: int = 48
    channels: int = 1
    resume: bool = False
    progress: bool = True
    #: Stop cleanly (checkpoint written) after this many minutes; rerun with ``resume`` to go on.
    #: For leased machines that give a run a fixed slice of time.
    time_limit_min: Optional[float] = None
    #: With ``time_limit_min``: the learning-rate schedule follows the clock (fraction of the time
    #: limit spent) instead of the step count, so a fixed-length leased run still decays to 0.
    #: Such a run is not exactly resumable (its schedule depends on speed).
    time_schedule: bool = False
    #: Train from scratch into a non-empty ``out`` (replacing its checkpoints and log); without it,
    #: or ``resume``, a non-empty ``out`` is refused.
    overwrite: bool = False

    def validate(self) -> None:
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"precision must be 'auto', 'fp32' or 'bf16', got {self.precision!r}")
        if self.batch_size < 2:
            raise ValueError(f"batch_size must be >= 2, got {self.batch_size}")
        if self.conv_dim is not None and self.conv_dim < 1 or self.n_res is not None and self.n_res < 0:
            raise ValueError(f"conv_dim must be >= 1 and n_res >= 0, got {self.conv_dim} and {self.n_res}")
        if self.time_schedule and self.time_limit_min is None:
            raise ValueError("time_schedule needs time_limit_min (the schedule follows the clock up to the limit)")
        if self.time_limit_min is not None and not self.time_limit_min > 0:
            raise ValueError(f"time_limit_min must be > 0 minutes, got {self.time_limit_min}")
        if self.lambda_cls is not None and self.lambda_cls < 0:
            raise ValueError(f"lambda_cls must be >= 0, got {self.lambda_cls}")
        if self.n_critic is not None and self.n_critic < 1:
            raise ValueError(f"n_critic must be >= 1, got {self.n_critic}")
        if not 0.0 <= self.ema_beta < 1.0:
            raise ValueError(f"ema_beta must be in [0, 1), got {self.ema_beta}")
        if not 0.0 <= self.decay_start <= 1.0:
            raise ValueError(f"decay_start must be in [0, 1], got {self.decay_start}")
        if self.d_warmup < 0:
            raise ValueError(f"d_warmup must be >= 0 iterations, got {self.d_warmup}")
        if self.init_from is not None and self.resume:
            raise ValueError("init_from starts a new run from a checkpoint's weights; resume continues OUT/last.pt: pick one")
        if self.init_discriminator is not None and self.init_from is None:
            raise ValueError("init_discriminator goes with init_from (the generator it was trained against)")
        if (self.teacher is None) != (self.lambda_teacher is None or self.lambda_teacher == 0):
            raise ValueError(f"teacher and lambda_teacher go together: a teacher file and a weight > 0, got "
                             f"teacher={self.teacher!r}, lambda_teacher={self.lambda_teacher}")
        if self.data is None and self.synthetic <= 0:
            raise ValueError("give --data PATH (FER2013 csv, folder or npz) or --synthetic N")
        from fexsdk.training.run_checks import check_run_config

        check_run_config(self)  # epochs, steps, the output folder


def lr_factor(step: int, total: int, decay_start: float) -> float:
    """Constant, then linear decay to 0 at the last step (StarGAN's own decay barely decays)."""
    start = int(total * decay_start)
    if step < start or total <= start:
        return 1.0
    return max(0.0, (total - step) / (total - start))


def lr_factor_by_time(elapsed: float, limit: float, decay_start: float) -> float:
    """The same schedule over wall-clock time: constant, then linear to 0 at the time limit.

    A run with ``time_schedule`` follows the lower of this and :func:`lr_factor` over its steps, so the
    rate reaches 0 at the time limit or at the last step, whichever comes first."""
    return lr_factor(int(1e6 * min(elapsed, limit) / limit), int(1e6), decay_start)


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU has bf16 instructions (AVX-512 BF16 or AMX); without them bf16 autocast is ~16x slower."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(f in flags.split() for f in ("avx512_bf16", "amx_bf16"))


def resolve_precision(precision: str, device: torch.device) -> str:
    """Turn "auto" into "bf16" or "fp32" for this device, and warn where bf16 was asked for but is slow."""
    fast = device.type == "cuda" or (device.type == "cpu" and cpu_has_fast_bf16())
    if precision == "auto":
        return "bf16" if fast else "fp32"
    if precision == "bf16" and not fast:
        warnings.warn("bf16 autocast on a CPU without AVX-512 BF16/AMX runs ~16x slower than fp32; "
                      "use --precision fp32 (or auto)", stacklevel=2)
    return precision


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip()
    except Exception:
        return ""


#: Columns of scalars.csv (G columns are NaN for an interval without a G step).
LOG_KEYS = ("lr", "D/loss_real", "D/loss_fake", "D/loss_cls", "D/loss_cls_fake", "D/loss_gp", "D/loss_r1",
            "G/loss_fake", "G/loss_cls", "G/loss_rec", "G/loss_rec_feat", "G/loss_flow_tv", "G/loss_mask", "G/loss_mask_tv", "G/loss_change_lap",
            "G/loss_mean_match", "G/loss_area", "G/loss_still", "G/loss_symmetry", "G/loss_paint", "G/loss_shading",
            "G/loss_change_shading", "G/loss_teacher")


def load_generator_weights(G: Generator, state: dict[str, torch.Tensor]) -> None:
    """Load ``state`` into ``G``; a flow-only warp head's weights fill the first two (flow) channels of a painting head.

    The paint and mask channels keep their initialisation ("little paint"), so a trained flow model
    is a warm start for the same model that may also paint.
    """
    own = G.state_dict()
    state = dict(state)
    for key in ("head.weight", "head.bias"):
        if key in state and state[key].shape != own[key].shape and state[key].shape[0] == 2:
            grown = own[key].clone()
            grown[:2] = state[key]
            state[key] = grown
    G.load_state_dict(state)


class DomainStream:
    """Batches of one data set in an order fixed by (seed, domain, epoch): resuming needs only the step."""

    def __init__(self, data: FaceDataset, batch: int, seed: int, domain: int, rank: int, world: int) -> None:
        if len(data) < batch * world:
            raise ValueError(f"data set {data.name!r} has {len(data)} images, fewer than one batch ({batch * world})")
        self.images = torch.from_numpy(np.ascontiguousarray(data.images))
        self.labels = torch.from_numpy(np.asarray(data.labels, dtype=np.int64))
        self.batch, self.seed, self.domain, self.rank, self.world = batch, seed, domain, rank, world
        self.per_epoch = len(data) // (batch * world)
        self._perm_epoch, self._perm = -1, None

    def get(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The k-th batch of this rank: images in [-1, 1] (flipped at random) and labels."""
        epoch, pos = divmod(k, self.per_epoch)
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng([self.seed, self.domain, epoch]).permutation(len(self.labels))
            self._perm_epoch = epoch
        start = (pos * self.world + self.rank) * self.batch
        idx = torch.from_numpy(self._perm[start : start + self.batch])
        x = normalize(self.images[idx].float())
        flip = torch.rand(x.size(0)) < 0.5  # StarGAN's horizontal-flip augmentation
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        return x, self.labels[idx]


def domain_label(emotions: torch.Tensor, domain: int, n_domains: int) -> torch.Tensor:
    """Generator label from emotion indices: the runtime's layout (fexsdk.metadata.label_layout)."""
    onehot = F.one_hot(emotions.cpu(), NUM_EMOTIONS).float().numpy()
    return torch.from_numpy(label_layout(onehot, domain, n_domains))


def gradient_penalty(D: Discriminator, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    alpha = torch.rand(real.size(0), 1, 1, 1, device=real.device)
    x_hat = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    src, _ = D(x_hat)
    (grad,) = torch.autograd.grad(src.sum(), x_hat, create_graph=True)
    return ((grad.flatten(1).norm(2, dim=1) - 1) ** 2).mean()


def total_variation(t: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference between vertical plus horizontal neighbours of a (B, C, H, W) map."""
    return (t[..., 1:, :] - t[..., :-1, :]).abs().mean() + (t[..., :, 1:] - t[..., :, :-1]).abs().mean()


def not_target_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean -log(1 - softmax(logits)[target]): low when the target class is judged unlikely."""
    log_p = F.log_softmax(logits, dim=1)
    # log(1 - p_t) = log(sum of the other classes' probabilities), computed stably.
    others = log_p.masked_fill(F.one_hot(target, logits.size(1)).bool(), float("-inf"))
    return -torch.logsumexp(others, dim=1).mean()


def focal_cross_entropy(logits: torch.Tensor, target: torch.Tensor, gamma: float) -> torch.Tensor:
    """Mean (1 - p_target)^gamma * -log p_target; gamma 0 is the plain cross-entropy."""
    log_p = F.log_softmax(logits, dim=1).gather(1, target[:, None])[:, 0]
    if gamma == 0:
        return -log_p.mean()
    return -((1.0 - log_p.exp()).pow(gamma) * log_p).mean()


def laplacian_l1(t: torch.Tensor) -> torch.Tensor:
    """Mean absolute 4-neighbour Laplacian of a (B, C, H, W) map (edges replicated)."""
    p = F.pad(t, (1, 1, 1, 1), mode="replicate")
    lap = p[..., :-2, 1:-1] + p[..., 2:, 1:-1] + p[..., 1:-1, :-2] + p[..., 1:-1, 2:] - 4 * t
    return lap.abs().mean()


def r1_penalty(D: Discriminator, real: torch.Tensor) -> torch.Tensor:
    """E_x |grad_x sum(D_src(x))|^2 over real images (Mescheder et al. 2018); the caller weights it by gamma/2."""
    x = real.detach().requires_grad_(True)
    src, _ = D(x)
    (grad,) = torch.autograd.grad(src.float().sum(), x, create_graph=True)
    return grad.float().pow(2).flatten(1).sum(1).mean()


@torch.no_grad()
def ema_update(ema: torch.nn.Module, live: torch.nn.Module, beta: float) -> None:
    """ema <- beta * ema + (1 - beta) * live, for parameters; buffers are copied."""
    torch._foreach_lerp_(list(ema.parameters()), [p.detach() for p in live.parameters()], 1.0 - beta)
    for be, bl in zip(ema.buffers(), live.buffers()):
        be.copy_(bl)


class Trainer:
    """Builds models, data and optimizers from a :class:`TrainConfig` and runs the loop."""

    def __init__(self, cfg: TrainConfig) -> None:
        cfg.validate()
        self.cfg = cfg
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        if cfg.device == "auto":
            self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        else:
            self.device = torch.device(cfg.device)
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
        if self.device.type == "cuda" and self.world > 1:
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed 48x48 shapes: let cuDNN pick the fastest kernels
        self.precision = resolve_precision(cfg.precision, self.device)
        self.out = Path(cfg.out)
        self.is_main = self.rank == 0

        preset = get_preset(cfg.preset)
        self.preset = preset
        self.loss_cfg = LossConfig(**asdict(preset.loss))
        if cfg.perceptual is not None:
            self.loss_cfg.perceptual = cfg.perceptual
        if cfg.perceptual_start_epoch is not None:
            self.loss_cfg.perceptual_start_epoch = cfg.perceptual_start_epoch
        if cfg.perceptual_mode is not None:
            self.loss_cfg.perceptual_mode = cfg.perceptual_mode
        if cfg.lambda_cls is not None:
            self.loss_cfg.lambda_cls = cfg.lambda_cls
        if cfg.adversarial is not None:
            self.loss_cfg.adversarial = cfg.adversarial
        if cfg.cls_augment is not None:
            self.loss_cfg.cls_augment = cfg.cls_augment
            if not cfg.cls_augment and cfg.cls_blur is None:
                self.loss_cfg.cls_blur = 0.0  # the blur is part of the augmentation: off with it
        if cfg.cls_blur is not None:
            self.loss_cfg.cls_blur = cfg.cls_blur
        if cfg.lambda_change_lap is not None:
            self.loss_cfg.lambda_change_lap = cfg.lambda_change_lap
        if cfg.lambda_cls_fake is not None:
            self.loss_cfg.lambda_cls_fake = cfg.lambda_cls_fake
        if cfg.lambda_rec is not None:
            self.loss_cfg.lambda_rec = cfg.lambda_rec
        if cfg.cls_focal is not None:
            self.loss_cfg.cls_focal = cfg.cls_focal
        if cfg.lambda_mean_match is not None:
            self.loss_cfg.lambda_mean_match = cfg.lambda_mean_match
        for name in ("lambda_paint", "lambda_shading", "paint_others", "lambda_still", "lambda_change_shading",
                     "lambda_teacher"):
            if getattr(cfg, name) is not None:
                setattr(self.loss_cfg, name, getattr(cfg, name))
        self.loss_cfg.validate()
        self.cls_augment = ClassAugment(max_blur=self.loss_cfg.cls_blur) if self.loss_cfg.cls_augment else None
        self.teacher = None
        if cfg.teacher:
            self.teacher = load_teacher(cfg.teacher, cfg.image_size, cfg.channels).to(self.device)
        self.n_critic = cfg.n_critic or preset.n_critic
        self._prior_maps = priors.prior_maps(preset.generator.image_size)

        self.domains, self.val = self._load_data()
        self.n_domains = len(self.domains)
        label_dim = label_dim_for(NUM_EMOTIONS, self.n_domains)

        torch.manual_seed(cfg.seed)
        gcfg = asdict(preset.generator)
        gcfg.update(in_channels=cfg.channels, image_size=cfg.image_size, label_dim=label_dim)
        if cfg.input_skip is not None:
            gcfg["input_skip"] = cfg.input_skip
        if cfg.conv_dim is not None:
            gcfg["conv_dim"] = cfg.conv_dim
        if cfg.n_res is not None:
            gcfg["n_res"] = cfg.n_res
        if cfg.upsample is not None:
            gcfg["upsample"] = cfg.upsample
        if cfg.paint_targets is not None:
            gcfg["paint_targets"] = tuple(cfg.paint_targets)
        self.G = Generator(**gcfg).to(self.device)
        #: Exponential moving average of G's weights: what samples, evaluation and export use.
        self.G_ema = copy.deepcopy(self.G).requires_grad_(False) if cfg.ema_beta > 0 else None
        self.g_updates = 0
        self.D = Discriminator(in_channels=cfg.channels, image_size=cfg.image_size,
                               num_classes=NUM_EMOTIONS * self.n_domains,
                               conv_dim=cfg.conv_dim or preset.d_conv_dim).to(self.device)
        self.opt_g = torch.optim.Adam(self.G.parameters(), cfg.lr_g, betas=(cfg.beta1, cfg.beta2))
        self.opt_d = torch.optim.Adam(self.D.parameters(), cfg.lr_d, betas=(cfg.beta1, cfg.beta2))
        if self.world > 1:  # start every rank from rank 0's weights
            for p in list(self.G.parameters()) + list(self.D.parameters()):
                dist.broadcast(p.data, 0)

        self.streams = [DomainStream(d, cfg.batch_size, cfg.seed, i, self.rank, self.world) for i, d in enumerate(self.domains)]
        self.steps_per_epoch = self.streams[0].per_epoch * self.n_domains
        self.total_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * self.steps_per_epoch))
        self.step = 0
        self.best = math.inf
        self.commit = git_commit()
        self._resumed_mean_match: Optional[list[torch.Tensor]] = None
        if cfg.resume:
            self._resume()
        elif cfg.init_from:
            self._init_from(Path(cfg.init_from))
        #: One ClassMeanMatch per domain where the loss is on (its running means resume from the checkpoint).
        self.mean_match: list[ClassMeanMatch] = []
        if self.loss_cfg.lambda_mean_match > 0:
            self._start_mean_match()

    # -- data ------------------------------------------------------------
    def _load_data(self) -> tuple[list[FaceDataset], FaceDataset]:
        cfg = self.cfg
        if cfg.synthetic > 0:
            from fexsdk.training.synthetic import make_synthetic

            train = make_synthetic(cfg.synthetic, cfg.image_size, cfg.channels, seed=cfg.seed, name="synthetic")
            val = make_synthetic(64, cfg.image_size, cfg.channels, seed=cfg.seed + 1, name="synthetic")
        else:
            train = load_training_data(cfg.data, cfg.image_size, cfg.channels)
            val = None
            for split in ("public", "test"):
                try:
                    val = load_dataset(cfg.data, split, cfg.image_size, cfg.channels)
                    break
                except ValueError:
                    continue
            if val is None:  # no held-out split in this file: watch the first training images instead
                val = FaceDataset(train.images[:64], train.labels[:64], train.name)
        domains = [train]
        if cfg.second_domain:
            domains.append(load_image_folder(cfg.second_domain, cfg.image_size, cfg.channels))
        n_val = min(64, len(val))
        val = FaceDataset(val.images[:n_val], val.labels[:n_val], val.name)
        return domains, val

    @torch.no_grad()
    def _start_mean_match(self, n_faces: int = 256) -> None:
        """Real class means per domain (flip-symmetrised, as training flips) and a first fake estimate."""
        saved = self._resumed_mean_match
        for i, stream in enumerate(self.streams):
            real, counts = class_means(normalize(stream.images.float()).to(self.device), stream.labels.to(self.device), NUM_EMOTIONS)
            mm = ClassMeanMatch(0.5 * (real + real.flip(-1)), counts > 0)
            if saved is not None:
                mm.start(saved[i].to(self.device))
            else:  # G on the first n_faces training faces, each in all 7 targets; training's RNG untouched
                x = normalize(stream.images[:n_faces].float()).to(self.device)
                fakes = []
                with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                    torch.manual_seed(self.cfg.seed)
                    for t in range(NUM_EMOTIONS):
                        trg = torch.full((x.size(0),), t, dtype=torch.long)
                        with self._autocast():
                            fakes.append(self.G(x, domain_label(trg, i, self.n_domains).to(self.device)).float())
                fake = torch.stack(fakes, 1).mean(0)  # (7, C, H, W)
                mm.start(0.5 * (fake + fake.flip(-1)))
            self.mean_match.append(mm)

    # -- checkpoints -------------------------------------------------------
    def _payload(self) -> dict[str, Any]:
        return {
            "generator_config": config_dict(self.G),
            "discriminator_config": config_dict(self.D),
            "train_config": asdict(self.cfg),
            "loss_config": asdict(self.loss_cfg),
            "preset": self.preset.name,
            "domains": [d.name for d in self.domains],
            "emotions": list(EMOTIONS),
            "G": self.G.state_dict(),
            "G_ema": self.G_ema.state_dict() if self.G_ema is not None else None,
            "g_updates": self.g_updates,
            "n_critic": self.n_critic,
            "D": self.D.state_dict(),
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "step": self.step,
            "epoch": self.epoch,
            "best": self.best,
            "torch_rng": torch.get_rng_state(),
            "commit": self.commit,
            "mean_match_fake": [mm.fake.cpu() for mm in self.mean_match] or None,
        }

    def _resume(self) -> None:
        path = self.out / "last.pt"
        if not path.exists():
            raise FileNotFoundError(f"--resume: no checkpoint at {path}")
        ckpt = load_checkpoint(path)
        if generator_config(ckpt) != config_dict(self.G):
            raise ValueError(f"--resume: {path} holds a different generator ({ckpt['preset']}) than preset {self.preset.name}")
        self.G.load_state_dict(ckpt["G"])
        if self.G_ema is not None:
            self.G_ema.load_state_dict(ckpt.get("G_ema") or ckpt["G"])
        self.g_updates = int(ckpt.get("g_updates", 0))
        self.D.load_state_dict(ckpt["D"])
        self.opt_g.load_state_dict(ckpt["opt_g"])
        self.opt_d.load_state_dict(ckpt["opt_d"])
        self.step = int(ckpt["step"])
        self.best = float(ckpt["best"])
        torch.set_rng_state(ckpt["torch_rng"])
        self._resumed_mean_match = ckpt.get("mean_match_fake")

    def _init_from(self, path: Path) -> None:
        ckpt = checkpoint_from_onnx(path) if path.suffix == ".onnx" else load_checkpoint(path)
        source, ours = generator_config(ckpt), config_dict(self.G)
        # The flow's control grid and reach hold no weights: a head may warm-start one with another grid.
        reach = {k: ours[k] for k in ("flow_cell", "max_flow")}
        new_reach = {k: v for k, v in reach.items() if source.get(k) != v}
        source = {**source, **reach}
        # A flow-only head may warm-start the same head that also paints (anywhere, or in its paint_region).
        paint_keys = {k: ours[k] for k in ("paint", "paint_region", "paint_targets")}
        adds_paint = {**source, **paint_keys} == ours and source.get("paint") is False and ours.get("paint") is True
        if source != ours and not adds_paint:
            raise ValueError(f"--init-from: {path} holds a different generator ({ckpt['preset']}) than preset {self.preset.name}")
        if "D" in ckpt and ckpt.get("discriminator_config") != config_dict(self.D):
            raise ValueError(f"--init-from: {path} holds a different discriminator than this run's")
        if new_reach and self.is_main:
            print(f"--init-from: {path} had another flow grid; this run uses {new_reach}", flush=True)
        if adds_paint and self.is_main:
            print(f"--init-from: {path} is a flow-only warp head; its paint channels start as 'no paint'", flush=True)
        load_generator_weights(self.G, ckpt["G"])
        if self.G_ema is not None:
            load_generator_weights(self.G_ema, ckpt.get("G_ema") or ckpt["G"])
        if self.cfg.init_discriminator:
            d_config, d_state = load_discriminator(self.cfg.init_discriminator)
            if d_config != config_dict(self.D):
                raise ValueError(f"--init-discriminator: {self.cfg.init_discriminator} holds a different discriminator "
                                 f"({d_config}) than this run's ({config_dict(self.D)})")
            self.D.load_state_dict(d_state)
        elif "D" in ckpt:
            self.D.load_state_dict(ckpt["D"])
        elif self.is_main:
            advice = "" if self.cfg.d_warmup else "; --d-warmup N trains it alone first"
            print(f"--init-from: {path} has no discriminator, D starts from scratch{advice}", flush=True)

    def save(self, name: str = "last.pt") -> None:
        if self.is_main:
            save_checkpoint(self.out / name, self._payload())

    # -- the loop ----------------------------------------------------------
    @property
    def epoch(self) -> float:
        return self.step / self.steps_per_epoch

    def perceptual_active(self) -> bool:
        return self.loss_cfg.perceptual and self.epoch >= self.loss_cfg.perceptual_start_epoch

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16")

    def _allreduce(self, model: torch.nn.Module) -> None:
        if self.world == 1:
            return
        for p in model.parameters():
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad /= self.world

    def train_step(self) -> dict[str, float]:
        """One D update, and a G update every ``n_critic`` steps."""
        cfg, lc, dev = self.cfg, self.loss_cfg, self.device
        d = self.step % self.n_domains
        x_real, lab_org = self.streams[d].get(self.step // self.n_domains)
        lab_trg = torch.randint(0, NUM_EMOTIONS, lab_org.shape)
        c_org = domain_label(lab_org, d, self.n_domains).to(dev)
        c_trg = domain_label(lab_trg, d, self.n_domains).to(dev)
        x_real, lab_org, lab_trg = x_real.to(dev), lab_org.to(dev), lab_trg.to(dev)
        cls_slice = slice(d * NUM_EMOTIONS, (d + 1) * NUM_EMOTIONS)
        factor = lr_factor(self.step, self.total_steps, cfg.decay_start)
        if cfg.time_schedule:
            # Whichever end comes first: a run that reaches its last step before the time limit (a faster
            # machine than planned for) must still have decayed to 0 there, not stop at the full rate.
            factor = min(factor, lr_factor_by_time(time.monotonic() - self._t_start, 60 * cfg.time_limit_min,
                                                   cfg.decay_start))
        for group in self.opt_g.param_groups:
            group["lr"] = cfg.lr_g * factor
        for group in self.opt_d.param_groups:
            group["lr"] = cfg.lr_d * factor
        logs: dict[str, float] = {"lr": cfg.lr_d * factor}

        # Discriminator.
        wgan = lc.adversarial == "wgan-gp"
        with self._autocast():
            src, cls = self.D(x_real)
            d_real = -src.float().mean() if wgan else F.softplus(-src.float()).mean()
            if self.cls_augment is not None:
                _, cls = self.D(self.cls_augment(x_real))
            d_cls = F.cross_entropy(cls.float()[:, cls_slice], lab_org)
            with torch.no_grad():
                x_fake = self.G(x_real, c_trg)
            src_f, _ = self.D(x_fake.detach())
            d_fake = src_f.float().mean() if wgan else F.softplus(src_f.float()).mean()
            d_loss = d_real + d_fake + lc.lambda_cls * d_cls
            if lc.lambda_cls_fake > 0:
                view = x_fake.detach() if self.cls_augment is None else self.cls_augment(x_fake.detach())
                _, cls_f = self.D(view)
                d_cls_fake = not_target_loss(cls_f.float()[:, cls_slice], lab_trg)
                d_loss = d_loss + lc.lambda_cls_fake * d_cls_fake
                logs["D/loss_cls_fake"] = d_cls_fake.item()
            if wgan:
                d_gp = gradient_penalty(self.D, x_real, x_fake.detach().to(x_real.dtype)).float()
                d_loss = d_loss + lc.lambda_gp * d_gp
                logs["D/loss_gp"] = d_gp.item()
            elif lc.r1_gamma > 0 and self.step % lc.r1_every == 0:
                d_r1 = r1_penalty(self.D, x_real)
                d_loss = d_loss + 0.5 * lc.r1_gamma * lc.r1_every * d_r1
                logs["D/loss_r1"] = d_r1.item()
        self.opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        self._allreduce(self.D)
        self.opt_d.step()
        logs.update({"D/loss_real": d_real.item(), "D/loss_fake": d_fake.item(), "D/loss_cls": d_cls.item()})

        # Generator (frozen during the D warm-up).
        if (self.step + 1) % self.n_critic == 0 and self.step >= cfg.d_warmup:
            with self._autocast():
                warp_terms = torch.zeros((), device=dev)
                if self.G.config.output == "warp":
                    parts = self.G.forward_parts(x_real, c_trg)
                    x_fake = parts.image
                    flow_px = parts.flow * (cfg.image_size / 2)
                    g_tv = total_variation(flow_px)
                    g_mask = parts.mask.mean()
                    g_mask_tv = total_variation(parts.mask)
                    warp_terms = lc.lambda_flow_tv * g_tv + lc.lambda_mask * g_mask + lc.lambda_mask_tv * g_mask_tv
                    logs.update({"G/loss_flow_tv": g_tv.item(), "G/loss_mask": g_mask.item(),
                                 "G/loss_mask_tv": g_mask_tv.item()})
                    warp_terms = warp_terms + self._prior_terms(flow_px.float(), parts.residual.float(), lab_trg, logs)
                else:
                    x_fake = self.G(x_real, c_trg)
                if lc.lambda_mean_match > 0:
                    g_mm = self.mean_match[d].loss(x_fake.float(), lab_trg)
                    warp_terms = warp_terms + lc.lambda_mean_match * g_mm
                    logs["G/loss_mean_match"] = g_mm.item()
                if lc.lambda_change_shading > 0:
                    g_shade = priors.shading_loss(x_fake.float() - x_real.float(), lc.shading_sigma)
                    warp_terms = warp_terms + lc.lambda_change_shading * g_shade
                    logs["G/loss_change_shading"] = g_shade.item()
                if lc.lambda_change_lap > 0:
                    g_lap = laplacian_l1(x_fake.float() - x_real.float())
                    warp_terms = warp_terms + lc.lambda_change_lap * g_lap
                    logs["G/loss_change_lap"] = g_lap.item()
                src, cls = self.D(x_fake)
                if self.cls_augment is not None:
                    _, cls = self.D(self.cls_augment(x_fake))
                g_fake = -src.float().mean() if wgan else F.softplus(-src.float()).mean()
                g_cls = focal_cross_entropy(cls.float()[:, cls_slice], lab_trg, lc.cls_focal)
                if self.teacher is not None:
                    g_teacher = teacher_loss(self.teacher, x_fake, lab_trg)
                    warp_terms = warp_terms + lc.lambda_teacher * g_teacher
                    logs["G/loss_teacher"] = g_teacher.item()
                x_rec = self.G(x_fake, c_org)
                g_rec = (x_real - x_rec.float()).abs().mean()
                g_feat = torch.zeros((), device=dev)
                if self.perceptual_active():
                    with torch.no_grad():
                        _, _, f_real = self.D(x_real, return_features=True)
                    _, _, f_rec = self.D(x_rec, return_features=True)
                    g_feat = sum((a.float() - b.float()).abs().mean() for a, b in zip(f_real, f_rec))
                    rec = g_feat if lc.perceptual_mode == "replace" else g_rec + g_feat
                else:
                    rec = g_rec
            g_loss = g_fake + lc.lambda_cls * g_cls + lc.lambda_rec * rec + warp_terms
            self.opt_g.zero_grad(set_to_none=True)
            g_loss.backward()
            self._allreduce(self.G)
            self.opt_g.step()
            self.g_updates += 1
            if self.G_ema is not None:
                # Warm-up: a short average early on, so the first samples are not the random init.
                beta = min(cfg.ema_beta, (1.0 + self.g_updates) / (10.0 + self.g_updates))
                ema_update(self.G_ema, self.G, beta)
            logs.update({"G/loss_fake": g_fake.item(), "G/loss_cls": g_cls.item(), "G/loss_rec": g_rec.item(),
                         "G/loss_rec_feat": float(g_feat.detach())})
        self.step += 1
        return logs

    def _prior_terms(self, flow_px: torch.Tensor, residual: torch.Tensor, targets: torch.Tensor,
                     logs: dict[str, float]) -> torch.Tensor:
        """The believability priors on a warp head's flow and paint (flow_priors.py), weighted."""
        lc = self.loss_cfg
        maps = self._prior_maps
        paint_w = None if lc.paint_others == 1.0 else priors.paint_weights(targets, lc.paint_others)
        terms = {
            "area": (lc.lambda_area, lambda: priors.area_loss(flow_px, maps.mouth)),
            "still": (lc.lambda_still, lambda: priors.still_loss(flow_px, maps.still)),
            "symmetry": (lc.lambda_symmetry, lambda: priors.symmetry_loss(flow_px, priors.symmetry_weights(targets))),
            "paint": (lc.lambda_paint, lambda: priors.paint_loss(residual, maps.mouth, weights=paint_w)),
            "shading": (lc.lambda_shading, lambda: priors.shading_loss(residual, lc.shading_sigma, weights=paint_w)),
        }
        total = torch.zeros((), device=flow_px.device)
        for name, (weight, loss) in terms.items():
            if weight > 0:
                value = loss()
                logs[f"G/loss_{name}"] = value.item()
                total = total + weight * value
        return total

    @property
    def sampler(self) -> Generator:
        """The generator that samples, validation and checkpoints' users see: the EMA one where kept."""
        return self.G_ema if self.G_ema is not None else self.G

    @torch.no_grad()
    def validate(self) -> float:
        """A fixed-batch, fixed-noise score for picking best.pt: λ_cls·CE(D_cls(G(x,c)), c) + λ_rec·L1 cycle.

        A heuristic (it leans on the current D); the classifier-based evaluation is ``fex eval``.
        """
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(1234)
            x = normalize(torch.from_numpy(self.val.images).float().to(self.device))
            lab = torch.from_numpy(self.val.labels).to(self.device)
            trg = (lab + 1 + torch.randint(0, NUM_EMOTIONS - 1, lab.shape, device=self.device)) % NUM_EMOTIONS
            G = self.sampler
            fake = G(x, domain_label(trg.cpu(), 0, self.n_domains).to(self.device))
            rec = G(fake, domain_label(lab.cpu(), 0, self.n_domains).to(self.device))
            _, cls = self.D(fake)
            ce = F.cross_entropy(cls[:, :NUM_EMOTIONS], trg).item()
            return self.loss_cfg.lambda_cls * ce + self.loss_cfg.lambda_rec * (x - rec).abs().mean().item()

    @torch.no_grad()
    def sample_grid(self, path: Path, n: int = 8) -> None:
        """Input column + one column per emotion (per domain when there are several), fixed noise."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            x = normalize(torch.from_numpy(self.val.images[:n]).float().to(self.device))
            cols = [x.cpu().numpy()]
            for d in range(self.n_domains):
                for k in range(NUM_EMOTIONS):
                    c = domain_label(torch.full((x.size(0),), k), d, self.n_domains).to(self.device)
                    cols.append(self.sampler(x, c).float().cpu().numpy())
        save_grid(cols, path)

    def _out_of_time(self, deadline: float) -> bool:
        """Whether the time limit has passed, agreed by all ranks (rank 0's clock decides)."""
        if deadline == math.inf:
            return False
        flag = torch.tensor(float(time.monotonic() > deadline), device=self.device)
        if self.world > 1:
            dist.broadcast(flag, 0)
        return bool(flag.item())

    def fit(self, stop_at: Optional[int] = None) -> Path:
        """Train to ``total_steps`` (or stop early at ``stop_at``, as a kill would); returns the output folder."""
        cfg = self.cfg
        end = min(self.total_steps, stop_at) if stop_at is not None else self.total_steps
        if self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            log = ScalarLog(self.out, resume_step=self.step)
        bar = tqdm(total=self.total_steps, initial=self.step, disable=not (cfg.progress and self.is_main),
                   desc=f"train {self.preset.name}", unit="it", dynamic_ncols=True)
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        t0, n_img, g0 = time.perf_counter(), 0, self.g_updates
        self._t_start = time.monotonic()
        deadline = self._t_start + 60 * cfg.time_limit_min if cfg.time_limit_min else math.inf
        while self.step < end:
            logs = self.train_step()
            n_img += cfg.batch_size * self.world
            for k, v in logs.items():
                sums[k] = sums.get(k, 0.0) + v
                counts[k] = counts.get(k, 0) + 1
            bar.update(1)
            last = self.step == end or (self.step % cfg.log_every == 0 and self._out_of_time(deadline))
            if self.is_main and (self.step % cfg.log_every == 0 or last):
                means = {k: sums[k] / counts[k] if counts.get(k) else math.nan for k in LOG_KEYS}
                means["epoch"] = self.epoch
                dt = time.perf_counter() - t0
                means["images_per_s"] = n_img / dt
                means["g_updates_per_s"] = (self.g_updates - g0) / dt
                means["perceptual_on"] = float(self.perceptual_active())
                log.write(self.step, means)
                bar.set_postfix({k.split("/")[-1]: f"{v:.3f}" for k, v in means.items()
                                 if k in ("D/loss_cls", "G/loss_cls", "G/loss_rec", "images_per_s")})
                sums, counts = {}, {}
                t0, n_img, g0 = time.perf_counter(), 0, self.g_updates
            if self.is_main and (self.step % cfg.sample_every == 0 or last):
                self.sample_grid(self.out / "samples" / f"step{self.step:07d}.png")
            if self.step % cfg.ckpt_every == 0 or last:
                if self.is_main:
                    score = self.validate()
                    if score < self.best:
                        self.best = score
                        self.save("best.pt")
                    self.save("last.pt")
            if last:
                break
        bar.close()
        if self.is_main and self.step < self.total_steps and stop_at is None:
            print(f"time limit reached at step {self.step}/{self.total_steps}; continue with --resume", flush=True)
        if self.is_main:
            log.close()
            plot_losses(self.out / "scalars.csv", self.out / "losses.png")
        if self.world > 1:
            dist.barrier()
        return self.out


def train(cfg: TrainConfig) -> Path:
    return Trainer(cfg).fit()
