"""Scalar logs (CSV, and TensorBoard when installed), loss plots and sample grids."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from fexsdk.metadata import denormalize


class ScalarLog:
    """Appends one row of scalars per call to ``scalars.csv``; mirrors to TensorBoard if available."""

    def __init__(self, out_dir: str | os.PathLike, resume_step: int = 0) -> None:
        self.path = Path(out_dir) / "scalars.csv"
        self.fields: list[str] | None = None
        if self.path.exists():
            # Drop rows written after the checkpoint we resume from, so the log has no duplicates.
            with self.path.open(newline="") as f:
                rows = list(csv.DictReader(f))
            if rows:
                self.fields = list(rows[0].keys())
                rows = [r for r in rows if int(float(r["step"])) <= resume_step]
                with self.path.open("w", newline="") as f:
                    w = csv.DictWriter(f, fieldnames=self.fields)
                    w.writeheader()
                    w.writerows(rows)
        self._tb = None
        try:
            from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package

            self._tb = SummaryWriter(str(Path(out_dir) / "tb"))
        except Exception:
            self._tb = None

    def write(self, step: int, values: dict[str, float]) -> None:
        row = {"step": step, **{k: float(v) for k, v in values.items()}}
        new = self.fields is None
        if new:
            self.fields = list(row.keys())
        with self.path.open("a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.fields, extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow(row)
        if self._tb is not None:
            for k, v in values.items():
                self._tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def plot_losses(csv_path: str | os.PathLike, png_path: str | os.PathLike) -> None:
    """One panel per loss group over epochs, like the report's Fig. 8."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return
    epoch = np.array([float(r["epoch"]) for r in rows])
    groups = {
        "D adversarial": ["D/loss_real", "D/loss_fake", "D/loss_gp"],
        "classification": ["D/loss_cls", "G/loss_cls"],
        "G adversarial": ["G/loss_fake"],
        "reconstruction": ["G/loss_rec", "G/loss_rec_feat"],
    }
    fig, axes = plt.subplots(1, len(groups), figsize=(4 * len(groups), 3.2))
    for ax, (title, keys) in zip(axes, groups.items()):
        for k in keys:
            if k in rows[0]:
                ax.plot(epoch, [float(r[k]) for r in rows], label=k, linewidth=0.8)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    plt.close(fig)


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Model space [-1, 1] (N, C, H, W) -> uint8 (N, H, W, C)."""
    x = np.clip(denormalize(np.asarray(images, np.float32)) + 0.5, 0, 255).astype(np.uint8)
    return x.transpose(0, 2, 3, 1)


def save_grid(columns: list[np.ndarray], path: str | os.PathLike, scale: int = 2) -> None:
    """Save a grid (fexsdk.grid.image_grid): each entry of ``columns`` is one column of images (N, C, H, W)
    in the model's space. Used for sample grids: column 0 the inputs, then one column per target emotion.
    """
    import cv2

    from fexsdk.grid import image_grid

    cols = [to_uint8(c) for c in columns]
    if cols[0].shape[-1] == 3:
        cols = [c[..., ::-1] for c in cols]  # RGB -> BGR for OpenCV
    else:
        cols = [c[..., 0] for c in cols]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), image_grid(cols, scale=scale))
