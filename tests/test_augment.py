"""Classifier-path augmentation and warm starts (``--cls-augment``, ``--init-from``)."""

import math
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from fexsdk.training.augment import ClassAugment  # noqa: E402
from fexsdk.training.checkpoint import load_checkpoint  # noqa: E402
from fexsdk.training.trainer import TrainConfig, Trainer  # noqa: E402


def _cfg(tmp_path, **kw):
    base = dict(preset="tiny", synthetic=64, out=str(tmp_path / "run"), batch_size=4, n_critic=2, log_every=2,
                sample_every=1000, ckpt_every=4, progress=False, threads=1)
    base.update(kw)
    return TrainConfig(**base)


def _faces(b=4, size=48):
    torch.manual_seed(1)
    return torch.rand(b, 1, size, size) * 2 - 1


def test_zero_ranges_are_the_identity():
    x = _faces()
    out = ClassAugment(max_rotate_deg=0, max_scale=0, max_shift=0, cutout=0)(x)
    assert torch.allclose(out, x, atol=1e-5)


def test_shift_moves_the_image_by_the_drawn_pixels():
    x = torch.zeros(1, 1, 48, 48)
    x[0, 0, 20, 20] = 1.0
    aug = ClassAugment(max_rotate_deg=0, max_scale=0, max_shift=0.25, cutout=0)
    torch.manual_seed(3)
    u = torch.rand(1, 6) * 2 - 1  # the same draws the call makes
    torch.manual_seed(3)
    out = aug(x)[0, 0]
    # affine_grid samples the input at output + shift: the bright pixel moves by -shift * side / 2 * 2.
    dx, dy = (-u[0, 2] * 2 * 0.25 * 48 / 2).item(), (-u[0, 3] * 2 * 0.25 * 48 / 2).item()
    ys, xs = torch.meshgrid(torch.arange(48.0), torch.arange(48.0), indexing="ij")
    cy, cx = (out * ys).sum() / out.sum(), (out * xs).sum() / out.sum()
    assert cx.item() == pytest.approx(20 + dx, abs=0.05) and cy.item() == pytest.approx(20 + dy, abs=0.05)


def test_cutout_blanks_a_square_of_the_given_side():
    x = torch.ones(64, 1, 48, 48)
    out = ClassAugment(max_rotate_deg=0, max_scale=0, max_shift=0, cutout=0.25)(x)
    blank = (out == 0).flatten(1).sum(1)
    assert blank.max().item() == 12 * 12  # a whole square where it lies inside the image
    assert blank.min().item() > 0 and (blank < 12 * 12).any()  # and partly off the edge sometimes


def test_augment_is_random_per_image_reproducible_and_differentiable():
    x = _faces().requires_grad_(True)
    torch.manual_seed(0)
    a = ClassAugment()(x)
    torch.manual_seed(0)
    b = ClassAugment()(x)
    assert torch.equal(a, b)
    assert not torch.allclose(a, ClassAugment()(x))
    assert (a[0] - a[1]).abs().mean() > 0 and a.shape == x.shape
    a.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_bad_ranges_are_value_errors():
    with pytest.raises(ValueError, match="max_scale"):
        ClassAugment(max_scale=1.5)
    with pytest.raises(ValueError, match="cutout"):
        ClassAugment(cutout=2.0)


def test_cls_augment_changes_training_and_resume_stays_exact(tmp_path):
    plain = Trainer(_cfg(tmp_path / "p", max_steps=8))
    plain.fit()
    straight = Trainer(_cfg(tmp_path / "a", max_steps=8, cls_augment=True))
    assert straight.loss_cfg.cls_augment and straight.cls_augment is not None
    straight.fit()
    assert not torch.allclose(plain.D.layers[0][0].weight, straight.D.layers[0][0].weight)
    first = Trainer(_cfg(tmp_path / "b", max_steps=8, cls_augment=True))
    first.fit(stop_at=4)
    resumed = Trainer(_cfg(tmp_path / "b", max_steps=8, cls_augment=True, resume=True))
    resumed.fit()
    for (name, a), (_, b) in zip(straight.G.state_dict().items(), resumed.G.state_dict().items()):
        assert torch.allclose(a, b, atol=1e-6), name
    assert load_checkpoint(tmp_path / "b" / "run" / "last.pt")["loss_config"]["cls_augment"] is True


