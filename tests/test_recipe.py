"""Issue 12's generator training: resize-conv up-sampling, the EMA generator, the R1 recipe, the GPU script."""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from fexsdk.training.checkpoint import generator_from_checkpoint, load_checkpoint  # noqa: E402
from fexsdk.training.models import Generator, GeneratorConfig  # noqa: E402
from fexsdk.training.trainer import TrainConfig, Trainer, ema_update, lr_factor_by_time, r1_penalty  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _cfg(tmp_path, **kw):
    base = dict(preset="tiny", synthetic=64, out=str(tmp_path / "run"), batch_size=4, log_every=2,
                sample_every=1000, ckpt_every=4, progress=False, threads=1, adversarial="r1", n_critic=1,
                upsample="nearest")
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.parametrize("size,channels", [(48, 1), (128, 3)])
@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
def test_resize_conv_generator_shapes(size, channels, mode):
    G = Generator(in_channels=channels, image_size=size, conv_dim=8, n_res=1, upsample=mode, unet_skips=True)
    assert not any(isinstance(m, torch.nn.ConvTranspose2d) for m in G.modules())
    x = torch.rand(2, channels, size, size) * 2 - 1
    y = G(x, torch.eye(7)[:2])
    assert y.shape == x.shape and y.abs().max() <= 1


def test_old_checkpoints_without_upsample_load_as_transposed_convs():
    assert GeneratorConfig.from_saved({"conv_dim": 8}).upsample == "transpose"
    with pytest.raises(ValueError, match="upsample"):
        Generator(upsample="pixelshuffle")


def test_period2_share_of_known_patterns():
    from fexsdk.training.spectrum import period2_share

    checker = np.indices((8, 8)).sum(0) % 2 * 2.0 - 1  # +-1 checkerboard: all energy at (4, 4)
    assert period2_share(checker[None]) == pytest.approx(1.0)
    smooth = np.sin(2 * np.pi * np.arange(8) / 8)[None, :].repeat(8, 0)  # period 8 only
    assert period2_share(smooth[None]) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="even"):
        period2_share(np.zeros((1, 7, 8)))


def test_fine_share_separates_stripes_from_wide_shapes():
    from fexsdk.training.spectrum import fine_share

    y = np.arange(48)[:, None].repeat(48, 1)
    stripes = np.sin(2 * np.pi * y / 4)  # period 4 px: all its energy is fine
    wide = np.sin(2 * np.pi * y / 16)  # period 16 px: none of it
    assert fine_share(stripes[None]) == pytest.approx(1.0)
    assert fine_share(wide[None]) == pytest.approx(0.0, abs=1e-12)
    assert fine_share((stripes + wide)[None]) == pytest.approx(0.5)  # equal amplitudes, equal energies
    assert fine_share(stripes.T[None]) == pytest.approx(1.0)  # any direction
    with pytest.raises(ValueError, match="max_period"):
        fine_share(stripes[None], max_period=1)


def test_resize_conv_has_less_period2_energy_than_transposed_conv_at_init():
    """The checkerboard is a period-2 pattern: at init, transposed convs put energy there, resize-conv much less."""
    from fexsdk.training.spectrum import period2_share

    torch.manual_seed(0)
    x = torch.zeros(8, 1, 48, 48)
    shares = {}
    for mode in ("transpose", "nearest"):
        torch.manual_seed(0)
        G = Generator(conv_dim=16, n_res=1, upsample=mode)
        with torch.no_grad():
            shares[mode] = period2_share(G(x, torch.eye(7)[torch.arange(8) % 7]).numpy())
    assert shares["nearest"] < 0.5 * shares["transpose"]


def test_r1_penalty_on_a_hand_checkable_discriminator():
    """D_src(x) = sum of w * x over pixels, so grad_x = w for every image and the penalty is |w|^2."""

    class Linear(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.arange(16.0).reshape(1, 1, 4, 4) / 10)

        def forward(self, x):
            return (x * self.w).sum(dim=(1, 2, 3)).view(-1, 1, 1, 1), torch.zeros(x.size(0), 7)

    D = Linear()
    real = torch.randn(5, 1, 4, 4)
    expected = float((D.w.detach() ** 2).sum())  # = sum(k^2)/100 for k < 16 = 12.4
    assert r1_penalty(D, real).item() == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(12.4)
    # The penalty is differentiable in D's weights: d|w|^2/dw = 2w.
    r1_penalty(D, real).backward()
    assert torch.allclose(D.w.grad, 2 * D.w.detach())


def test_ema_update_arithmetic():
    a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    before = a.weight.detach().clone()
    ema_update(a, b, beta=0.9)
    assert torch.allclose(a.weight, 0.9 * before + 0.1 * b.weight.detach())


