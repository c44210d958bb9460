"""Generator/discriminator shapes for every preset, and test-time dropout behaviour."""

import pytest

torch = pytest.importorskip("torch")

from fexsdk.training.models import Discriminator, DiscriminatorConfig, Generator, GeneratorConfig  # noqa: E402
from fexsdk.training.presets import get_preset, list_presets  # noqa: E402


def _label(n, k=3, dim=7):
    lab = torch.zeros(n, dim)
    lab[:, k] = 1
    return lab


@pytest.mark.parametrize("name", list_presets())
@pytest.mark.parametrize("size,channels", [(48, 1), (128, 3)])
def test_every_preset_shapes(name, size, channels):
    preset = get_preset(name)
    cfg = GeneratorConfig(**{**preset.generator.__dict__, "image_size": size, "in_channels": channels})
    if cfg.flow_cell and size % cfg.flow_cell:  # e.g. 6-px cells at 128: refused, saying why
        with pytest.raises(ValueError, match=f"flow_cell must be 0 or divide image_size {size}"):
            Generator(**cfg.__dict__)
        return
    G = Generator(**cfg.__dict__)
    D = Discriminator(in_channels=channels, image_size=size, conv_dim=preset.d_conv_dim)
    x = torch.rand(2, channels, size, size) * 2 - 1
    with torch.no_grad():
        y = G(x, _label(2))
        src, cls, feats = D(y, return_features=True)
    assert y.shape == x.shape
    assert float(y.abs().max()) <= 1.0
    assert cls.shape == (2, 7)
    assert src.shape[:2] == (2, 1)
    assert len(feats) == 4


def test_discriminator_depth_follows_image_size():
    assert DiscriminatorConfig(image_size=48).depth() == 4
    assert DiscriminatorConfig(image_size=128).depth() == 6
    assert DiscriminatorConfig(image_size=64).depth() == 5


def test_dropout_stays_on_in_eval_mode():
    G = Generator(conv_dim=8, n_res=2, dropout_at=["residual"], leaky_relu=True).eval()
    x = torch.rand(1, 1, 48, 48) * 2 - 1
    with torch.no_grad():
        a, b = G(x, _label(1)), G(x, _label(1))
    assert not torch.allclose(a, b), "dropout must stay active after G.eval()"


def test_given_noise_makes_output_deterministic_and_ones_equal_no_dropout():
    torch.manual_seed(0)
    G = Generator(conv_dim=8, n_res=2, dropout_at=["first", "last", "residual"], leaky_relu=True).eval()
    x = torch.rand(2, 1, 48, 48) * 2 - 1
    noise = (torch.rand(2, G.noise_size()) >= 0.5).float()
    with torch.no_grad():
        assert torch.equal(G(x, _label(2), noise), G(x, _label(2), noise))
        ones = G(x, _label(2), torch.ones(2, G.noise_size()))
        # A copy of G with no dropout sites is what PyTorch eval-mode dropout computes.
        plain = Generator(conv_dim=8, n_res=2, leaky_relu=True)
        plain.load_state_dict(G.state_dict())
        assert torch.allclose(ones, plain(x, _label(2)), atol=1e-6)


def test_instance_norm_has_no_running_stats_and_train_equals_eval():
    G = Generator(conv_dim=8, n_res=1)
    norms = [m for m in G.modules() if isinstance(m, torch.nn.InstanceNorm2d)]
    assert norms and all(not m.track_running_stats for m in norms)
    x = torch.rand(3, 1, 48, 48) * 2 - 1
    with torch.no_grad():
        train_out = G.train()(x, _label(3))
        eval_out = G.eval()(x, _label(3))
    assert torch.allclose(train_out, eval_out)


def test_generator_output_depends_on_label():
    torch.manual_seed(0)
    G = Generator(conv_dim=8, n_res=1)
    x = torch.rand(1, 1, 48, 48) * 2 - 1
    with torch.no_grad():
        assert not torch.allclose(G(x, _label(1, 0)), G(x, _label(1, 5)))


def test_input_skip_starts_near_identity_direction():
    G = Generator(conv_dim=8, n_res=1, input_skip=True)
    x = torch.rand(1, 1, 48, 48) * 2 - 1
    with torch.no_grad():
        y = G(x, _label(1))
    assert y.shape == x.shape and float(y.abs().max()) <= 1.0
    # The residual is tanh-bounded, so the output stays correlated with the input at init.
    assert torch.corrcoef(torch.stack([x.flatten(), y.flatten()]))[0, 1] > 0.5


def test_bad_generator_config():
    with pytest.raises(ValueError, match="dropout position"):
        Generator(dropout_at=["middle"])
    with pytest.raises(ValueError, match="in_channels"):
        Generator(in_channels=2)
    with pytest.raises(ValueError, match="unknown preset"):
        get_preset("stargan2")
