"""The one check of an export's output path, shared by every ``fex export`` kind and the Python API.

An export must never replace its own source (a training checkpoint or the FP32 model it was made
from), and must only write a file that fex can load afterwards: a ``.txt`` or ``.pt`` name for an
ONNX file would be refused by the runtime, whatever the ``use it:`` line says.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence


def check_output_file(output: str | os.PathLike, sources: Sequence[str | os.PathLike], suffixes: Sequence[str],
                      what: str, option: str = "-o") -> Path:
    """Return ``output`` as a Path, or raise ValueError when it is a folder, has a suffix other than
    ``suffixes`` (the ones fex loads as ``what``) or is one of ``sources``."""
    path = Path(output)
    if path.is_dir():
        raise ValueError(f"{option} {path} is a folder; give the {what} file to write, e.g. {path / ('model' + suffixes[0])}")
    if path.suffix.lower() not in suffixes:
        allowed = " or ".join(suffixes)
        raise ValueError(f"{option} {path}: fex loads {what} files only as {allowed}; name the output "
                         f"{path.with_suffix(suffixes[0]).name}")
    for src in sources:
        if path.exists() and Path(src).exists() and os.path.samefile(path, src):
            raise ValueError(f"{option} {path} is the source file {src}: writing it would replace the file being "
                             "exported; choose another output name")
    return path
