"""The repository names no paths of the machine it was made on: records and docs use paths relative to the repo."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TEXT_SUFFIXES = {".md", ".py", ".json", ".toml", ".yaml", ".yml", ".txt", ".cfg", ".sh"}
#: absolute paths a session's machine has and a user's does not
MACHINE_PATH = re.compile(r"(?<![\w.$])/(?:work|root|home|tmp)/[\w.-]+")
#: scratch folders that scripts create on purpose (the GPU script's working folder on the lent machine)
ALLOWED = {("experiments/gpu_run.sh", "/tmp/fexsdk-gpu")}
#: this file, whose made-up examples below must match the pattern
THIS_FILE = "tests/test_no_machine_paths.py"


def tracked_text_files() -> list[str]:
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    out = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    return [f for f in out.splitlines() if Path(f).suffix in TEXT_SUFFIXES and f != THIS_FILE]


def test_no_tracked_file_names_a_machine_path():
    found = []
    for name in tracked_text_files():
        text = (REPO / name).read_text(encoding="utf-8", errors="replace")
        for m in MACHINE_PATH.finditer(text):
            if (name, m.group(0)) not in ALLOWED:
                found.append(f"{name}: {m.group(0)}")
    assert not found, "machine paths in tracked files:\n" + "\n".join(found)


def test_the_scan_sees_tracked_files_but_not_this_one():
    files = tracked_text_files()
    assert "README.md" in files and "fexsdk/__init__.py" in files and THIS_FILE not in files


def test_the_pattern_catches_machine_paths_and_spares_relative_ones():
    assert MACHINE_PATH.search("wrote /tmp/run1/out.png") and MACHINE_PATH.search("cd /home/someone/repo && x")
    assert not MACHINE_PATH.search("docs/photos/astronaut.jpg") and not MACHINE_PATH.search("../shared/data/fer2013.npz")
    assert not MACHINE_PATH.search("$OUT/tmp/x")  # a variable's sub-folder, not a machine path
