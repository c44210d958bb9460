"""What the packages above the runtime add to it: model formats and ``fex`` subcommands.

The runtime (``fexsdk``) imports nothing from ``fexsdk.training`` or ``fexsdk.export``. They plug in
through two entry-point groups that pyproject.toml declares:

- ``fexsdk.backends``: a callable that calls :func:`fexsdk.formats.register_format` (training
  registers its checkpoints, run by PyTorch; :mod:`fexsdk.formats` loads these);
- ``fexsdk.commands``: a callable ``add_commands(subparsers, helpers)`` that adds ``fex`` subcommands
  (train, train-classifier, eval from training; export from export).

They are read from the installed distributions' metadata only (``pip install .`` or ``pip install -e .``
writes it); nothing is read from the source tree at run time.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

BACKENDS_GROUP = "fexsdk.backends"
COMMANDS_GROUP = "fexsdk.commands"


def entry_points(group: str) -> dict[str, str]:
    """name -> "module:attr" for one group, from the installed distributions' metadata (ordered by name)."""
    from importlib import metadata

    found: dict[str, str] = {}
    for ep in metadata.entry_points(group=group):
        found.setdefault(ep.name, ep.value)
    return found


def load(group: str) -> list[Callable[..., Any]]:
    """The objects a group's entry points name, in declaration order."""
    out = []
    for value in entry_points(group).values():
        module, _, attr = value.partition(":")
        obj = importlib.import_module(module.strip())
        for part in attr.strip().split(".") if attr else []:
            obj = getattr(obj, part)
        out.append(obj)
    return out
