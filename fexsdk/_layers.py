"""``fexsdk.training`` and ``fexsdk.export`` in a source checkout that is not installed.

The repository keeps ``training/`` and ``export/`` beside ``fexsdk/``; the wheel installs them as
``fexsdk.training`` and ``fexsdk.export`` (pyproject.toml's ``package-dir``), and so does an editable
install. A checkout used through ``PYTHONPATH`` alone (a bare GPU machine running
``training/gpu_run.sh``) gets the same names from this finder, which maps exactly those two
packages to the folders beside ``fexsdk/``. It is installed only where those folders exist and no
installed copy answers first, and it imports nothing from them until they are asked for.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

#: Import name -> folder name beside fexsdk/.
LAYERS = {"fexsdk.training": "training", "fexsdk.export": "export"}


class SourceLayerFinder:
    """A meta-path finder for the upper layers of a source checkout (after every other finder)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def find_spec(self, fullname, path=None, target=None):
        folder = LAYERS.get(fullname)
        if folder is None:
            return None
        init = self.root / folder / "__init__.py"
        if not init.is_file():
            return None
        return importlib.util.spec_from_file_location(fullname, init, submodule_search_locations=[str(init.parent)])


def install(package_dir: Path) -> None:
    """Append the finder when ``package_dir`` (fexsdk/) sits in a checkout with training/ and export/."""
    root = package_dir.parent
    if (package_dir / "training").exists() or not (root / "training" / "__init__.py").is_file():
        return  # an installed wheel (fexsdk/training inside) or no checkout around
    if not any(isinstance(f, SourceLayerFinder) for f in sys.meta_path):
        sys.meta_path.append(SourceLayerFinder(root))
