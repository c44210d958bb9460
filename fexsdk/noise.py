"""Test-time dropout noise, drawn by the runtime so that a seed fixes the output.

The generator's ``noise`` input holds the dropout multipliers of every site:
0 for a dropped unit and 1/(1-p) for a kept one. All ones switches dropout off.

One policy everywhere (:func:`noise_for`): with seed ``s``, face ``f`` draws its noise from
``SeedSequence([s, f])``, where ``f`` is the face's index in a :meth:`fexsdk.Transfer.apply` call, its
track id in ``fex demo`` (tracks are numbered from 0 in the order faces are first found), and the
image's index in ``fex eval``. The same seed and face therefore give the same output in all three, in
the export parity check and in int8 calibration.
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


def noise_for(meta: ModelMetadata, seed: Optional[int], faces, dropout: bool = True) -> Optional[np.ndarray]:
    """The noise of faces ``faces`` (indices or track ids) under ``seed``: (len(faces), noise_size) float32.

    Face ``f`` draws from ``SeedSequence([seed, f])``; ``seed=None`` draws fresh noise;
    ``dropout=False`` gives all ones (eval mode). None for a model without dropout.
    """
    faces = [int(f) for f in faces]
    if seed is None or not dropout:
        return draw_noise(meta, len(faces), None, enabled=dropout)
    return draw_noise(meta, len(faces), [np.random.SeedSequence([int(seed), f]) for f in faces])
