"""The believability priors on hand-made flow fields (training/flow_priors.py)."""

import pytest

torch = pytest.importorskip("torch")

from fexsdk.emotions import EMOTIONS  # noqa: E402
from fexsdk.training import flow_priors as priors  # noqa: E402
from fexsdk.training.models import Generator  # noqa: E402
from fexsdk.training.presets import get_preset  # noqa: E402
from fexsdk.training.trainer import load_generator_weights  # noqa: E402

S = 48


def field(fx, fy) -> torch.Tensor:
    """A (1, 2, S, S) pixel flow from functions of the pixel grid (x, y)."""
    r = torch.arange(S, dtype=torch.float32)
    yy, xx = torch.meshgrid(r, r, indexing="ij")
    return torch.stack([fx(xx, yy), fy(xx, yy)])[None]


def test_translation_keeps_area_everywhere():
    flow = field(lambda x, y: torch.full_like(x, 1.5), lambda x, y: torch.full_like(x, -0.7))
    assert torch.allclose(priors.jacobian_det(flow), torch.ones(1, 1, S - 1, S - 1))
    assert priors.area_loss(flow, priors.prior_maps(S).mouth).item() == pytest.approx(0.0, abs=1e-10)


def test_squash_changes_area():
    # u = -0.2 (x - 24): the sampled x range shrinks by 20%, a horizontal squash.
    flow = field(lambda x, y: -0.2 * (x - 24), lambda x, y: torch.zeros_like(x))
    det = priors.jacobian_det(flow)
    assert torch.allclose(det, torch.full_like(det, 0.8))
    assert priors.area_loss(flow, priors.prior_maps(S).mouth).item() > 0.02


def test_still_points_charge_moving_the_nose_not_the_brows():
    maps = priors.prior_maps(S)
    nose = field(lambda x, y: torch.exp(-((x - 24) ** 2 + (y - 25) ** 2) / 8), lambda x, y: torch.zeros_like(x))
    brow_lift = field(lambda x, y: torch.zeros_like(x), lambda x, y: -torch.exp(-((x - 14) ** 2 + (y - 12) ** 2) / 8))
    assert priors.still_loss(nose, maps.still) > 20 * priors.still_loss(brow_lift, maps.still)


def test_symmetry():
    ones = torch.ones(1)
    # Both mouth corners pulled outwards (a smile): dx = +1 on the right half, -1 on the left.
    symmetric = field(lambda x, y: torch.sign(x - 23.5), lambda x, y: torch.zeros_like(x))
    assert priors.symmetry_loss(symmetric, ones).item() == pytest.approx(0.0, abs=1e-7)
    one_sided = field(lambda x, y: (x > 23.5).float(), lambda x, y: torch.zeros_like(x))
    assert priors.symmetry_loss(one_sided, ones).item() > 0.4
    weights = priors.symmetry_weights(torch.tensor([EMOTIONS.index("disgust"), EMOTIONS.index("happy")]))
    assert weights[0] < weights[1] == 1.0


def test_shading_charges_broad_paint_more_than_fine_paint():
    broad = torch.full((1, 1, S, S), 0.1)
    fine = torch.zeros(1, 1, S, S)
    fine[..., ::2, ::2] = 0.4  # the same mean |paint|
    assert priors.paint_loss(broad, torch.zeros(1, 1, S, S)) == pytest.approx(priors.paint_loss(fine, torch.zeros(1, 1, S, S)))
    assert priors.shading_loss(broad, 2.0) > 0.9 * 0.1
    assert priors.shading_loss(fine, 2.0) == pytest.approx(0.1, rel=0.1)  # blurred to its mean: paint still costs
    blob = torch.zeros(1, 1, S, S)
    blob[..., 10:14, 10:14] = 1.0
    assert priors.shading_loss(blob, 2.0) < priors.paint_loss(blob, torch.zeros(1, 1, S, S)) * 1.01


def test_mouth_paint_is_cheaper():
    maps = priors.prior_maps(S)
    mouth, cheek = torch.zeros(1, 1, S, S), torch.zeros(1, 1, S, S)
    mouth[..., 34:38, 22:26] = 1.0
    cheek[..., 24:28, 6:10] = 1.0
    assert priors.paint_loss(mouth, maps.mouth) < 0.5 * priors.paint_loss(cheek, maps.mouth)


def test_flow_only_weights_warm_start_a_painting_head():
    paint = Generator(**vars(get_preset("fex-small-believable").generator))
    cfg = vars(get_preset("fex-small-believable").generator).copy()
    cfg["paint"] = False
    flow_only = Generator(**cfg)
    before = paint.head.weight[2:].clone()
    load_generator_weights(paint, flow_only.state_dict())
    assert torch.equal(paint.head.weight[:2], flow_only.head.weight)
    assert torch.equal(paint.head.weight[2:], before)
    assert paint.head.bias[-1].item() == -3.0  # the mask starts closed: "little paint"


