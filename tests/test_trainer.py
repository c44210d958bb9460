"""The training loop: exact resume, LR decay, perceptual switch, mask vector, DDP, label following."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from fexsdk.training.checkpoint import generator_from_checkpoint, load_checkpoint  # noqa: E402
from fexsdk.training.trainer import TrainConfig, Trainer, lr_factor  # noqa: E402


def _cfg(tmp_path, **kw):
    base = dict(preset="tiny", synthetic=64, out=str(tmp_path / "run"), batch_size=4, n_critic=2, log_every=2,
                sample_every=1000, ckpt_every=4, progress=False, threads=1)
    base.update(kw)
    return TrainConfig(**base)


def test_exact_resume_matches_straight_run(tmp_path):
    straight = Trainer(_cfg(tmp_path / "a", max_steps=8))
    straight.fit()
    first = Trainer(_cfg(tmp_path / "b", max_steps=8))
    first.fit(stop_at=4)  # as if killed right after the step-4 checkpoint
    assert load_checkpoint(tmp_path / "b" / "run" / "last.pt")["step"] == 4
    resumed = Trainer(_cfg(tmp_path / "b", max_steps=8, resume=True))
    assert resumed.step == 4
    resumed.fit()
    for (name, a), (_, b) in zip(straight.G.state_dict().items(), resumed.G.state_dict().items()):
        assert torch.allclose(a, b, atol=1e-6), name
    for (name, a), (_, b) in zip(straight.D.state_dict().items(), resumed.D.state_dict().items()):
        assert torch.allclose(a, b, atol=1e-6), name
    # The scalar log has each step once, even though steps 4.. were logged twice.
    steps = [int(line.split(",")[0]) for line in (tmp_path / "b" / "run" / "scalars.csv").read_text().splitlines()[1:]]
    assert steps == sorted(set(steps))


def test_lr_really_decays():
    total = 1000
    values = [lr_factor(s, total, 0.5) for s in range(total)]
    assert values[0] == 1.0 and values[499] == 1.0
    assert all(a >= b for a, b in zip(values, values[1:]))
    assert values[-1] <= 1 / 500 + 1e-9  # reaches ~0 by the last step


def test_time_schedule_still_decays_when_the_steps_run_out_first(tmp_path):
    # A 10-step run with an hour's time limit ends by its steps long before the clock's decay would start:
    # the rate must still be near 0 at the last step (it stayed at the full rate before).
    t = Trainer(_cfg(tmp_path, max_steps=10, decay_start=0.5, time_limit_min=60.0, time_schedule=True))
    t.fit()
    assert t.opt_g.param_groups[0]["lr"] < 0.25 * t.cfg.lr_g
    assert t.opt_d.param_groups[0]["lr"] < 0.25 * t.cfg.lr_d


def test_lr_is_applied_to_optimizers(tmp_path):
    t = Trainer(_cfg(tmp_path, max_steps=10, decay_start=0.0))
    t.fit()
    assert t.opt_g.param_groups[0]["lr"] < 0.15 * t.cfg.lr_g
    assert t.opt_d.param_groups[0]["lr"] < 0.15 * t.cfg.lr_d


def test_perceptual_switch_happens_at_configured_epoch(tmp_path):
    cfg = _cfg(tmp_path, max_steps=16, n_critic=1, perceptual=True, perceptual_start_epoch=0.5)
    t = Trainer(cfg)  # 64 images / batch 4 = 16 steps per epoch: switch at step 8
    seen = []
    while t.step < t.total_steps:
        active_before = t.perceptual_active()
        logs = t.train_step()
        seen.append((active_before, logs["G/loss_rec_feat"]))
    assert [a for a, _ in seen] == [False] * 8 + [True] * 8
    assert all(f == 0.0 for a, f in seen if not a)
    assert all(f > 0.0 for a, f in seen if a)


def test_outputs_written(tmp_path):
    t = Trainer(_cfg(tmp_path, max_steps=8, sample_every=4))
    out = t.fit()
    for name in ("last.pt", "best.pt", "scalars.csv", "losses.png", "samples/step0000008.png"):
        assert (out / name).is_file(), name
    G = generator_from_checkpoint(out / "last.pt")
    assert G.config.conv_dim == 8


def test_bf16_autocast_runs(tmp_path):
    t = Trainer(_cfg(tmp_path, max_steps=4, precision="bf16"))
    t.fit()
    assert all(torch.isfinite(p).all() for p in t.G.parameters())


def test_second_domain_through_mask_vector(tmp_path):
    import cv2

    root = tmp_path / "cartoons"
    rng = np.random.default_rng(0)
    for emotion in ("happy", "sad", "surprise"):
        (root / emotion).mkdir(parents=True)
        for i in range(6):
            cv2.imwrite(str(root / emotion / f"{i}.png"), rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    t = Trainer(_cfg(tmp_path, max_steps=4, second_domain=str(root)))
    assert t.n_domains == 2
    assert t.G.config.label_dim == 7 * 2 + 2
    assert t.D.config.num_classes == 14
    t.fit()
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    assert ckpt["domains"] == ["synthetic", "cartoons"]


def test_bad_config_errors(tmp_path):
    with pytest.raises(ValueError, match="--data"):
        Trainer(TrainConfig(out=str(tmp_path)))
    with pytest.raises(ValueError, match="precision"):
        Trainer(_cfg(tmp_path, precision="fp8"))
    with pytest.raises(FileNotFoundError, match="last.pt"):
        Trainer(_cfg(tmp_path / "empty", resume=True))
    with pytest.raises(FileNotFoundError):
        Trainer(_cfg(tmp_path, synthetic=0, data=str(tmp_path / "missing.npz")))


def test_width_depth_and_lambda_cls_overrides(tmp_path):
    t = Trainer(_cfg(tmp_path, preset="stargan", conv_dim=8, n_res=2))
    assert t.G.config.conv_dim == 8 and t.G.config.n_res == 2
    assert t.D.layers[0][0].out_channels == 8
    t.fit()
    G = generator_from_checkpoint(load_checkpoint(tmp_path / "run" / "last.pt"))
    assert (G.config.conv_dim, G.config.n_res) == (8, 2)
    # The validation score is lambda_cls * CE + lambda_rec * L1: same weights, same batch, so the
    # difference between lambda_cls 2 and 0 is exactly twice the (positive) cross-entropy.
    s0 = Trainer(_cfg(tmp_path / "a", lambda_cls=0.0)).validate()
    s2 = Trainer(_cfg(tmp_path / "b", lambda_cls=2.0)).validate()
    s1 = Trainer(_cfg(tmp_path / "c", lambda_cls=1.0)).validate()
    assert s2 - s0 == pytest.approx(2 * (s1 - s0), rel=1e-4) and s1 > s0
    with pytest.raises(ValueError, match="lambda_cls"):
        Trainer(_cfg(tmp_path, lambda_cls=-1.0))
    with pytest.raises(ValueError, match="conv_dim"):
        Trainer(_cfg(tmp_path, conv_dim=0))


def test_time_limit_stops_with_a_checkpoint_and_resume_finishes(tmp_path):
    t = Trainer(_cfg(tmp_path, max_steps=8, time_limit_min=1e-9))  # out of time at the first log step
    t.fit()
    assert t.step == 2 and load_checkpoint(tmp_path / "run" / "last.pt")["step"] == 2
    t2 = Trainer(_cfg(tmp_path, max_steps=8, resume=True))
    t2.fit()
    assert t2.step == 8 and load_checkpoint(tmp_path / "run" / "last.pt")["step"] == 8
    with pytest.raises(ValueError, match="time_limit_min"):
        Trainer(_cfg(tmp_path, time_limit_min=0))


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable fexsdk checkpoint"):
        load_checkpoint(bad)
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
    with pytest.raises(ValueError, match="not a fexsdk training checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")


@pytest.mark.slow
def test_ddp_two_processes_gloo(tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517",
           "-m", "fexsdk.cli", "train", "--preset", "tiny", "--synthetic", "64", "--batch-size", "4",
           "--max-steps", "6", "--ckpt-every", "3", "--out", str(out), "--no-progress", "--threads", "1", "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt["step"] == 6


@pytest.mark.slow
def test_generator_follows_the_target_label(tmp_path):
    """The StarGAN trap: a generator that copies its input scores at chance with the oracle."""
    from fexsdk.training.synthetic import make_synthetic, oracle_predict

    cfg = _cfg(tmp_path, synthetic=512, batch_size=16, n_critic=1, max_steps=300, ckpt_every=1000, lr_g=5e-4,
               lr_d=5e-4, decay_start=0.8, precision="bf16", threads=1)
    t = Trainer(cfg)
    t.fit()
    data = make_synthetic(70, seed=99)
    x = torch.from_numpy(data.images).float() / 127.5 - 1
    hits = []
    with torch.no_grad():
        for k in range(7):
            lab = torch.zeros(len(x), 7)
            lab[:, k] = 1
            pred = oracle_predict(t.G(x, lab).numpy())
            hits.append(np.mean(pred == k))
    copy_score = np.mean(oracle_predict(data.images) == np.arange(7)[:, None])  # what copying would score, ~1/7
    assert np.mean(hits) > 0.6, f"target accuracy {np.mean(hits):.2f} (copying the input scores {copy_score:.2f})"
