"""Fit FER2013 into a leased GPU machine's 64 MiB transfer, and unpack it there.

The shared ``fer2013.npz`` is 70.7 MB: too large to travel beside the repository.
``pack`` stores the Training split as JPEG mosaics (quality 90, 100x100 faces per
mosaic: about 26 MB, mean error ~2 grey levels) and PublicTest losslessly, so that
evaluation on the device scores the exact test images. ``unpack`` writes an ordinary
``.npz`` (images, labels, usage) that ``fex train`` and ``fex eval`` read.

``warmstart`` slims a training checkpoint for ``--init-from`` on the device: the EMA generator
(which is what was evaluated, and becomes both G and EMA G) and D stay; the live G and the
optimizer states (three quarters of the file) go, since ``--init-from`` starts fresh optimizers.

    python experiments/gpu_data.py pack ../shared/data/fer2013.npz .gpudata/fer2013_packed.npz
    python experiments/gpu_data.py unpack .gpudata/fer2013_packed.npz fer2013.npz
    python experiments/gpu_data.py warmstart runs/NAME/last.pt .gpudata/warmstart.pt
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

#: Faces per mosaic side: a mosaic is TILE x TILE faces.
TILE = 100
JPEG_QUALITY = 90


def _mosaics(images: np.ndarray) -> list[np.ndarray]:
    """Tile (N, 48, 48) faces into JPEG-encoded mosaics of TILE x TILE faces (the last one padded)."""
    n, h, w = images.shape
    per = TILE * TILE
    out = []
    for start in range(0, n, per):
        chunk = images[start : start + per]
        pad = np.zeros((per - len(chunk), h, w), np.uint8)
        full = np.concatenate([chunk, pad]).reshape(TILE, TILE, h, w).transpose(0, 2, 1, 3).reshape(TILE * h, TILE * w)
        ok, buf = cv2.imencode(".jpg", full, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:
            raise RuntimeError("JPEG encoding failed")
        out.append(buf.ravel())
    return out


def _unmosaic(buffers: list[np.ndarray], n: int, size: int) -> np.ndarray:
    faces = []
    for buf in buffers:
        full = cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE)
        faces.append(full.reshape(TILE, size, TILE, size).transpose(0, 2, 1, 3).reshape(-1, size, size))
    return np.concatenate(faces)[:n]


def pack(src: Path, dst: Path) -> None:
    d = np.load(src)
    images, labels, usage = d["images"], d["labels"], d["usage"]
    if images.ndim != 3:
        raise ValueError(f"{src}: expected gray images (N, H, W), got {images.shape}")
    train, test = usage == 0, usage == 1
    arrays = {f"train_mosaic_{i}": m for i, m in enumerate(_mosaics(images[train]))}
    arrays.update(train_labels=labels[train], train_count=np.array(train.sum()), size=np.array(images.shape[1]),
                  test_images=images[test], test_labels=labels[test])
    dst.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(dst, **arrays)
    print(f"wrote {dst} ({dst.stat().st_size / 1e6:.1f} MB): {train.sum()} Training faces as JPEG q{JPEG_QUALITY} "
          f"mosaics, {test.sum()} PublicTest faces lossless")


def unpack(src: Path, dst: Path) -> None:
    d = np.load(src)
    keys = sorted((k for k in d.files if k.startswith("train_mosaic_")), key=lambda k: int(k.rsplit("_", 1)[1]))
    train = _unmosaic([d[k] for k in keys], int(d["train_count"]), int(d["size"]))
    test = d["test_images"]
    images = np.concatenate([train, test])
    labels = np.concatenate([d["train_labels"], d["test_labels"]])
    usage = np.concatenate([np.zeros(len(train), np.uint8), np.ones(len(test), np.uint8)])
    dst.parent.mkdir(parents=True, exist_ok=True)
    np.savez(dst, images=images, labels=labels, usage=usage)
    print(f"wrote {dst}: {len(train)} Training + {len(test)} PublicTest faces")


def warmstart(src: Path, dst: Path) -> None:
    """Keep what ``--init-from`` reads (configs, EMA G as G, D); drop live G, the optimizers and the RNG state."""
    import _checkout

    _checkout.ensure()  # fexsdk.training from an install, or from this checkout
    from fexsdk.training.checkpoint import load_checkpoint, save_checkpoint

    ckpt = load_checkpoint(src)
    missing = [k for k in ("G", "D", "generator_config", "discriminator_config") if k not in ckpt]
    if missing or ckpt.get("slim"):
        raise ValueError(f"{src}: not a full training checkpoint (missing {missing or 'D: it is slim'}); "
                         "warm starts need OUT/last.pt of a `fex train` run")
    keep = {k: v for k, v in ckpt.items() if k not in ("G_ema", "opt_g", "opt_d", "torch_rng", "checkpoint_version")}
    save_checkpoint(dst, {**keep, "G": ckpt.get("G_ema") or ckpt["G"]})
    print(f"wrote {dst} ({dst.stat().st_size / 1e6:.1f} MB): {src}'s EMA G and D for --init-from")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("action", choices=["pack", "unpack", "warmstart"])
    p.add_argument("src", type=Path)
    p.add_argument("dst", type=Path)
    a = p.parse_args(argv)
    {"pack": pack, "unpack": unpack, "warmstart": warmstart}[a.action](a.src, a.dst)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
