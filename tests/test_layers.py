"""The layering contract and the packaging it implies.

Layers, bottom to top: ``fexsdk`` (the runtime: numpy, OpenCV, onnxruntime), ``fexsdk.training``
(PyTorch; the repository's training/ folder) and ``fexsdk.export`` (export/). A layer imports only
from the layers below it; the runtime learns about the others through entry points
(:mod:`fexsdk.plugins`). Checked twice: statically, every import statement in each layer's files
(lazy ones inside functions included), and by importing each layer with the layers above it blocked.

Packaging: the wheel's only top-level package is ``fexsdk``, while ``training/`` and ``export/`` stay
top-level folders of the repository; no code runs at ``import fexsdk`` to map them (no import hook),
and nothing reads pyproject.toml at run time: plugins come from installed entry points only.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: Layer -> (its folder, the modules it must never import).
LAYERS = {
    "fexsdk": (REPO / "fexsdk", ("fexsdk.training", "fexsdk.export", "training", "export", "torch", "torchvision")),
    "fexsdk.training": (REPO / "training", ("fexsdk.export", "export", "training")),
    "fexsdk.export": (REPO / "export", ("export", "training")),
}


def _imports(path: Path) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                out.append((node.lineno, "." * node.level + (node.module or "")))
            else:
                out.append((node.lineno, node.module or ""))
    return out


@pytest.mark.parametrize("layer", list(LAYERS))
def test_no_layer_imports_upwards(layer):
    folder, banned = LAYERS[layer]
    bad = []
    for path in sorted(folder.rglob("*.py")):
        for line, name in _imports(path):
            if name.startswith("."):
                bad.append(f"{path.relative_to(REPO)}:{line}: relative import {name}")
            elif any(name == b or name.startswith(b + ".") for b in banned):
                bad.append(f"{path.relative_to(REPO)}:{line}: imports {name}")
    assert not bad, f"{layer} imports what it must not:\n" + "\n".join(bad)


_BLOCKED = """
import importlib, pkgutil, sys
for name in {blocked!r}:
    sys.modules[name] = None  # any import of it raises ImportError
import fexsdk
import {package}
names = [m.name for m in pkgutil.walk_packages({package}.__path__, "{package}.")
         if not m.name.startswith(("fexsdk.training", "fexsdk.export"))]
for name in names:
    importlib.import_module(name)
print(len(names))
"""


def _run_blocked(package: str, blocked: tuple[str, ...], extra: str = "") -> str:
    code = _BLOCKED.format(blocked=list(blocked), package=package) + extra
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_the_runtime_works_with_training_export_and_torch_blocked():
    out = _run_blocked("fexsdk", ("fexsdk.training", "fexsdk.export", "training", "export", "torch"), """
import numpy as np
from fexsdk import Transfer
img = np.random.default_rng(0).integers(0, 256, (120, 120, 3), dtype=np.uint8)  # texture: a warp model moves pixels
out = Transfer(device="cpu", skip_unsuitable=False).apply(img, "happy", faces=[(30, 30, 60, 60)], seed=0)
assert out.shape == img.shape and not np.array_equal(out, img)
""")
    assert int(out.split()[0]) >= 20  # every runtime module was imported


def test_training_imports_with_export_blocked():
    pytest.importorskip("torch")
    _run_blocked("fexsdk.training", ("fexsdk.export", "export"))


def test_training_registers_the_checkpoint_backend_and_the_commands():
    from fexsdk import formats
    from fexsdk.cli import build_parser

    fmt = formats.model_format(".pt")
    assert fmt is not None and fmt.opener.__module__ == "fexsdk.training.torch_backend"
    commands = build_parser()._subparsers._group_actions[0].choices
    assert set(commands) == {"train", "train-classifier", "eval", "export", "apply", "grid", "demo", "serve"}
    assert list(commands)[-4:] == ["apply", "grid", "demo", "serve"]  # the plugins' commands come first


def test_layers_are_top_level_folders_and_nothing_maps_them_at_run_time():
    """training/ and export/ sit beside fexsdk/ (not inside it); importing fexsdk installs no import hook, and
    neither the import, the CLI parser nor the table of model formats opens pyproject.toml."""
    for name in ("training", "export"):
        assert (REPO / name / "__init__.py").is_file() and not (REPO / "fexsdk" / name).exists()
    assert not (REPO / "fexsdk" / "_layers.py").exists()
    code = """
