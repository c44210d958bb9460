"""Warp-head generators (issue 13): identity at zero flow, ONNX outputs, metadata that lacks outputs."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from fexsdk.metadata import ModelMetadata  # noqa: E402
from fexsdk.training.models import Generator, identity_grid, warp  # noqa: E402


def test_zero_flow_gives_back_the_input_at_48x48():
    x = torch.rand(3, 1, 48, 48) * 2 - 1
    out = warp(x, torch.zeros(3, 2, 48, 48), identity_grid(48))
    assert torch.allclose(out, x, atol=1e-5)


def test_zero_flow_and_zero_mask_through_the_generator():
    G = Generator(conv_dim=8, n_res=1, output="warp", upsample="nearest")
    with torch.no_grad():
        G.head.weight.zero_()
        G.head.bias.zero_()
        G.head.bias[-1] = -1e4  # mask = sigmoid(-1e4) = 0
        x = torch.rand(2, 1, 48, 48) * 2 - 1
        p = G.forward_parts(x, torch.eye(7)[:2])
    assert torch.allclose(p.flow, torch.zeros_like(p.flow))
    assert float(p.mask.max()) == 0.0
    assert torch.allclose(p.image, x, atol=1e-5)


def test_a_constant_flow_shifts_by_the_expected_pixels_at_48x48():
    x = torch.zeros(1, 1, 48, 48)
    x[..., 20:24, 20:24] = 1.0
    flow = torch.zeros(1, 2, 48, 48)
    flow[:, 0] = 4 / 24  # 4 px at 48: output(p) = input(p + 4)
    out = warp(x, flow, identity_grid(48))
    cols = torch.nonzero(out[0, 0, 21] > 0.5).flatten()
    assert cols.min().item() == 16 and cols.max().item() == 19


def test_control_grid_flow_is_bounded_smooth_and_fold_free():
    """flow_cell: the flow is the bilinear upsampling of a k x k grid, so the warp cannot fold."""
    G = Generator(conv_dim=8, n_res=1, output="warp", paint=False, upsample="nearest", flow_cell=8, max_flow=0.16)
    with torch.no_grad():
        G.head.weight.normal_(0, 50.0)  # saturate tanh: neighbouring control points at +-max_flow
        p = G.forward_parts(torch.rand(4, 1, 48, 48) * 2 - 1, torch.eye(7)[:4])
    flow_px = p.flow * 24
    assert float(flow_px.abs().max()) <= 0.16 * 24 + 1e-4
    assert float(flow_px.abs().max()) > 0.5 * 0.16 * 24  # it does move
    # Sampling positions x + flow_x must increase along x (and y + flow_y along y): no folding.
    assert float((1 + flow_px[:, 0, :, 1:] - flow_px[:, 0, :, :-1]).min()) > 0
    assert float((1 + flow_px[:, 1, 1:, :] - flow_px[:, 1, :-1, :]).min()) > 0
    # At most one bend every 8 px: second differences vanish inside each control cell's half.
    per_pixel = Generator(conv_dim=8, n_res=1, output="warp", paint=False, upsample="nearest")
    per_pixel.load_state_dict(G.state_dict())
    with torch.no_grad():
        raw = per_pixel.forward_parts(torch.rand(4, 1, 48, 48) * 2 - 1, torch.eye(7)[:4]).flow
    assert float((raw[..., 1:] - raw[..., :-1]).abs().mean()) > float((p.flow[..., 1:] - p.flow[..., :-1]).abs().mean())


def test_flow_cell_must_divide_the_image_size():
    with pytest.raises(ValueError, match="flow_cell must be 0 or divide"):
        Generator(conv_dim=8, n_res=1, output="warp", flow_cell=5)
    with pytest.raises(ValueError, match="max_flow must be in"):
        Generator(conv_dim=8, n_res=1, output="warp", max_flow=0.0)


@pytest.mark.parametrize("paint", [True, False])
def test_warp_generator_exports_all_outputs_with_parity(tmp_path, paint):
    from fexsdk.export.onnx_export import export_onnx
    from fexsdk.training.checkpoint import save_checkpoint
    from fexsdk.training.models import config_dict

    G = Generator(conv_dim=8, n_res=1, output="warp", paint=paint, upsample="nearest",
                  dropout_at=["residual"], unet_skips=True, leaky_relu=True, flow_cell=0 if paint else 8)
    ckpt = tmp_path / "warp.pt"
    save_checkpoint(ckpt, {"generator_config": config_dict(G), "G": G.state_dict(), "preset": "test-warp"})
    report = export_onnx(ckpt, tmp_path / "warp.onnx")
    assert report.metadata.outputs == ["output", "flow", "residual", "mask"] and report.metadata.is_warp
    assert report.max_abs_diff < 1e-4


def test_metadata_missing_warp_outputs_is_refused():
    with pytest.raises(ValueError, match="warp model needs outputs"):
        ModelMetadata(outputs=["output", "flow"]).validate()
    with pytest.raises(ValueError, match="must include 'output'"):
        ModelMetadata(outputs=["flow", "residual", "mask"]).validate()
    ModelMetadata(outputs=["output"]).validate()


def test_total_variation_on_hand_checkable_maps():
    from fexsdk.training.trainer import total_variation

    stripes = torch.tensor([[0.0, 1.0], [0.0, 1.0]]).view(1, 1, 2, 2)
    assert total_variation(stripes).item() == pytest.approx(1.0)  # rows equal; each row steps by 1
    dot = torch.zeros(1, 1, 3, 3)
    dot[..., 1, 1] = 1.0
    assert total_variation(dot).item() == pytest.approx(2 / 6 + 2 / 6)  # 2 of 6 neighbour pairs each way


def test_every_control_grid_preset_is_fold_free():
    from fexsdk.training.presets import get_preset, list_presets

    grids = [get_preset(n).generator for n in list_presets() if get_preset(n).generator.flow_cell]
    assert grids, "no control-grid preset left to check"
    for g in grids:
        assert g.max_flow < g.flow_cell / g.image_size


def test_mask_smoothness_is_trained_and_logged(tmp_path):
    from fexsdk.training.trainer import TrainConfig, Trainer

    t = Trainer(TrainConfig(preset="fex-small-softwarp", synthetic=32, out=str(tmp_path), batch_size=4,
                            max_steps=2, precision="fp32", threads=1, progress=False, conv_dim=8, n_res=1))
    assert t.loss_cfg.lambda_mask_tv > 0
    logs = t.train_step()
    assert np.isfinite(logs["G/loss_mask_tv"]) and logs["G/loss_mask_tv"] > 0
