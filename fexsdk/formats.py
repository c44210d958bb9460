"""The one table of model-file formats: suffixes, how to open each, how to read its metadata.

:func:`fexsdk.backends.load_backend`, :func:`fexsdk.metadata.read_metadata` and the ``fex`` help
text all read this table; no other module of the runtime names a model-file suffix. The runtime
registers its own two formats below (ONNX, run by onnxruntime; TensorRT engines); the packages
above it register theirs the same way, through a ``fexsdk.backends`` entry point that calls
:func:`register_format` (``fexsdk.training`` registers PyTorch checkpoints). Those entry points are
loaded the first time a suffix is not found here, or the whole table is asked for.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

#: Suffixes of the runtime's own formats.
ONNX_SUFFIXES = (".onnx",)
ENGINE_SUFFIXES = (".engine", ".plan")


@dataclass(frozen=True)
class ModelFormat:
    suffixes: tuple[str, ...]
    #: (path, device, threads) -> a :class:`fexsdk.backends.Backend`.
    opener: Callable[..., Any]
    #: path -> :class:`fexsdk.metadata.ModelMetadata`, without running the model (None: not readable alone).
    reader: Optional[Callable[[os.PathLike], Any]] = None
    description: str = ""


_FORMATS: dict[str, ModelFormat] = {}
_loaded_plugins = False


def register_format(suffixes, opener, reader=None, description: str = "") -> ModelFormat:
    """Let :func:`fexsdk.backends.load_backend` and :func:`fexsdk.metadata.read_metadata` open files with these
    suffixes. A suffix that another format already holds is refused (registering the same opener again is fine)."""
    fmt = ModelFormat(tuple(s.lower() for s in suffixes), opener, reader, description)
    for s in fmt.suffixes:
        held = _FORMATS.get(s)
        if held is not None and held.opener is not opener:
            raise ValueError(f"{s} is already registered ({held.description or held.opener})")
    for s in fmt.suffixes:
        _FORMATS[s] = fmt
    return fmt


def _load_plugins() -> None:
    global _loaded_plugins
    if not _loaded_plugins:
        _loaded_plugins = True
        from fexsdk import plugins

        for hook in plugins.load(plugins.BACKENDS_GROUP):
            hook()


def model_format(suffix: str) -> Optional[ModelFormat]:
    """The registered format of a suffix (``".onnx"``), loading the ``fexsdk.backends`` plugins on the first miss."""
    suffix = suffix.lower()
    if suffix not in _FORMATS:
        _load_plugins()
    return _FORMATS.get(suffix)


def format_of(path: str | os.PathLike) -> Optional[ModelFormat]:
    """The format a model file's suffix names (None: no registered format)."""
    return model_format(Path(path).suffix)


def formats() -> list[ModelFormat]:
    """Every registered format, once each, in the order registered (plugins loaded)."""
    _load_plugins()
    return list(dict.fromkeys(_FORMATS.values()))


def known_suffixes() -> list[str]:
    """Every suffix a model file may have, the runtime's first."""
    return [s for fmt in formats() for s in fmt.suffixes]


def suffix_list(every: bool = False) -> str:
    """For messages and help: ``".onnx, .engine, .pt"`` (each format's first suffix; ``every``: all of them)."""
    return ", ".join(s for fmt in formats() for s in (fmt.suffixes if every else fmt.suffixes[:1]))


def describe() -> str:
    """``".onnx (ONNX model, run by onnxruntime), .engine/.plan (TensorRT engine), ..."``."""
    return ", ".join(f"{'/'.join(fmt.suffixes)} ({fmt.description})" for fmt in formats())


def is_onnx(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in ONNX_SUFFIXES


def with_onnx_suffix(name: str | os.PathLike) -> Path:
    """``name`` with the ONNX suffix added (bundled models are ``NAME`` + it)."""
    return Path(f"{os.fspath(name)}{ONNX_SUFFIXES[0]}")


def onnx_glob() -> str:
    """The glob pattern of ONNX files (``*`` + the suffix)."""
    return f"*{ONNX_SUFFIXES[0]}"


# -- the runtime's own formats --------------------------------------------------------
def _open_onnx(path, device: str = "auto", threads: Optional[int] = None):
    from fexsdk.backends import OnnxBackend

    return OnnxBackend(path, device, threads)


def _open_engine(path, device: str = "auto", threads: Optional[int] = None):
    if device == "cpu":
        raise ValueError(f"{path} is a TensorRT engine and runs on a GPU only; use the {ONNX_SUFFIXES[0]} model "
                         "with device='cpu'")
    from fexsdk.trt_backend import TensorRTBackend

    return TensorRTBackend(path)


def _read_onnx(path):
    from fexsdk.metadata import read_onnx_metadata

    return read_onnx_metadata(path)


def _read_engine(path):
    from fexsdk.metadata import read_engine_metadata

    return read_engine_metadata(path)


register_format(ONNX_SUFFIXES, _open_onnx, _read_onnx, "ONNX model, run by onnxruntime")
register_format(ENGINE_SUFFIXES, _open_engine, _read_engine, "TensorRT engine, GPU only")