import sys
opened = []


def watch(event, args):
    if event == "open" and args and isinstance(args[0], (str, bytes)) and str(args[0]).endswith("pyproject.toml"):
        opened.append(str(args[0]))


sys.addaudithook(watch)
finders = [type(f) for f in sys.meta_path]
import fexsdk
assert [type(f) for f in sys.meta_path] == finders, sys.meta_path
import fexsdk.cli
from fexsdk import formats
fexsdk.cli.build_parser()
assert formats.model_format(".pt") is not None  # from the installed entry point
assert not opened, opened
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_wheel_installs_only_fexsdk(tmp_path):
    """`pip install .` puts only fexsdk (with fexsdk.training and fexsdk.export inside) in site-packages."""
    pytest.importorskip("setuptools")
    # Built from a copy of what the wheel is made of, so that setuptools' build/ folder stays out of the checkout.
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    for name in ("fexsdk", "training", "export"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(tmp_path / "dist"), str(src)], capture_output=True, text=True, cwd=tmp_path)
    if proc.returncode != 0 and "No module named" in proc.stderr:
        pytest.skip(f"cannot build a wheel here: {proc.stderr.strip()[-200:]}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("fexsdk-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        entry_points = next(zf.read(n).decode() for n in names if n.endswith(".dist-info/entry_points.txt"))
    top = {n.split("/")[0] for n in names}
    assert {t for t in top if not t.endswith(".dist-info")} == {"fexsdk"}, sorted(top)
    for must in ("fexsdk/training/trainer.py", "fexsdk/training/torch_backend.py", "fexsdk/export/quantize.py",
                 "fexsdk/export/onnx_export.py", "fexsdk/models/default.onnx", "fexsdk/cli.py",
                 # the applications' sub-packages, and the page's files beside the service
                 "fexsdk/video/loop.py", "fexsdk/video/reader.py", "fexsdk/serve/app.py", "fexsdk/serve/service.py",
                 "fexsdk/serve/web/index.html", "fexsdk/serve/web/app.js", "fexsdk/serve/web/style.css"):
        assert must in names
    assert not any(n.endswith((".safetensors", ".pt")) for n in names)
    # The experiment drivers (experiments/: GPU-call scripts, the Table 2 runner) stay in the repository.
    drivers = ("gpu_run.py", "gpu_run.sh", "gpu_data.py", "table2.py", "_checkout.py")
    assert not [n for n in names if n.startswith("experiments/") or n.rsplit("/", 1)[-1] in drivers]
    assert "[fexsdk.backends]" in entry_points and "fexsdk.training.torch_backend:register" in entry_points
    assert "fexsdk.training.commands:add_commands" in entry_points and "fexsdk.export.commands:add_commands" in entry_points

    # Installed from the wheel, away from the checkout: the layers import under their new names
    # and the runtime still does not import torch.
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-compile", "--target", str(target),
                    str(wheel)], check=True, capture_output=True)
    code = ("import sys, fexsdk, fexsdk.cli; fexsdk.cli.build_parser(); assert 'torch' not in sys.modules; "
            "import fexsdk.training.torch_backend as tb, fexsdk.export; from fexsdk import formats; "
            "assert formats.model_format('.pt').opener is tb.TorchBackend; print(fexsdk.__file__, fexsdk.export.__file__)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(target)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert all(Path(p).is_relative_to(target) for p in proc.stdout.split())
