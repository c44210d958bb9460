"""The one table of model formats (fexsdk/formats.py) and the Backend interface every backend implements."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import numpy as np
import pytest

from fexsdk import formats
from fexsdk.backends import Backend, OnnxBackend, load_backend
from fexsdk.metadata import read_metadata
from fexsdk.transfer import BUNDLED_DIR

REPO = Path(__file__).resolve().parents[1]
#: Model-file suffixes as they would be written in code: ".onnx" alone, "*.onnx", "(.onnx, .engine)";
#: not inside a file name ("default.onnx", "face_detection_yunet_2023mar.onnx").
SUFFIX = re.compile(r"(?<![\w.])\.(onnx|engine|plan|pt|pth|ckpt)\b")


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the string constants that are docstrings (prose about formats may name them)."""
    out = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list):
            for stmt in body:
                if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) and isinstance(stmt.value.value, str):
                    out.add(id(stmt.value))
    return out


def test_model_suffixes_are_named_only_in_the_formats_module():
    """Every string literal (f-string parts included, docstrings not) of fexsdk/**/*.py outside formats.py is
    free of model-file suffixes: load_backend, read_metadata, the help text and the messages read the table."""
    found = []
    for path in sorted((REPO / "fexsdk").rglob("*.py")):
        if path.name == "formats.py" and path.parent.name == "fexsdk":
            continue
        tree = ast.parse(path.read_text(), str(path))
        docs = _docstrings(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
                for m in SUFFIX.finditer(node.value):
                    found.append(f"{path.relative_to(REPO)}:{node.lineno}: {m.group(0)!r} in {node.value!r}")
    assert not found, "model suffixes outside fexsdk/formats.py:\n" + "\n".join(found)
    # and the scan does see the table itself
    text = (REPO / "fexsdk" / "formats.py").read_text()
    assert SUFFIX.search(text)


def test_the_table_holds_the_runtime_formats_and_the_torch_plugin():
    onnx, engine = formats.model_format(".onnx"), formats.model_format(".ENGINE")
    assert onnx is not None and engine is not None and formats.model_format(".plan") is engine
    assert formats.known_suffixes()[:3] == [".onnx", ".engine", ".plan"]
    assert formats.model_format(".nope") is None
    pt = formats.model_format(".pt")
    if pt is not None:  # registered through the fexsdk.backends entry point, like the runtime's own
        assert pt.opener.__module__ == "fexsdk.training.torch_backend" and issubclass(pt.opener, Backend)
        assert formats.model_format(".pth") is pt and formats.suffix_list() == ".onnx, .engine, .pt"
    assert all(f.reader is not None for f in formats.formats())


def test_a_suffix_is_registered_once():
    def opener(path, device, threads):
        raise AssertionError("never opened")

    with pytest.raises(ValueError, match="already registered"):
        formats.register_format([".ONNX"], opener)
    assert formats.model_format(".onnx").opener is not opener


def test_load_backend_and_read_metadata_dispatch_through_the_table(tmp_path, monkeypatch):
    b = load_backend(BUNDLED_DIR / "warp.onnx", "cpu", 1)
    assert isinstance(b, OnnxBackend) and isinstance(b, Backend)
    assert read_metadata(BUNDLED_DIR / "warp.onnx").outputs == b.meta.outputs
    # An unknown suffix: the message lists the table.
    odd = tmp_path / "model.weird"
    odd.write_bytes(b"x")
    with pytest.raises(ValueError, match=r"cannot tell the backend .*\.onnx \(ONNX model"):
        load_backend(odd)
    with pytest.raises(ValueError, match=r"no reader for '\.weird'.*\.onnx, \.engine, \.plan"):
        read_metadata(odd)
    # A format registered at run time is opened by both.
    calls = []

    class Fake(Backend):
        def __init__(self, path, device, threads):
            calls.append((Path(path).name, device, threads))
            self.meta, self.name = b.meta, "fake"

        def run(self, image, label, noise):
            return image

        def run_outputs(self, image, label, noise):
            return {"output": image}

    monkeypatch.setitem(formats._FORMATS, ".weird", formats.ModelFormat((".weird",), Fake, lambda p: b.meta, "test"))
    assert isinstance(load_backend(odd, "cpu", 2), Fake) and calls == [("model.weird", "cpu", 2)]
    assert read_metadata(odd) is b.meta


def test_a_tensorrt_engine_is_refused_on_the_cpu_before_tensorrt_is_imported(tmp_path):
    engine = tmp_path / "m.plan"
    engine.write_bytes(b"FEXE")
    with pytest.raises(ValueError, match=r"GPU only; use the \.onnx model"):
        load_backend(engine, "cpu")


def test_backend_is_an_abstract_base_class():
    with pytest.raises(TypeError):
        Backend()

    class OnlyRun(Backend):
        def run(self, image, label, noise):
            return image

    with pytest.raises(TypeError):  # run_outputs is part of the interface too
        OnlyRun()
    from fexsdk.trt_backend import TensorRTBackend

    assert issubclass(TensorRTBackend, Backend) and issubclass(OnnxBackend, Backend)
    x = np.zeros((1, 1, 48, 48), np.float32)
    b = load_backend(BUNDLED_DIR / "default.onnx", "cpu", 1)
    label = b.meta.label_for(np.eye(7, dtype=np.float32)[3:4])
    noise = np.ones((1, b.meta.noise_size), np.float32) if b.meta.noise_size else None
    assert np.array_equal(b.run(x, label, noise), b.run_outputs(x, label, noise)["output"])