def test_init_from_loads_weights_with_a_fresh_run(tmp_path):
    src = Trainer(_cfg(tmp_path / "src", max_steps=8))
    src.fit()
    warm = Trainer(_cfg(tmp_path / "warm", max_steps=4, init_from=str(tmp_path / "src" / "run" / "last.pt")))
    assert warm.step == 0 and warm.g_updates == 0
    for (name, a), (_, b) in zip(src.G.state_dict().items(), warm.G.state_dict().items()):
        assert torch.equal(a, b), name
    for (name, a), (_, b) in zip(src.G_ema.state_dict().items(), warm.G_ema.state_dict().items()):
        assert torch.equal(a, b), name
    assert torch.equal(src.D.layers[0][0].weight, warm.D.layers[0][0].weight)
    assert not warm.opt_g.state  # fresh optimizer
    cold = Trainer(_cfg(tmp_path / "cold", max_steps=4))
    assert not torch.equal(cold.G_ema.state_dict()[next(iter(cold.G_ema.state_dict()))],
                           src.G_ema.state_dict()[next(iter(src.G_ema.state_dict()))])


def test_init_from_refuses_another_model_and_resume_together(tmp_path):
    src = Trainer(_cfg(tmp_path / "src", max_steps=4))
    src.fit()
    ckpt = str(tmp_path / "src" / "run" / "last.pt")
    with pytest.raises(ValueError, match="different generator"):
        Trainer(_cfg(tmp_path / "w", preset="tiny", conv_dim=16, init_from=ckpt))
    with pytest.raises(ValueError, match="pick one"):
        Trainer(_cfg(tmp_path / "w2", init_from=ckpt, resume=True))


