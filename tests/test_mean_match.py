"""Class-mean matching (``--lambda-mean-match``): values, gradients, and its place in training."""

import pytest

torch = pytest.importorskip("torch")

from fexsdk.training.checkpoint import load_checkpoint  # noqa: E402
from fexsdk.training.mean_match import ClassMeanMatch, class_means  # noqa: E402
from fexsdk.training.trainer import TrainConfig, Trainer  # noqa: E402


def _cfg(tmp_path, **kw):
    base = dict(preset="tiny", synthetic=64, out=str(tmp_path / "run"), batch_size=4, n_critic=2, log_every=2,
                sample_every=1000, ckpt_every=4, progress=False, threads=1)
    base.update(kw)
    return TrainConfig(**base)


def test_class_means_on_hand_checkable_images():
    images = torch.tensor([1.0, 3.0, -2.0, 5.0]).view(4, 1, 1, 1).expand(4, 1, 2, 2)
    labels = torch.tensor([0, 0, 2, 2])
    means, counts = class_means(images, labels, 3)
    assert counts.tolist() == [2, 0, 2]
    assert torch.equal(means[:, 0, 0, 0], torch.tensor([2.0, 0.0, 1.5]))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        class_means(images, torch.tensor([0, 1, 2, 3]), 3)


def test_loss_value_is_the_running_means_distance_and_gradient_moves_fakes_toward_the_real_mean():
    real = torch.zeros(2, 1, 1, 2)
    mm = ClassMeanMatch(real, torch.tensor([True, True]), decay=0.5)
    mm.start(torch.tensor([[[[1.0, 0.0]]], [[[0.0, 0.0]]]]))
    fake = torch.tensor([[[[3.0, 0.0]]], [[[1.0, 2.0]]]], requires_grad=True)
    loss = mm.loss(fake, torch.tensor([0, 0]))  # class 0 only; batch mean (2, 1)
    # running mean of class 0: 0.5 * (1, 0) + 0.5 * (2, 1) = (1.5, 0.5); loss = (1.5^2 + 0.5^2) / 2
    assert torch.allclose(mm.fake[0].flatten(), torch.tensor([1.5, 0.5]))
    assert torch.equal(mm.fake[1], torch.zeros(1, 1, 2))  # absent target: unchanged
    assert loss.item() == pytest.approx(1.25)
    loss.backward()
    # d/d fake_i = 2 * (running - real) / 2 pixels / 2 faces in the batch mean
    expected = torch.tensor([0.75, 0.25]).expand(2, 2)
    assert torch.allclose(fake.grad.view(2, 2), expected)


def test_a_pattern_real_faces_share_costs_nothing_and_an_unknown_class_is_left_alone():
    torch.manual_seed(0)
    real = torch.randn(3, 1, 4, 4)
    mm = ClassMeanMatch(real, torch.tensor([True, True, False]))
    mm.start(real.clone())
    fake = real[[0, 1, 2, 2]].clone().requires_grad_(True)
    fake.data[2:] += 5.0  # far from class 2's mean, but class 2 has no real faces
    loss = mm.loss(fake, torch.tensor([0, 1, 2, 2]))
    loss.backward()
    assert loss.item() == pytest.approx(0.0, abs=1e-10)
    assert torch.count_nonzero(fake.grad) == 0


def test_bad_arguments_are_value_errors():
    with pytest.raises(ValueError, match="decay"):
        ClassMeanMatch(torch.zeros(2, 1, 2, 2), torch.ones(2, dtype=torch.bool), decay=1.0)
    mm = ClassMeanMatch(torch.zeros(2, 1, 2, 2), torch.ones(2, dtype=torch.bool))
    with pytest.raises(ValueError, match="fake_means must have shape"):
        mm.start(torch.zeros(3, 1, 2, 2))
    with pytest.raises(RuntimeError, match="start"):
        mm.loss(torch.zeros(1, 1, 2, 2), torch.tensor([0]))


def test_mean_match_trains_is_logged_and_resumes_exactly(tmp_path):
    straight = Trainer(_cfg(tmp_path / "a", max_steps=8, lambda_mean_match=100.0))
    assert straight.loss_cfg.lambda_mean_match == 100.0 and len(straight.mean_match) == 1
    start = straight.mean_match[0].fake.clone()
    straight.fit()
    assert not torch.equal(start, straight.mean_match[0].fake)  # the running mean followed G
    plain = Trainer(_cfg(tmp_path / "p", max_steps=8))
    plain.fit()
    # Same seed and data: only the loss differs (the first estimate does not touch training's RNG).
    assert not all(torch.equal(a, b) for a, b in zip(plain.G.parameters(), straight.G.parameters()))
    first = Trainer(_cfg(tmp_path / "b", max_steps=8, lambda_mean_match=100.0))
    first.fit(stop_at=4)
    resumed = Trainer(_cfg(tmp_path / "b", max_steps=8, lambda_mean_match=100.0, resume=True))
    resumed.fit()
    for (name, a), (_, b) in zip(straight.G.state_dict().items(), resumed.G.state_dict().items()):
        assert torch.allclose(a, b, atol=1e-6), name
    assert torch.allclose(straight.mean_match[0].fake, resumed.mean_match[0].fake, atol=1e-6)
    ckpt = load_checkpoint(tmp_path / "b" / "run" / "last.pt")
    assert ckpt["loss_config"]["lambda_mean_match"] == 100.0 and ckpt["mean_match_fake"] is not None
    log = (tmp_path / "b" / "run" / "scalars.csv").read_text().splitlines()
    assert "G/loss_mean_match" in log[0]
    with pytest.raises(ValueError, match="lambda_mean_match"):
        Trainer(_cfg(tmp_path / "n", max_steps=2, lambda_mean_match=-1.0))
