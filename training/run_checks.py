"""Checks of a training run's settings that the trainer does before any work, kept apart from the loop.

The output folder: a run never writes into a folder that holds another run's files unless it
continues that run (``resume``) or was told to replace it (``overwrite``): checkpoints, the scalar
log and the sample grids of the earlier run would otherwise be overwritten without a word.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any


def _number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def check_run_config(cfg: Any) -> None:
    """Raise ValueError (naming the ``fex train`` option) for settings that would train nothing or lose files."""
    if not _number(cfg.epochs) or cfg.epochs <= 0:
        raise ValueError(f"epochs (--epochs) must be a number > 0, got {cfg.epochs!r}")
    if cfg.max_steps is not None and (isinstance(cfg.max_steps, bool) or not isinstance(cfg.max_steps, int)
                                      or cfg.max_steps < 1):
        raise ValueError(f"max_steps (--max-steps) must be an integer >= 1 (or None), got {cfg.max_steps!r}")
    if isinstance(cfg.seed, bool) or not isinstance(cfg.seed, int) or cfg.seed < 0:
        raise ValueError(f"seed (--seed) must be an integer >= 0, got {cfg.seed!r}")
    for name in ("log_every", "sample_every", "ckpt_every"):
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} (--{name.replace('_', '-')}) must be an integer >= 1, got {value!r}")
    for name in ("lr_g", "lr_d"):
        value = getattr(cfg, name)
        if not _number(value) or value <= 0:
            raise ValueError(f"{name} (--{name.replace('_', '-')}) must be a number > 0, got {value!r}")
    check_out_folder(cfg.out, resume=cfg.resume, overwrite=getattr(cfg, "overwrite", False))


def check_out_folder(out: Any, resume: bool = False, overwrite: bool = False) -> None:
    """The output folder may be new or empty; one holding files needs ``resume`` or ``overwrite``."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise ValueError(f"--out {path} is a file; give a folder (it is created if missing)")
    if resume and overwrite:
        raise ValueError("give --resume (continue the run in --out) or --overwrite (replace it), not both")
    if resume or overwrite or not path.is_dir():
        return
    entries = sorted(p.name for p in path.iterdir())
    if entries:
        shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
        raise ValueError(f"--out {path} already holds files ({shown}): pass --resume to continue that run, "
                         "--overwrite to replace it, or another --out")