def test_mouth_region_head_cannot_paint_over_eyes_or_brows():
    """paint_region="mouth": even a head whose mask is fully open paints only between the lips."""
    G = Generator(**vars(get_preset("fex-small-believable-mouth").generator))
    with torch.no_grad():
        G.head.bias[-1] = 20.0  # sigmoid -> 1: the mask wants to paint everywhere
        G.head.bias[2] = 20.0  # painted image white
    x = torch.full((1, 1, S, S), -1.0)
    parts = G.forward_parts(x, torch.eye(7)[:1])
    (ex, ey), _ = priors.FER_EYES
    mx = sum(p[0] for p in priors.FER_MOUTH_CORNERS) / 2
    my = sum(p[1] for p in priors.FER_MOUTH_CORNERS) / 2
    assert parts.mask[0, 0, int(my), int(mx)] > 0.9
    assert parts.mask[0, 0, : int(ey) + 2].max() < 1e-3  # eyes, brows, forehead
    assert parts.residual[0, 0, : int(ey) + 2].abs().max() < 2e-3


def test_paint_region_needs_a_painting_warp_head():
    cfg = vars(get_preset("fex-small-believable-flow").generator).copy()
    cfg["paint_region"] = "mouth"
    with pytest.raises(ValueError, match="painting warp head"):
        Generator(**cfg)
    cfg["paint"], cfg["paint_region"] = True, "lips"
    with pytest.raises(ValueError, match="allowed"):
        Generator(**cfg)


def test_the_bundled_flow_only_default_warm_starts_the_mouth_painting_preset(tmp_path):
    """--init-from fexsdk/models/default.onnx with fex-small-believable-mouth: flow weights kept, paint closed."""
    pytest.importorskip("onnx")
    from fexsdk.training.checkpoint import checkpoint_from_onnx
    from fexsdk.training.trainer import TrainConfig, Trainer
    from fexsdk.transfer import BUNDLED_DIR

    src = BUNDLED_DIR / "default.onnx"
    cfg = TrainConfig(preset="fex-small-believable-mouth", synthetic=16, out=str(tmp_path / "run"), batch_size=4,
                      max_steps=1, progress=False, threads=1, init_from=str(src))
    run = Trainer(cfg)
    flow = checkpoint_from_onnx(src)["G"]["head.weight"]
    assert torch.equal(run.G.head.weight[:2], flow)
    assert run.G.head.bias[-1].item() == -3.0


def test_a_warm_start_may_change_the_flow_grid_and_keeps_every_weight(tmp_path, capsys):
    """The control grid and reach hold no weights: fex-small-believable-reach starts from the 4-px default."""
    pytest.importorskip("onnx")
    from fexsdk.training.checkpoint import checkpoint_from_onnx
    from fexsdk.training.trainer import TrainConfig, Trainer
    from fexsdk.transfer import BUNDLED_DIR

    src = BUNDLED_DIR / "default.onnx"
    run = Trainer(TrainConfig(preset="fex-small-believable-reach", synthetic=16, out=str(tmp_path / "run"),
                              batch_size=4, max_steps=1, progress=False, threads=1, init_from=str(src)))
    saved = checkpoint_from_onnx(src)["G"]
    assert all(torch.equal(v, saved[k]) for k, v in run.G.state_dict().items() if k in saved)
    assert (run.G.config.flow_cell, run.G.config.max_flow) == (6, 0.12)
    printed = capsys.readouterr().out
    assert "flow_cell': 6" in printed
    assert "paint channels" not in printed  # flow-only to flow-only: nothing to open or close


def test_paint_penalty_weights_can_be_set_per_run(tmp_path):
    from fexsdk.training.trainer import TrainConfig, Trainer

    kw = dict(preset="fex-small-believable-mouth", synthetic=16, batch_size=4, max_steps=1, progress=False, threads=1)
    run = Trainer(TrainConfig(out=str(tmp_path / "a"), lambda_paint=5.0, lambda_shading=30.0, lambda_still=7.0, **kw))
    assert (run.loss_cfg.lambda_paint, run.loss_cfg.lambda_shading, run.loss_cfg.lambda_still) == (5.0, 30.0, 7.0)
    preset = Trainer(TrainConfig(out=str(tmp_path / "b"), **kw))
    assert (preset.loss_cfg.lambda_paint, preset.loss_cfg.lambda_shading) == (2.0, 8.0)


def test_paint_for_targets_that_do_not_open_the_mouth_can_cost_more():
    """paint_others: the same paint costs X times more for sad than for surprise (which needs a dark mouth gap)."""
    idx = {name: i for i, name in enumerate(EMOTIONS)}
    targets = torch.tensor([idx["surprise"], idx["sad"]])
    w = priors.paint_weights(targets, others=4.0)
    assert w.tolist() == [1.0, 4.0]
    maps = priors.prior_maps(S)
    res = torch.zeros(2, 1, S, S)
    res[:, :, 34:38, 20:28] = -0.5
    per_face = [priors.paint_loss(res[i : i + 1], maps.mouth).item() for i in range(2)]
    weighted = priors.paint_loss(res, maps.mouth, weights=w).item()
    assert weighted == pytest.approx((1.0 * per_face[0] + 4.0 * per_face[1]) / 2, rel=1e-5)
    assert priors.shading_loss(res, 2.0, weights=torch.ones(2)).item() == pytest.approx(priors.shading_loss(res, 2.0).item())