def test_ema_weights_differ_from_live_and_are_what_export_uses(tmp_path):
    from fexsdk.export.onnx_export import export_onnx

    t = Trainer(_cfg(tmp_path, max_steps=12))
    t.fit()
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    assert ckpt["g_updates"] == 12 and ckpt["n_critic"] == 1
    live, ema = ckpt["G"], ckpt["G_ema"]
    assert any(not torch.equal(live[k], ema[k]) for k in live)
    # The loaders pick the EMA weights by default.
    G = generator_from_checkpoint(ckpt)
    assert all(torch.equal(G.state_dict()[k], ema[k]) for k in ema)
    assert all(torch.equal(generator_from_checkpoint(ckpt, ema=False).state_dict()[k], live[k]) for k in live)
    # The exported graph computes the EMA generator: compare its output with both.
    import onnxruntime as ort

    onnx_path = tmp_path / "m.onnx"
    export_onnx(tmp_path / "run" / "last.pt", onnx_path)
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).uniform(-1, 1, (2, 1, 48, 48)).astype(np.float32)
    c = np.eye(7, dtype=np.float32)[[3, 5]]
    noise = np.ones((2, G.noise_size()), np.float32)
    names = [i.name for i in sess.get_inputs()]
    out = sess.run(None, dict(zip(names, [x, c, noise])))[0]
    with torch.no_grad():
        want = G(torch.from_numpy(x), torch.from_numpy(c), torch.from_numpy(noise)).numpy()
        live_out = generator_from_checkpoint(ckpt, ema=False)(torch.from_numpy(x), torch.from_numpy(c),
                                                               torch.from_numpy(noise)).numpy()
    assert np.abs(out - want).max() < 1e-4
    assert np.abs(out - live_out).max() > 1e-3


def test_exact_resume_holds_for_the_r1_recipe(tmp_path):
    kw = dict(max_steps=16)
    straight = Trainer(_cfg(tmp_path / "a", **kw))
    straight.fit()
    first = Trainer(_cfg(tmp_path / "b", **kw))
    first.fit(stop_at=8)
    resumed = Trainer(_cfg(tmp_path / "b", resume=True, **kw))
    assert resumed.step == 8 and resumed.g_updates == 8
    resumed.fit()
    for model in ("G", "G_ema", "D"):
        for (name, a), (_, b) in zip(getattr(straight, model).state_dict().items(),
                                     getattr(resumed, model).state_dict().items()):
            assert torch.allclose(a, b, atol=1e-6), (model, name)
    # R1 was applied lazily (every 16th step from step 0): logged at step 0 only in 16 steps.
    assert straight.loss_cfg.r1_every == 16


def test_time_schedule_decays_to_zero_at_the_limit():
    assert lr_factor_by_time(0, 60, 0.5) == 1.0
    assert lr_factor_by_time(30, 60, 0.5) == 1.0
    assert lr_factor_by_time(45, 60, 0.5) == pytest.approx(0.5, abs=1e-5)
    assert lr_factor_by_time(60, 60, 0.5) == 0.0
    with pytest.raises(ValueError, match="time_limit_min"):
        TrainConfig(synthetic=8, time_schedule=True).validate()


def test_precision_auto_and_bf16_warning(monkeypatch):
    import fexsdk.training.trainer as tr

    cpu = torch.device("cpu")
    monkeypatch.setattr(tr, "cpu_has_fast_bf16", lambda: False)
    assert tr.resolve_precision("auto", cpu) == "fp32"
    with pytest.warns(UserWarning, match="16x slower"):
        assert tr.resolve_precision("bf16", cpu) == "bf16"
    monkeypatch.setattr(tr, "cpu_has_fast_bf16", lambda: True)
    assert tr.resolve_precision("auto", cpu) == "bf16"
    assert tr.resolve_precision("fp32", cpu) == "fp32"


