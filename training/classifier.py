"""The expression classifier that scores generated images (the report's Table 2 ruler).

A ResNet18 (BasicBlocks 2-2-2-2, widths 64-512) adapted to 48x48 gray faces: a
3x3 stride-2 stem without max-pool, so the last stage still sees 3x3 features
(the ImageNet stem would shrink 48 px to 2x2). torchvision's resnet18 cannot be
installed beside the CPU build of torch on our machines, so the few lines of
the architecture live here.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from fexsdk.emotions import EMOTIONS, NUM_EMOTIONS
from fexsdk.metadata import normalize
from fexsdk.training.checkpoint import save_checkpoint
from fexsdk.training.data import load_dataset
from fexsdk.training.logs import ScalarLog


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn1(self.conv1(x)))
        h = self.bn2(self.conv2(h))
        return F.relu(h + (x if self.down is None else self.down(x)))


@dataclass
class ClassifierConfig:
    in_channels: int = 1
    image_size: int = 48
    num_classes: int = NUM_EMOTIONS
    width: int = 64
    dropout: float = 0.2


class ResNet18(nn.Module):
    """ResNet18 for small faces; ``features(x)`` gives the 512-d penultimate vector (for Frechet distances)."""

    def __init__(self, **config) -> None:
        super().__init__()
        cfg = ClassifierConfig(**config)
        self.config = cfg
        w = cfg.width
        self.stem = nn.Sequential(nn.Conv2d(cfg.in_channels, w, 3, 2, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU())
        stages, cin = [], w
        for i, cout in enumerate([w, 2 * w, 4 * w, 8 * w]):
            stride = 1 if i == 0 else 2
            stages += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
            cin = cout
        self.stages = nn.Sequential(*stages)
        self.drop = nn.Dropout(cfg.dropout)
        self.fc = nn.Linear(cin, cfg.num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x)).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(self.features(x)))


@dataclass
class ClassifierTrainConfig:
    data: str = ""
    out: str = "runs/classifier"
    epochs: int = 30
    batch_size: int = 64
    lr: float = 0.1
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    seed: int = 0
    #: Channels of the first stage (64 is ResNet18's; 32 trains about 3x faster, e.g. for a teacher).
    width: int = 64
    #: "auto" (bf16 only on CPUs with bf16 instructions: it is ~7x slower than fp32 on AVX2), "fp32" or "bf16".
    precision: str = "auto"
    threads: Optional[int] = None
    resume: bool = False
    progress: bool = True


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random flip, shift (pad 4 + crop), brightness/contrast jitter and one erased patch: FER2013 overfits fast."""
    n, _, s, _ = x.shape
    flip = torch.rand(n, generator=gen) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    pad = F.pad(x, (4, 4, 4, 4), mode="replicate")
    dx, dy = torch.randint(0, 9, (2, n), generator=gen)
    idx = torch.arange(s)
    rows = (dy[:, None] + idx)[:, None, :, None].expand(n, 1, s, s + 8)
    x = pad.gather(2, rows)
    cols = (dx[:, None] + idx)[:, None, None, :].expand(n, 1, s, s)
    x = x.gather(3, cols)
    gain = 1 + 0.4 * (torch.rand(n, 1, 1, 1, generator=gen) - 0.5)
    bias = 0.2 * (torch.rand(n, 1, 1, 1, generator=gen) - 0.5)
    x = (x * gain + bias).clamp(-1, 1)
    cy, cx = torch.randint(0, s, (2, n), generator=gen)
    size = s // 4
    yy, xx = idx[None, :, None], idx[None, None, :]
    box = ((yy - cy[:, None, None]).abs() < size // 2) & ((xx - cx[:, None, None]).abs() < size // 2)
    erase = (torch.rand(n, generator=gen) < 0.5)[:, None, None]
    return x.masked_fill((box & erase)[:, None], 0.0)


def to_input(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, C, H, W) -> float in [-1, 1], the same normalisation as the generator's."""
    return normalize(torch.from_numpy(np.ascontiguousarray(images)).float())


@torch.no_grad()
def predict(model: ResNet18, images: torch.Tensor, batch: int = 256, features: bool = False) -> np.ndarray:
    """Logits (or penultimate features) for images already in [-1, 1], evaluated in eval mode."""
    model.eval()
    dev = next(model.parameters()).device
    outs = []
    for i in range(0, len(images), batch):
        x = images[i : i + batch].to(dev)
        outs.append((model.features(x) if features else model(x)).float().cpu())
    return torch.cat(outs).numpy() if outs else np.zeros((0, NUM_EMOTIONS), np.float32)


@torch.no_grad()
def predict_with_features(model: ResNet18, images: torch.Tensor, batch: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Logits and penultimate features in one pass (the evaluation needs both)."""
    model.eval()
    dev = next(model.parameters()).device
    logits, feats = [], []
    for i in range(0, len(images), batch):
        f = model.features(images[i : i + batch].to(dev))
        feats.append(f.float().cpu())
        logits.append(model.fc(model.drop(f)).float().cpu())
    if not feats:
        return np.zeros((0, NUM_EMOTIONS), np.float32), np.zeros((0, model.fc.in_features), np.float32)
    return torch.cat(logits).numpy(), torch.cat(feats).numpy()


def confusion(labels: np.ndarray, preds: np.ndarray, k: int = NUM_EMOTIONS) -> np.ndarray:
    """Rows: true class; columns: predicted class."""
    m = np.zeros((k, k), np.int64)
    np.add.at(m, (labels, preds), 1)
    return m


def train_classifier(cfg: ClassifierTrainConfig) -> Path:
    """Train on the Training split, evaluate on PublicTest each epoch; exact resume from last.pt."""
    from fexsdk.training.trainer import resolve_precision

    if cfg.precision not in ("auto", "fp32", "bf16"):
        raise ValueError(f"precision must be 'auto', 'fp32' or 'bf16', got {cfg.precision!r}")
    precision = resolve_precision(cfg.precision, torch.device("cpu"))  # warns for bf16 on a CPU without it
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    train = load_dataset(cfg.data, "train")
    test = load_dataset(cfg.data, "public")
    x_train, y_train = to_input(train.images), torch.from_numpy(train.labels)
    x_test = to_input(test.images)
    torch.manual_seed(cfg.seed)
    model = ResNet18(width=cfg.width)
    steps_per_epoch = len(train) // cfg.batch_size
    total = steps_per_epoch * cfg.epochs
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay)
    start_epoch, best = 0, 0.0
    gen = torch.Generator().manual_seed(cfg.seed)
    if cfg.resume and (out / "last.pt").exists():
        ckpt = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["opt"])
        start_epoch, best = int(ckpt["epoch"]), float(ckpt["best"])
        gen.set_state(ckpt["gen_state"])
        torch.set_rng_state(ckpt["torch_rng"])
    log = ScalarLog(out, resume_step=start_epoch * steps_per_epoch)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")
    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        perm = torch.from_numpy(np.random.default_rng([cfg.seed, epoch]).permutation(len(train)))
        bar = tqdm(range(steps_per_epoch), desc=f"classifier epoch {epoch + 1}/{cfg.epochs}", disable=not cfg.progress,
                   dynamic_ncols=True)
        loss_sum, correct, seen, t0 = 0.0, 0, 0, time.perf_counter()
        for i in bar:
            step = epoch * steps_per_epoch + i
            lr = cfg.lr * 0.5 * (1 + math.cos(math.pi * step / total))  # cosine to 0
            for g in opt.param_groups:
                g["lr"] = lr
            idx = perm[i * cfg.batch_size : (i + 1) * cfg.batch_size]
            x, y = augment(x_train[idx], gen), y_train[idx]
            with autocast:
                logits = model(x)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.item() * len(y)
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
            if i % 50 == 0:
                bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}")
        with autocast:
            preds = predict(model, x_test).argmax(1)
        acc = float((preds == test.labels).mean())
        log.write((epoch + 1) * steps_per_epoch, {"epoch": epoch + 1, "lr": lr, "train/loss": loss_sum / seen,
                                                  "train/acc": correct / seen, "public/acc": acc,
                                                  "images_per_s": seen / (time.perf_counter() - t0)})
        print(f"epoch {epoch + 1}: train acc {correct / seen:.4f}, PublicTest acc {acc:.4f}", flush=True)
        payload = {"classifier_config": asdict(model.config), "model": model.state_dict(),
                   "opt": opt.state_dict(), "epoch": epoch + 1, "best": max(best, acc), "gen_state": gen.get_state(),
                   "torch_rng": torch.get_rng_state(), "train_config": asdict(cfg), "emotions": list(EMOTIONS)}
        if acc > best:
            best = acc
            save_checkpoint(out / "best.pt", payload)
        save_checkpoint(out / "last.pt", payload)
    log.close()
    return out


_CHECKPOINT_HINT = ("fex export classifier takes the checkpoint `fex train-classifier` writes "
                    "(OUT/best.pt or OUT/last.pt)")


def read_classifier_checkpoint(path: str | Path, hint: str = _CHECKPOINT_HINT) -> dict:
    """A `fex train-classifier` checkpoint as a dict. Anything else is a ValueError that says what the
    file is not, rather than torch's advice to unpickle an untrusted file."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a folder; {hint}")
    if not path.is_file():
        raise FileNotFoundError(f"classifier checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and format errors: none of them is a classifier
        raise ValueError(f"{path} is not a readable classifier ({type(exc).__name__}); {hint}") from None
    if not isinstance(ckpt, dict) or "classifier_config" not in ckpt or "model" not in ckpt:
        raise ValueError(f"{path} is not an fexsdk classifier checkpoint; {hint}")
    return ckpt


def export_classifier(checkpoint: str | Path, output: str | Path, card: dict) -> Path:
    """Save the classifier as fp16 safetensors (no pickle) with its config, and a JSON card beside it."""
    from safetensors.torch import save_file

    ckpt = read_classifier_checkpoint(checkpoint)
    tensors = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in ckpt["model"].items()}
    meta = {"classifier_config": json.dumps(ckpt["classifier_config"]), "emotions": json.dumps(list(EMOTIONS))}
    output = Path(output)
    save_file(tensors, str(output), metadata=meta)
    output.with_suffix(".json").write_text(json.dumps(card, indent=2) + "\n")
    return output


def export_classifier_with_card(checkpoint: str | Path, output: str | Path, data: str | Path | None = None) -> tuple[Path, dict]:
    """``fex export classifier``: fp16 safetensors and its card; with ``data``, the card records the
    PublicTest accuracy, per class accuracy and confusion of the exported (fp16) classifier."""
    from fexsdk.training.data import load_dataset
    from fexsdk.training.evaluate import evaluate
    from fexsdk.training.trainer import git_commit

    ckpt = read_classifier_checkpoint(checkpoint)
    card = {"architecture": "ResNet18, 3x3 stride-2 stem, no max-pool, 48x48 gray", "epoch": ckpt.get("epoch"),
            "train_config": ckpt.get("train_config"), "commit": git_commit(), "source_checkpoint": str(checkpoint)}
    path = export_classifier(checkpoint, output, card)
    if data:
        result = evaluate(load_dataset(data, "public"), load_classifier(path), None, progress=False)
        card.update(data=str(data), split="PublicTest", accuracy=result.accuracy_real,
                    per_class_accuracy=result.per_class_real, confusion=result.confusion_real)
        path.with_suffix(".json").write_text(json.dumps(card, indent=2) + "\n")
    return path, card


def load_classifier(path: str | Path) -> ResNet18:
    """Load a classifier from fp16 safetensors (as exported) or a training checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"classifier not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors import safe_open
        from safetensors.torch import load_file

        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        if "classifier_config" not in meta:
            raise ValueError(f"{path} is not an fexsdk classifier (no classifier_config metadata)")
        if json.loads(meta.get("emotions", "[]")) != list(EMOTIONS):
            raise ValueError(f"{path}: its emotion list differs from fexsdk's {list(EMOTIONS)}")
        model = ResNet18(**json.loads(meta["classifier_config"]))
        state = {k: v.float() if v.is_floating_point() else v for k, v in load_file(str(path)).items()}
    else:
        what = ("--classifier takes the exported classifier (.safetensors, e.g. "
                "training/weights/resnet18_fer2013.safetensors) or a `fex train-classifier` checkpoint (.pt)")
        if path.suffix.lower() == ".onnx":
            raise ValueError(f"{path} is an ONNX model (a generator goes to --generator); {what}")
        ckpt = read_classifier_checkpoint(path, what)
        model, state = ResNet18(**ckpt["classifier_config"]), ckpt["model"]
    model.load_state_dict(state)
    return model.eval()
