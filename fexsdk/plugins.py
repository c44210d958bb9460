"""What the packages above the runtime add to it: model formats and ``fex`` subcommands.

The runtime (``fexsdk``) imports nothing from ``fexsdk.training`` or ``fexsdk.export``. They plug in
through two entry-point groups that pyproject.toml declares:

- ``fexsdk.backends``: a callable that calls :func:`fexsdk.formats.register_format` (training
  registers its checkpoints, run by PyTorch; :mod:`fexsdk.formats` loads these);
- ``fexsdk.commands``: a callable ``add_commands(subparsers, helpers)`` that adds ``fex`` subcommands
  (train, train-classifier, eval from training; export from export).

An installed fexsdk reads them from its distribution's metadata; a source checkout used without
installing (see :mod:`fexsdk._layers`) reads the same table from its pyproject.toml.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Callable

BACKENDS_GROUP = "fexsdk.backends"
COMMANDS_GROUP = "fexsdk.commands"


# -- entry points ----------------------------------------------------------------
def _checkout_table() -> dict[str, dict[str, str]]:
    """[project.entry-points] of the pyproject.toml beside fexsdk/, when this is fexsdk's source checkout."""
    path = Path(__file__).resolve().parent.parent / "pyproject.toml"
    if not path.is_file():
        return {}
    try:
        import tomllib
    except ImportError:  # Python 3.10
        return {}
    try:
        project = tomllib.loads(path.read_text()).get("project", {})
    except (tomllib.TOMLDecodeError, OSError):
        return {}
    return project.get("entry-points", {}) if project.get("name") == "fexsdk" else {}


def entry_points(group: str) -> dict[str, str]:
    """name -> "module:attr" for one group: the checkout's pyproject.toml (in its order) first, then
    what installed metadata adds (ordered by name, as the metadata lists them)."""
    from importlib import metadata

    found = dict(_checkout_table().get(group, {}))
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
