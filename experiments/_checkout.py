"""fexsdk for the experiment scripts, from an install or, failing that, from this bare checkout.

The installed package maps the repository's ``training/`` and ``export/`` folders to ``fexsdk.training``
and ``fexsdk.export`` and lists the plugin entry points (``fex train``, the ``.pt`` backend). Where nothing
is installed (a leased GPU machine with only PyTorch), :func:`ensure` builds the same layout as a
throwaway tree of links (``fexsdk/*`` from the checkout, ``fexsdk/training`` and ``fexsdk/export``
beside them, and a ``.dist-info`` with the entry points of pyproject.toml), puts it first on
``sys.path`` and on ``PYTHONPATH`` (for the ``python -m fexsdk.cli`` subprocesses), and changes nothing
in the checkout. The package itself never does this: it has no import hook.
"""

from __future__ import annotations

import importlib
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _installed() -> bool:
    try:
        import fexsdk.export  # noqa: F401
        import fexsdk.training  # noqa: F401
    except ImportError:
        return False
    from importlib import metadata

    return any(True for _ in metadata.entry_points(group="fexsdk.commands"))


def _entry_points_txt() -> str:
    import tomllib  # Python 3.11+; on 3.10: pip install --no-deps -e . instead

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    groups = {"console_scripts": project.get("scripts", {}), **project.get("entry-points", {})}
    return "".join(f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items()) + "\n"
                   for group, eps in groups.items())


def build_tree(root: Path) -> Path:
    """The installed layout as links under ``root``; returns ``root``."""
    pkg = root / "fexsdk"
    pkg.mkdir(parents=True)
    for child in (REPO / "fexsdk").iterdir():
        if child.name != "__pycache__":
            (pkg / child.name).symlink_to(child)
    for layer in ("training", "export"):
        (pkg / layer).symlink_to(REPO / layer)
    version = {}
    exec((REPO / "fexsdk" / "_version.py").read_text(), version)
    info = root / f"fexsdk-{version['__version__']}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: fexsdk\nVersion: {version['__version__']}\n")
    (info / "entry_points.txt").write_text(_entry_points_txt())
    return root


def ensure() -> None:
    """Make ``import fexsdk.training`` and the ``fex`` plugins work in this process and its children."""
    if _installed():
        return
    root = build_tree(Path(tempfile.mkdtemp(prefix="fexsdk-checkout-")))
    for name in [m for m in sys.modules if m == "fexsdk" or m.startswith("fexsdk.")]:
        del sys.modules[name]  # a fexsdk found through PYTHONPATH=checkout, without its layers
    sys.path.insert(0, str(root))
    os.environ["PYTHONPATH"] = os.pathsep.join([str(root), *filter(None, [os.environ.get("PYTHONPATH")])])
    importlib.invalidate_caches()
    if not _installed():
        raise ImportError(f"could not make fexsdk importable from {REPO} (tree of links in {root})")
