"""What the packages above the runtime add to it: model formats and ``fex`` subcommands.

The runtime (``fexsdk``) imports nothing from ``fexsdk.training`` or ``fexsdk.export``. They plug in
through two entry-point groups that pyproject.toml declares:

- ``fexsdk.backends``: a callable that calls :func:`register_format` (training registers ``.pt``
  checkpoints, run by PyTorch);
- ``fexsdk.commands``: a callable ``add_commands(subparsers, helpers)`` that adds ``fex`` subcommands
  (train, train-classifier, eval from training; export from export).

An installed fexsdk reads them from its distribution's metadata; a source checkout used without
installing (see :mod:`fexsdk._layers`) reads the same table from its pyproject.toml.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

BACKENDS_GROUP = "fexsdk.backends"
COMMANDS_GROUP = "fexsdk.commands"

#: Built-in formats of the runtime itself (the backends module opens them).
BUILTIN_SUFFIXES = (".onnx", ".engine", ".plan")


@dataclass
class ModelFormat:
    suffixes: tuple[str, ...]
    #: (path, device, threads) -> a backend with ``meta``, ``name``, ``run`` and ``run_outputs``.
    opener: Callable[..., Any]
    #: path -> ModelMetadata, without running the model.
    reader: Optional[Callable[[os.PathLike], Any]] = None
    description: str = ""


_FORMATS: dict[str, ModelFormat] = {}
_loaded_backends = False


def register_format(suffixes, opener, reader=None, description: str = "") -> None:
    """Let :func:`fexsdk.backends.load_backend` and :func:`fexsdk.metadata.read_metadata` open more suffixes."""
    fmt = ModelFormat(tuple(s.lower() for s in suffixes), opener, reader, description)
    for s in fmt.suffixes:
        if s in BUILTIN_SUFFIXES:
            raise ValueError(f"{s} is a built-in format of the runtime")
        _FORMATS[s] = fmt


def model_format(suffix: str) -> Optional[ModelFormat]:
    """The registered format for a suffix, loading the ``fexsdk.backends`` plugins on the first miss."""
    global _loaded_backends
    suffix = suffix.lower()
    if suffix not in _FORMATS and not _loaded_backends:
        _loaded_backends = True
        for hook in load(BACKENDS_GROUP):
            hook()
    return _FORMATS.get(suffix)


def known_suffixes() -> list[str]:
    model_format("")  # loads the plugins
    return [*BUILTIN_SUFFIXES, *sorted(_FORMATS)]


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