def _open_mask_head(preset: str, **overrides) -> Generator:
    """A generator of ``preset`` whose mask is fully open and whose paint is white: it paints wherever it may."""
    G = Generator(**{**vars(get_preset(preset).generator), **overrides})
    with torch.no_grad():
        G.head.bias[-1] = 20.0
        G.head.bias[2] = 20.0
    return G


def test_only_the_paint_targets_can_paint():
    """paint_targets=("surprise",): a fully open mask paints for surprise and not at all for the six others."""
    G = _open_mask_head("fex-small-believable-surprise")
    x = torch.full((7, 1, S, S), -1.0)
    parts = G.forward_parts(x, torch.eye(7))
    painted = parts.residual.abs().flatten(1).amax(1)
    s = EMOTIONS.index("surprise")
    assert painted[s] > 0.5
    assert torch.all(painted[torch.arange(7) != s] == 0)
    # A blend half-way to surprise paints half as much (strength and soft labels stay linear in the gate).
    half = G.forward_parts(x[:1], 0.5 * torch.eye(7)[s : s + 1] + 0.5 * torch.eye(7)[:1])
    assert half.mask.max().item() == pytest.approx(0.5 * parts.mask[s].max().item(), rel=1e-4)


def test_paint_targets_gate_every_domain_of_a_mask_vector_label():
    from fexsdk.metadata import label_dim_for, label_layout

    G = _open_mask_head("fex-small-believable-surprise", label_dim=label_dim_for(7, 2),
                        paint_targets=("surprise", "fear"))
    x = torch.full((7, 1, S, S), -1.0)
    for domain in (0, 1):
        label = torch.from_numpy(label_layout(torch.eye(7).numpy(), domain, 2))
        painted = G.forward_parts(x, label).residual.abs().flatten(1).amax(1)
        may = [EMOTIONS.index("surprise"), EMOTIONS.index("fear")]
        assert all(painted[i] > 0.5 for i in may)
        assert all(painted[i] == 0 for i in range(7) if i not in may)


def test_paint_targets_are_checked_and_survive_a_saved_config():
    from fexsdk.training.models import GeneratorConfig

    cfg = vars(get_preset("fex-small-believable-surprise").generator).copy()
    with pytest.raises(ValueError, match="allowed"):
        Generator(**{**cfg, "paint_targets": ("astonished",)})
    with pytest.raises(ValueError, match="painting warp head"):
        Generator(**{**cfg, "paint": False, "paint_region": "", "paint_targets": ("surprise",)})
    saved = {**cfg, "paint_targets": ["surprise"]}  # as JSON gives it back
    assert GeneratorConfig.from_saved(saved).paint_targets == ("surprise",)
    old = {k: v for k, v in cfg.items() if k != "paint_targets"}  # written before paint_targets existed
    assert GeneratorConfig.from_saved(old).paint_targets == ()


def test_paint_targets_can_be_set_per_run_and_warm_start_from_a_flow_only_head(tmp_path):
    pytest.importorskip("onnx")
    from fexsdk.training.trainer import TrainConfig, Trainer
    from fexsdk.transfer import BUNDLED_DIR

    run = Trainer(TrainConfig(preset="fex-small-believable-surprise", synthetic=16, out=str(tmp_path / "run"),
                              batch_size=4, max_steps=1, progress=False, threads=1,
                              init_from=str(BUNDLED_DIR / "default.onnx"), paint_targets=("surprise", "fear")))
    assert run.G.config.paint_targets == ("surprise", "fear")
    assert run.G.head.bias[-1].item() == -3.0


def test_broad_shading_of_the_whole_change_is_charged_and_logged(tmp_path):
    """lambda_change_shading: a flow-only head (no paint to charge) still pays for what its movements shade."""
    import csv

    from fexsdk.training.presets import LossConfig
    from fexsdk.training.trainer import TrainConfig, Trainer

    with pytest.raises(ValueError, match="must be >= 0"):
        LossConfig(lambda_change_shading=-1.0).validate()
    kw = dict(preset="fex-small-believable-shade", synthetic=16, batch_size=4, max_steps=2, progress=False,
              threads=1, log_every=1)
    run = Trainer(TrainConfig(out=str(tmp_path / "a"), **kw))
    assert run.loss_cfg.lambda_change_shading == 30.0 and not run.G.config.paint
    run.fit()
    rows = list(csv.DictReader((tmp_path / "a" / "scalars.csv").open()))
    assert float(rows[-1]["G/loss_change_shading"]) > 0
    off = Trainer(TrainConfig(out=str(tmp_path / "b"), lambda_change_shading=0.0, **kw))
    assert off.loss_cfg.lambda_change_shading == 0.0
