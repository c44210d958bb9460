"""Training checkpoints as runtime models: the ``.pt`` backend, registered with the runtime.

The runtime never imports this module; :mod:`fexsdk.formats` loads :func:`register` through the
``fexsdk.backends`` entry point (pyproject.toml) the first time a model file has a suffix the
runtime does not know, or the whole table of formats is asked for. Needs the [train] extra (PyTorch) only when a checkpoint is opened.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from fexsdk._extras import require
from fexsdk.backends import Backend
from fexsdk.formats import register_format

TORCH_SUFFIXES = (".pt", ".pth", ".ckpt")


class TorchBackend(Backend):
    """A training checkpoint run by PyTorch (for checking a model before exporting it)."""

    def __init__(self, path: str | os.PathLike, device: str = "auto", threads: Optional[int] = None) -> None:
        torch = require("torch", "train", "running a training checkpoint")
        if threads:
            torch.set_num_threads(threads)  # process-wide in PyTorch
        from fexsdk.training.checkpoint import generator_from_checkpoint, load_checkpoint, metadata_from_checkpoint

        ckpt = load_checkpoint(path)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.torch = torch
        self.device = torch.device(device)
        self.G = generator_from_checkpoint(ckpt).eval().to(self.device)
        self.meta = metadata_from_checkpoint(ckpt)
        self.name = f"torch/{self.device}"

    def _args(self, image, label, noise):
        return [self.torch.from_numpy(a).to(self.device) for a in self.meta.feeds(image, label, noise).values()]

    def run(self, image, label, noise):
        with self.torch.no_grad():
            return self.G(*self._args(image, label, noise)).float().cpu().numpy()

    def run_outputs(self, image, label, noise):
        if not self.meta.is_warp:
            return {"output": self.run(image, label, noise)}
        with self.torch.no_grad():
            p = self.G.forward_parts(*self._args(image, label, noise))
        parts = {"output": p.image, "flow": p.flow, "residual": p.residual, "mask": p.mask}
        return {name: parts[name].float().cpu().numpy() for name in self.meta.outputs}


def read_checkpoint_metadata(path: str | os.PathLike):
    require("torch", "train", "reading a training checkpoint")
    from fexsdk.training.checkpoint import load_checkpoint, metadata_from_checkpoint

    return metadata_from_checkpoint(load_checkpoint(Path(path)))


def register() -> None:
    """Entry point ``fexsdk.backends:torch``: ``.pt``/``.pth``/``.ckpt`` open as PyTorch checkpoints."""
    register_format(TORCH_SUFFIXES, TorchBackend, read_checkpoint_metadata, "PyTorch training checkpoint, needs fexsdk[train]")
