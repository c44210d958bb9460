"""The experiment scripts (experiments/): outside the package, runnable from a checkout, installed or bare."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

#: Runs in a fresh interpreter with fexsdk's install hidden (its editable finder and the checkout off the path),
#: as on a leased GPU machine where nothing is installed.
_BARE = """
import sys
sys.meta_path = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
sys.path = [p for p in sys.path if p not in ("", {repo!r})]
sys.path.insert(0, {experiments!r})
try:
    import fexsdk.training
    raise SystemExit("fexsdk.training is importable before the tree is built: the test hides nothing")
except ImportError:
    pass
import _checkout
_checkout.ensure()
import os
import fexsdk, fexsdk.export, fexsdk.training.commands
tree = os.environ["PYTHONPATH"].split(os.pathsep)[0]
assert fexsdk.__file__.startswith(tree), (fexsdk.__file__, tree)
from fexsdk import formats
from fexsdk.cli import build_parser
commands = build_parser()._subparsers._group_actions[0].choices
assert {{"train", "eval", "export", "apply", "serve"}} <= set(commands), sorted(commands)
assert formats.model_format(".pt") is not None
print(tree)
"""


def test_a_bare_checkout_gets_the_installed_layout_from_a_tree_of_links():
    code = _BARE.format(repo=str(REPO), experiments=str(REPO / "experiments"))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    tree = Path(proc.stdout.split()[-1])
    assert (tree / "fexsdk" / "training").resolve() == REPO / "training"
    assert not (REPO / "fexsdk" / "training").exists()  # nothing was added to the checkout


def test_the_scripts_run_from_a_checkout():
    for script in ("gpu_run.py", "gpu_data.py", "table2.py"):
        proc = subprocess.run([sys.executable, f"experiments/{script}", "--help"], capture_output=True, text=True,
                              cwd=REPO)
        assert proc.returncode == 0 and "usage" in proc.stdout, (script, proc.stderr[-2000:])
