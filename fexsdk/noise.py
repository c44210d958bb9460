"""Test-time dropout noise, drawn by the runtime so that a seed fixes the output.

The generator's ``noise`` input holds the dropout multipliers of every site:
0 for a dropped unit and 1/(1-p) for a kept one. All ones switches dropout off.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional, Union

import numpy as np

from fexsdk.metadata import ModelMetadata

Seed = Union[int, np.random.SeedSequence, None]


def draw_noise(meta: ModelMetadata, count: int, seed: Seed | Sequence[Seed] = None, enabled: bool = True) -> Optional[np.ndarray]:
    """Noise for ``count`` faces, (count, noise_size) float32; None for a model without dropout.

    ``seed`` is one seed for the whole batch, or one per face (so a tracked face
    keeps its own noise in video); None draws fresh noise. ``enabled=False``
    gives all ones: the deterministic, eval-mode model.
    """
    size = meta.noise_size
    if size == 0:
        return None
    if not enabled:
        return np.ones((count, size), np.float32)
    keep = np.float32(1.0 / (1.0 - meta.dropout_p))
    if isinstance(seed, (list, tuple)):
        if len(seed) != count:
            raise ValueError(f"got {len(seed)} seeds for {count} faces; give one seed or one per face")
        rows = [np.random.default_rng(s).random(size, dtype=np.float32) for s in seed]
        u = np.stack(rows) if rows else np.zeros((0, size), np.float32)
    else:
        u = np.random.default_rng(seed).random((count, size), dtype=np.float32)
    return np.where(u >= meta.dropout_p, keep, np.float32(0.0)).astype(np.float32)
