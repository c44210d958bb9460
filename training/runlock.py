"""One ``fex train`` per run folder at a time.

Two runs started into the same ``--out`` both pass the "empty folder" check if they start close
together, then interleave ``scalars.csv`` and overwrite each other's checkpoints, so that
``--resume`` fails later. The run holds an exclusive ``flock`` on the folder itself for its whole life:
the second run is refused at once, and the lock goes away with the process however it ends (no
stale lock file to clean up, and nothing in the folder for the empty-folder check to trip on).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class RunFolderBusy(ValueError):
    """Another process holds the run folder's lock."""


@contextmanager
def run_lock(out: str | os.PathLike) -> Iterator[Path]:
    """Create ``out`` if needed and hold an exclusive lock on it until the block ends.

    Raises :class:`RunFolderBusy` (a ValueError) when another process holds it. Only rank 0 of a
    distributed run locks (every rank gets the same ``--out``); where ``fcntl`` does not exist
    (Windows) nothing is locked.
    """
    path = Path(out)
    try:
        import fcntl
    except ImportError:
        fcntl = None
    if fcntl is None or int(os.environ.get("RANK", "0")) != 0:
        yield path
        return
    path.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunFolderBusy(f"--out {path} is in use: another fex train is writing to it right now; wait for "
                                "it to finish (then --resume continues it), or give another --out") from None
        yield path
    finally:
        os.close(fd)  # closing the descriptor releases the lock