@pytest.mark.slow
def test_gpu_script_tiny_cpu_run(tmp_path):
    """experiments/gpu_run.sh end to end on the CPU with --tiny: packed data, two runs, eval, latency, packed results."""
    classifier = ROOT / "training" / "weights" / "resnet18_fer2013.safetensors"
    rng = np.random.default_rng(0)
    n_train, n_test = 300, 80
    images = rng.integers(0, 256, (n_train + n_test, 48, 48), dtype=np.uint8)
    labels = rng.integers(0, 7, n_train + n_test).astype(np.uint8)
    usage = np.r_[np.zeros(n_train, np.uint8), np.ones(n_test, np.uint8)]
    raw = tmp_path / "fer.npz"
    np.savez(raw, images=images, labels=labels, usage=usage)
    packed = tmp_path / "packed.npz"
    subprocess.run([sys.executable, "experiments/gpu_data.py", "pack", str(raw), str(packed)], cwd=ROOT, check=True)
    out = tmp_path / "out"
    env = {**os.environ, "WORK": str(tmp_path / "work"), "OMP_NUM_THREADS": "1"}
    subprocess.run(["bash", "experiments/gpu_run.sh", str(packed), str(out), "0.1", "--tiny", "--threads", "1",
                    "--classifier", str(classifier)], cwd=ROOT, check=True, env=env, capture_output=True)
    parts = sorted(out.glob("gpu.tar.part-*"))
    assert parts and all(p.stat().st_size <= 15 * 2**20 for p in parts)
    back = tmp_path / "back"
    back.mkdir()
    subprocess.run(f"cat {' '.join(map(str, parts))} | tar x -C {back}", shell=True, check=True)
    summary = json.loads((back / "gpu" / "summary.json").read_text())
    assert [r["name"] for r in summary["runs"]] == ["tiny-wgan", "tiny-r1"]
    for r in summary["runs"]:
        assert r["steps"] > 0 and r["g_updates"] > 0
        assert 0.0 <= r["eval"]["accuracy_generated"] <= 1.0 and r["eval"]["n_images"] == 64
        assert (back / "gpu" / "weights" / f"{r['name']}.pt").exists()
    r1, wgan = summary["runs"][1], summary["runs"][0]
    assert r1["g_updates"] == r1["steps"] and wgan["g_updates"] == wgan["steps"] // 5
    assert {row["precision"] for row in summary["latency"]} == {"fp32", "bf16"}
    # The slim checkpoint is usable as a model.
    G = generator_from_checkpoint(back / "gpu" / "weights" / "tiny-r1.pt")
    assert G.config.upsample == "nearest"


def test_gpu_groups_name_known_runs_and_their_flags_parse(monkeypatch):
    """Every run of every GPU group exists, and its flags are ones `fex train` accepts (a typo would cost a GPU call)."""
    monkeypatch.syspath_prepend(str(ROOT / "experiments"))  # the experiment scripts, outside the package
    from gpu_run import GPU_RUNS, GROUPS

    from fexsdk.training.commands import _add_train
    from fexsdk.training.presets import list_presets

    runs = {r.name: r for r in GPU_RUNS}
    for group, names in GROUPS.items():
        assert names and set(names) <= set(runs), group
    parser = argparse.ArgumentParser()
    _add_train(parser.add_subparsers())
    for r in GPU_RUNS:
        assert r.preset in list_presets()
        args = parser.parse_args(["train", "--preset", r.preset, "--batch-size", str(r.batch_size), *r.train_flags()])
        if args.init_discriminator:  # tracked files travel with the working tree: they must be in the repo
            assert (Path(__file__).parent.parent / args.init_discriminator).is_file(), r.name


def test_gpu_run_refuses_a_missing_warm_start_before_training(tmp_path, monkeypatch):
    """A finetune group without its carried checkpoint stops at once with the command that makes it."""
    monkeypatch.syspath_prepend(str(ROOT / "experiments"))
    from gpu_run import GROUPS, main

    monkeypatch.chdir(tmp_path)  # no .gpudata/ here
    with pytest.raises(SystemExit, match=r"experiments/gpu_data.py warmstart"):
        main(["--data", "missing.npz", "--out", str(tmp_path / "out"), "--only", GROUPS["finetune"][0]])
    assert not (tmp_path / "out" / "runs").exists()


def test_checkerboard_per_target_shares_match_each_targets_change(tiny_onnx):
    """benchmarks/checkerboard.py --per-target: one share per emotion, each the fine share of that target's change."""
    from benchmarks.checkerboard import fine_share_per_target
    from fexsdk.backends import load_backend
    from fexsdk.emotions import EMOTIONS
    from fexsdk.noise import noise_for
    from fexsdk.training.spectrum import fine_share

    x = np.random.default_rng(0).uniform(-1, 1, (6, 1, 48, 48)).astype(np.float32)
    shares = fine_share_per_target(str(tiny_onnx), x)
    assert list(shares) == list(EMOTIONS)
    assert all(0.0 <= v <= 1.0 for v in shares.values())
    backend = load_backend(str(tiny_onnx), device="cpu")
    k = EMOTIONS.index("fear")
    label = backend.meta.label_for(np.eye(len(EMOTIONS), dtype=np.float32)[np.full(len(x), k)])
    change = backend.run(x, label, noise_for(backend.meta, 0, range(len(x)))) - x
    assert shares["fear"] == pytest.approx(fine_share(change), rel=1e-6)
    assert len(set(round(v, 6) for v in shares.values())) > 1  # the targets' changes differ
