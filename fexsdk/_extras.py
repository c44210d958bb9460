"""Imports of optional dependencies, failing with the extra that provides them."""

from __future__ import annotations

import importlib
from types import ModuleType


def require(module: str, extra: str, what: str) -> ModuleType:
    """Import ``module`` or raise ImportError naming ``pip install 'fexsdk[extra]'``."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"{what} needs the '{module}' package, which is not installed: pip install 'fexsdk[{extra}]' ({exc})"
        ) from None