def test_gpu_warmstart_checkpoint_is_small_and_starts_from_the_ema_generator(tmp_path, monkeypatch):
    """``gpu_data warmstart``: EMA G becomes G, D stays, optimizers go; ``--init-from`` reads it."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "experiments"))  # outside the package
    from gpu_data import warmstart
    from gpu_run import slim_checkpoint

    src = Trainer(_cfg(tmp_path / "src", max_steps=8))
    src.fit()
    full = tmp_path / "src" / "run" / "last.pt"
    warmstart(full, tmp_path / "warm.pt")
    ck = load_checkpoint(tmp_path / "warm.pt")
    assert not {"opt_g", "opt_d", "torch_rng", "G_ema"} & set(ck)
    assert (tmp_path / "warm.pt").stat().st_size < full.stat().st_size / 2
    warm = Trainer(_cfg(tmp_path / "warm", max_steps=4, init_from=str(tmp_path / "warm.pt")))
    ema = src.G_ema.state_dict()
    assert any(not torch.equal(v, src.G.state_dict()[k]) for k, v in ema.items())  # EMA differs from live G
    for model in (warm.G, warm.G_ema):
        for k, v in model.state_dict().items():
            assert torch.equal(v, ema[k]), k
    assert torch.equal(warm.D.layers[0][0].weight, src.D.layers[0][0].weight)
    # A slim checkpoint (no D) cannot warm-start a GAN: say so instead of starting D from scratch.
    slim_checkpoint(full, tmp_path / "slim.pt", half=False)
    with pytest.raises(ValueError, match="not a full training checkpoint"):
        warmstart(tmp_path / "slim.pt", tmp_path / "w2.pt")


# -- blur on the classification path and the change's Laplacian penalty ------------------------
def _rows(period: float) -> torch.Tensor:
    """Horizontal stripes: a sine down the rows with the given period in pixels."""
    y = torch.arange(48.0)
    return torch.sin(2 * torch.pi * y / period)[None, None, :, None].expand(1, 1, 48, 48).contiguous()


def test_blur_with_sigma_zero_is_the_identity_and_keeps_the_mean():
    from fexsdk.training.augment import gaussian_blur

    x = _faces()
    assert torch.allclose(gaussian_blur(x, torch.zeros(4)), x, atol=1e-6)
    flat = torch.full((2, 1, 48, 48), 0.3)
    assert torch.allclose(gaussian_blur(flat, torch.tensor([1.0, 2.0])), flat, atol=1e-6)  # reflect: no dark border


def test_blur_removes_thin_stripes_and_keeps_wide_shapes():
    from fexsdk.training.augment import gaussian_blur

    sigma = torch.tensor([1.5])
    thin = gaussian_blur(_rows(4), sigma).std() / _rows(4).std()
    wide = gaussian_blur(_rows(16), sigma).std() / _rows(16).std()
    # A Gaussian's response at period T is exp(-2 (pi sigma / T)^2): 0.062 at T=4, 0.84 at T=16.
    assert thin < 0.15 and wide > 0.8


def test_blur_sigma_is_drawn_per_image_and_is_differentiable():
    x = _faces().requires_grad_(True)
    aug = ClassAugment(max_rotate_deg=0, max_scale=0, max_shift=0, cutout=0, max_blur=2.0)
    torch.manual_seed(0)
    out = aug(x)
    spread = [(out[i] - x[i]).abs().mean().item() for i in range(4)]
    assert len({round(s, 4) for s in spread}) == 4  # each image has its own sigma
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    with pytest.raises(ValueError, match="max_blur"):
        ClassAugment(max_blur=-1)


def test_laplacian_of_an_impulse_and_of_flat_and_linear_maps():
    from fexsdk.training.trainer import laplacian_l1

    impulse = torch.zeros(1, 1, 5, 5)
    impulse[0, 0, 2, 2] = 1.0
    # -4 at the impulse, +1 at its four neighbours: 8 in all over 25 pixels.
    assert laplacian_l1(impulse).item() == pytest.approx(8 / 25)
    assert laplacian_l1(torch.full((1, 1, 6, 6), 0.7)).item() == 0.0
    ramp = torch.arange(6.0)[None, None, None, :].expand(1, 1, 6, 6)
    # A linear ramp has no curvature inside; the replicated edges give +1 and -1 in the first and last columns.
    assert laplacian_l1(ramp).item() == pytest.approx(12 / 36)
    # Thin stripes cost more than wide ones of the same amplitude: what the penalty is for.
    assert laplacian_l1(_rows(4)) > 5 * laplacian_l1(_rows(16))


def test_change_penalty_and_blur_reach_training_and_are_validated(tmp_path):
    t = Trainer(_cfg(tmp_path / "l", max_steps=4, cls_augment=True, cls_blur=1.0, lambda_change_lap=2.0))
    assert t.cls_augment.max_blur == 1.0 and t.loss_cfg.lambda_change_lap == 2.0
    t.fit()
    import csv

    rows = list(csv.DictReader(open(tmp_path / "l" / "run" / "scalars.csv")))
    logged = [float(r["G/loss_change_lap"]) for r in rows if r["G/loss_change_lap"] not in ("", "nan")]
    assert logged and all(v > 0 for v in logged)
    cfg = load_checkpoint(tmp_path / "l" / "run" / "last.pt")["loss_config"]
    assert cfg["cls_blur"] == 1.0 and cfg["lambda_change_lap"] == 2.0
    with pytest.raises(ValueError, match="cls_blur"):
        Trainer(_cfg(tmp_path / "m", max_steps=4, cls_blur=1.0))  # blur without the augmentation


def test_not_target_loss_on_hand_checkable_logits():
    from fexsdk.training.trainer import not_target_loss

    logits = torch.log(torch.tensor([[0.5, 0.25, 0.25], [0.1, 0.1, 0.8]]))
    target = torch.tensor([0, 2])
    # -log(1 - 0.5) and -log(1 - 0.8), averaged.
    expected = (-torch.log(torch.tensor(0.5)) - torch.log(torch.tensor(0.2))) / 2
    assert not_target_loss(logits, target).item() == pytest.approx(expected.item(), rel=1e-6)
    sure = torch.tensor([[30.0, 0.0, 0.0]])  # p_target ~ 1: large but finite
    assert 25 < not_target_loss(sure, torch.tensor([0])).item() < 35


def test_cls_fake_loss_trains_d_and_is_logged(tmp_path):
    t = Trainer(_cfg(tmp_path / "f", max_steps=4, cls_augment=True, lambda_cls_fake=1.0))
    t.fit()
    import csv

    rows = list(csv.DictReader(open(tmp_path / "f" / "run" / "scalars.csv")))
    logged = [float(r["D/loss_cls_fake"]) for r in rows if r["D/loss_cls_fake"] not in ("", "nan")]
    assert logged and all(v > 0 for v in logged)
    plain = Trainer(_cfg(tmp_path / "p", max_steps=4, cls_augment=True))
    plain.fit()
    assert not torch.allclose(plain.D.layers[0][0].weight, t.D.layers[0][0].weight)
    with pytest.raises(ValueError, match="lambda_cls_fake"):
        Trainer(_cfg(tmp_path / "n", max_steps=4, lambda_cls_fake=-1.0))


def test_lambda_rec_override_reaches_the_loss_and_the_checkpoint(tmp_path):
    t = Trainer(_cfg(tmp_path / "r", max_steps=2, lambda_rec=20.0))
    assert t.loss_cfg.lambda_rec == 20.0
    t.fit()
    assert load_checkpoint(tmp_path / "r" / "run" / "last.pt")["loss_config"]["lambda_rec"] == 20.0
    assert Trainer(_cfg(tmp_path / "d", max_steps=2)).loss_cfg.lambda_rec == 10.0  # the preset's
    with pytest.raises(ValueError, match="lambda_rec"):
        Trainer(_cfg(tmp_path / "n", max_steps=2, lambda_rec=-1.0))


def test_focal_cross_entropy_on_hand_checkable_logits():
    import torch.nn.functional as F

    from fexsdk.training.trainer import focal_cross_entropy

    logits = torch.log(torch.tensor([[0.5, 0.25, 0.25], [0.1, 0.1, 0.8]]))
    target = torch.tensor([0, 2])
    assert focal_cross_entropy(logits, target, 0.0).item() == pytest.approx(F.cross_entropy(logits, target).item())
    # gamma 2: (1 - 0.5)^2 * -log 0.5 and (1 - 0.8)^2 * -log 0.8, averaged.
    expected = (0.25 * -math.log(0.5) + 0.04 * -math.log(0.8)) / 2
    assert focal_cross_entropy(logits, target, 2.0).item() == pytest.approx(expected, rel=1e-6)
    # A face already read as its target (p = 0.8) weighs 0.04 / 0.25 = 0.16x what an unsure one does.
    grads = []
    for lg in ([[0.5, 0.25, 0.25]], [[0.1, 0.1, 0.8]]):
        x = torch.log(torch.tensor(lg)).requires_grad_(True)
        focal_cross_entropy(x, torch.tensor([0 if lg[0][0] == 0.5 else 2]), 2.0).backward()
        grads.append(x.grad.abs().sum().item())
    assert grads[1] < 0.2 * grads[0]


def test_cls_focal_reaches_the_loss_and_the_checkpoint(tmp_path):
    t = Trainer(_cfg(tmp_path / "c", max_steps=2, cls_focal=2.0))
    assert t.loss_cfg.cls_focal == 2.0
    t.fit()
    assert load_checkpoint(tmp_path / "c" / "run" / "last.pt")["loss_config"]["cls_focal"] == 2.0
    with pytest.raises(ValueError, match="cls_focal"):
        Trainer(_cfg(tmp_path / "n", max_steps=2, cls_focal=-1.0))


def test_init_from_the_bundled_onnx_takes_its_generator_and_a_fresh_discriminator(tmp_path):
    """Fine-tuning the shipped model: G and EMA G from the ONNX weights, D as a cold start draws it."""
    pytest.importorskip("onnx")
    from fexsdk.training.checkpoint import checkpoint_from_onnx
    from fexsdk.transfer import BUNDLED_DIR

    DEFAULT_MODEL = BUNDLED_DIR / "paint.onnx"  # the model the committed D was trained against

    kw = dict(preset="fex-small-bilinear-wgan-clean", max_steps=2, n_critic=1, batch_size=8)
    warm = Trainer(_cfg(tmp_path / "warm", init_from=str(DEFAULT_MODEL), d_warmup=2, **kw))
    cold = Trainer(_cfg(tmp_path / "cold", **kw))
    shipped = checkpoint_from_onnx(DEFAULT_MODEL)["G"]
    for name, w in shipped.items():
        assert torch.equal(warm.G.state_dict()[name], w), name
        assert torch.equal(warm.G_ema.state_dict()[name], w), name
    assert not torch.equal(cold.G.state_dict()["head.weight"], shipped["head.weight"])
    for (name, a), (_, b) in zip(warm.D.state_dict().items(), cold.D.state_dict().items()):
        assert torch.equal(a, b), name


def test_d_warmup_trains_only_d_then_g(tmp_path):
    run = Trainer(_cfg(tmp_path, max_steps=8, d_warmup=4))
    g0 = {k: v.clone() for k, v in run.G.state_dict().items()}
    ema0 = {k: v.clone() for k, v in run.G_ema.state_dict().items()}
    d0 = run.D.layers[0][0].weight.clone()
    run.fit(stop_at=4)
    assert run.g_updates == 0
    assert all(torch.equal(run.G.state_dict()[k], v) for k, v in g0.items())
    assert all(torch.equal(run.G_ema.state_dict()[k], v) for k, v in ema0.items())
    assert not torch.equal(run.D.layers[0][0].weight, d0)
    run.fit()
    assert run.g_updates == 2  # steps 4..7 with n_critic 2
    assert not torch.equal(run.G.state_dict()["head.weight"], g0["head.weight"])
    with pytest.raises(ValueError, match="d_warmup"):
        _cfg(tmp_path / "bad", d_warmup=-1).validate()


def test_init_discriminator_restores_a_saved_d_beside_an_onnx_generator(tmp_path):
    """The D saved next to a shipped model comes back exactly, so a fine-tune of the ONNX starts warm."""
    pytest.importorskip("onnx")
    from fexsdk.export.onnx_export import export_onnx
    from fexsdk.training.checkpoint import load_discriminator, save_discriminator
    from fexsdk.transfer import BUNDLED_DIR

    DEFAULT_MODEL = BUNDLED_DIR / "paint.onnx"  # the model the committed D was trained against

    src = Trainer(_cfg(tmp_path / "src", max_steps=4))
    src.fit()
    ckpt = load_checkpoint(tmp_path / "src" / "run" / "last.pt")
    onnx_path = tmp_path / "g.onnx"
    export_onnx(str(tmp_path / "src" / "run" / "last.pt"), onnx_path)
    d_file = save_discriminator(ckpt, tmp_path / "d.safetensors")
    config, state = load_discriminator(d_file)
    assert config == ckpt["discriminator_config"]

    warm = Trainer(_cfg(tmp_path / "warm", max_steps=2, init_from=str(onnx_path), init_discriminator=str(d_file)))
    cold = Trainer(_cfg(tmp_path / "cold", max_steps=2, init_from=str(onnx_path)))
    for name, w in ckpt["D"].items():
        assert torch.equal(warm.D.state_dict()[name], w), name
    assert not torch.equal(cold.D.layers[0][0].weight, warm.D.layers[0][0].weight)
    for name, w in ckpt["G_ema"].items():
        assert torch.equal(warm.G_ema.state_dict()[name], w), name

    with pytest.raises(ValueError, match="goes with init_from"):
        _cfg(tmp_path / "alone", init_discriminator=str(d_file)).validate()
    with pytest.raises(ValueError, match="different discriminator"):
        Trainer(_cfg(tmp_path / "wide", preset="fex-small-bilinear-wgan-clean", max_steps=2,
                     init_from=str(DEFAULT_MODEL), init_discriminator=str(d_file)))
    with pytest.raises(ValueError, match="no discriminator_config"):
        from safetensors.torch import save_file
        save_file({"w": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
        load_discriminator(tmp_path / "other.safetensors")
    with pytest.raises(ValueError, match="holds no discriminator"):
        save_discriminator({"G": {}}, tmp_path / "x.safetensors")


def test_turning_the_class_augmentation_off_turns_its_blur_off_too(tmp_path):
    run = Trainer(TrainConfig(preset="fex-small-believable-flow", synthetic=16, out=str(tmp_path / "run"),
                              batch_size=4, max_steps=1, progress=False, threads=1, cls_augment=False))
    assert run.cls_augment is None and run.loss_cfg.cls_blur == 0.0
    with pytest.raises(ValueError, match="needs cls_augment"):
        Trainer(TrainConfig(preset="fex-small-believable-flow", synthetic=16, out=str(tmp_path / "b"),
                            batch_size=4, max_steps=1, progress=False, threads=1, cls_augment=False, cls_blur=1.0))
