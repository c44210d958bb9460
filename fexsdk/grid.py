"""The one "input + 7 emotions" grid: training samples, the bundled model's sample grid and ``fex grid``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import cv2
import numpy as np

from fexsdk.emotions import EMOTIONS

#: Column titles of an "input, then every emotion" grid.
EMOTION_COLUMNS = ("input", *EMOTIONS)
HEADER_PX = 22


def image_grid(columns: Sequence[np.ndarray], labels: Optional[Sequence[str]] = None, scale: int = 1) -> np.ndarray:
    """Cells side by side: ``columns[j]`` holds column j's N cells, uint8 (N, H, W) gray or (N, H, W, 3) BGR.

    Rows are the N cells of every column, top to bottom; ``scale`` enlarges the grid (nearest
    neighbour, so 48x48 pixels stay visible); ``labels`` (one per column) go in a white header row.
    """
    cols = [np.asarray(c) for c in columns]
    if not cols:
        raise ValueError("a grid needs at least one column")
    if labels is not None and len(labels) != len(cols):
        raise ValueError(f"got {len(labels)} labels for {len(cols)} columns")
    colour = any(c.ndim == 4 for c in cols)
    if colour:
        cols = [c if c.ndim == 4 else np.repeat(c[..., None], 3, axis=3) for c in cols]
    shapes = {c.shape for c in cols}
    if len(shapes) != 1 or any(c.dtype != np.uint8 for c in cols):
        raise ValueError(f"grid columns must be uint8 arrays of one shape, got {sorted(map(str, shapes))}")
    grid = np.concatenate([np.concatenate(list(c), axis=0) for c in cols], axis=1)
    if scale != 1:
        grid = cv2.resize(grid, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
    if labels is None:
        return grid
    cell = cols[0].shape[2] * scale
    header = np.full((HEADER_PX, *grid.shape[1:]), 255, np.uint8)
    for j, name in enumerate(labels):
        cv2.putText(header, str(name), (j * cell + 4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([header, grid], axis=0)
