"""Issue 34: one `fex train` per run folder, and `fex train-classifier` off bf16 where it is slow."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fexsdk.cli import main

pytest.importorskip("torch")

TINY = ["--preset", "tiny", "--synthetic", "64", "--batch-size", "4", "--sample-every", "1000", "--no-progress",
        "--threads", "1"]


def fex(capsys, *args) -> tuple[int, str, str]:
    try:
        rc = main([str(a) for a in args])
    except SystemExit as exc:
        rc = exc.code
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_second_train_into_a_locked_folder_is_refused_at_once(tmp_path, capsys):
    """Two runs started close together both find the folder empty; the one without the lock stops at once."""
    from fexsdk.training.runlock import run_lock

    out = tmp_path / "run"
    with run_lock(out):  # the first run, which has not written anything yet
        t0 = time.perf_counter()
        rc, _, err = fex(capsys, "train", *TINY, "--max-steps", "2", "--out", out)
        assert time.perf_counter() - t0 < 10
    assert rc == 2
    assert "is in use: another fex train is writing to it right now" in err
    assert list(out.iterdir()) == []  # nothing written by the refused run
    # With the first run gone, the folder is free again (the lock leaves no file behind).
    rc, _, err = fex(capsys, "train", *TINY, "--max-steps", "2", "--ckpt-every", "2", "--out", out)
    assert rc == 0, err


def _step(checkpoint: Path) -> int:
    import torch

    return int(torch.load(checkpoint, map_location="cpu", weights_only=True)["step"])


def test_two_processes_one_run_folder(tmp_path):
    """A real second `fex train` while the first runs: refused; the first finishes, and --resume continues it.

    The first run is bounded by time (30 s, then a clean stop with a checkpoint), not by steps, so the
    second one starts while it runs on a fast machine as on a slow one."""
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "fexsdk.cli", "train", *TINY, "--out", str(out), "--max-steps", "1000000",
           "--ckpt-every", "50"]
    first = subprocess.Popen([*cmd, "--time-limit", "0.5"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    try:
        deadline = time.time() + 120
        while not (out / "scalars.csv").exists() and first.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        assert first.poll() is None, "the first run ended before the second could start"
        # --overwrite passes the empty-folder check: only the lock stops it.
        second = subprocess.run([*cmd, "--overwrite"], env=env, capture_output=True, text=True, timeout=120)
        assert first.poll() is None, "the first run ended before the second was refused"
        assert second.returncode == 2, second.stderr
        assert "is in use" in second.stderr and "Traceback" not in second.stderr
        stdout, stderr = first.communicate(timeout=600)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, stderr
    log = (out / "scalars.csv").read_text()
    assert log.count(log.splitlines()[0]) == 1  # one log, not two interleaved
    step = _step(out / "last.pt")
    resumed = subprocess.run([*cmd, "--resume", "--time-limit", "0.1"], env=env, capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert _step(out / "last.pt") > step


def test_train_classifier_defaults_to_fp32_without_bf16_instructions(tmp_path, monkeypatch):
    """The default is "auto": fp32 on a CPU without AVX-512 BF16/AMX (bf16 was the default, ~7x slower there)."""
    import torch

    import fexsdk.training.trainer as trainer
    from fexsdk.training.classifier import ClassifierTrainConfig, train_classifier
    from fexsdk.training.commands import add_commands  # noqa: F401  (the parser below holds its options)
    from fexsdk.cli import build_parser

    args = build_parser().parse_args(["train-classifier", "--data", "x.npz"])
    assert args.precision == "auto" and ClassifierTrainConfig().precision == "auto"

    monkeypatch.setattr(trainer, "cpu_has_fast_bf16", lambda: False)
    used = []
    real = torch.autocast

    def spy(device_type, dtype=None, enabled=True, **kw):
        used.append((dtype, enabled))
        return real(device_type, dtype=dtype, enabled=enabled, **kw)

    monkeypatch.setattr(torch, "autocast", spy)
    rng = np.random.default_rng(0)
    data = tmp_path / "faces.npz"
    np.savez(data, images=rng.integers(0, 256, (40, 48, 48), dtype=np.uint8), labels=np.arange(40) % 7,
             usage=np.array([0] * 32 + [1] * 8))
    train_classifier(ClassifierTrainConfig(data=str(data), out=str(tmp_path / "clf"), epochs=1, batch_size=16,
                                           progress=False))
    assert used and not any(enabled for _, enabled in used)
