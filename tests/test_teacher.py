"""A frozen teacher classifier in G's loss (training/teacher.py): never the scoring classifier, never trained."""

import csv

import pytest

torch = pytest.importorskip("torch")

from fexsdk.training.checkpoint import save_checkpoint  # noqa: E402
from fexsdk.training.classifier import ResNet18  # noqa: E402
from fexsdk.training.teacher import SCORING_CLASSIFIER, load_teacher, teacher_loss  # noqa: E402
from fexsdk.training.trainer import TrainConfig, Trainer  # noqa: E402


def tiny_teacher(path, seed=0, image_size=48):
    torch.manual_seed(seed)
    model = ResNet18(width=4, image_size=image_size)
    save_checkpoint(path, {"classifier_config": model.config.__dict__, "model": model.state_dict()})
    return model


def test_the_scoring_classifier_is_refused_as_a_teacher():
    if not SCORING_CLASSIFIER.is_file():
        pytest.skip("the committed scoring classifier is absent")
    with pytest.raises(ValueError, match="scoring classifier"):
        load_teacher(SCORING_CLASSIFIER, 48, 1)


def test_a_copy_of_the_scoring_weights_is_refused_too(tmp_path):
    tiny_teacher(tmp_path / "judge.pt", seed=0)
    tiny_teacher(tmp_path / "copy.pt", seed=0)
    tiny_teacher(tmp_path / "other.pt", seed=1)
    with pytest.raises(ValueError, match="scoring classifier"):
        load_teacher(tmp_path / "copy.pt", 48, 1, scoring=tmp_path / "judge.pt")
    teacher = load_teacher(tmp_path / "other.pt", 48, 1, scoring=tmp_path / "judge.pt")
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())


def test_a_teacher_for_other_images_is_refused(tmp_path):
    tiny_teacher(tmp_path / "t.pt")
    with pytest.raises(ValueError, match="reads 48x48 images with 1 channel"):
        load_teacher(tmp_path / "t.pt", 128, 1, scoring=tmp_path / "none.pt")


def test_the_teacher_loss_moves_the_image_not_the_teacher(tmp_path):
    tiny_teacher(tmp_path / "t.pt")
    teacher = load_teacher(tmp_path / "t.pt", 48, 1, scoring=tmp_path / "none.pt")
    x = torch.randn(4, 1, 48, 48).clamp(-1, 1).requires_grad_(True)
    loss = teacher_loss(teacher, x, torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())


def test_teacher_and_its_weight_go_together(tmp_path):
    with pytest.raises(ValueError, match="teacher and lambda_teacher go together"):
        TrainConfig(synthetic=16, out=str(tmp_path / "a"), teacher=str(tmp_path / "t.pt")).validate()
    with pytest.raises(ValueError, match="teacher and lambda_teacher go together"):
        TrainConfig(synthetic=16, out=str(tmp_path / "b"), lambda_teacher=1.0).validate()


def test_a_run_with_a_teacher_logs_its_loss_and_leaves_it_unchanged(tmp_path):
    tiny_teacher(tmp_path / "t.pt", seed=3)
    run = Trainer(TrainConfig(preset="fex-small-believable-flow", synthetic=16, out=str(tmp_path / "run"),
                              batch_size=4, max_steps=2, progress=False, threads=1, log_every=1,
                              teacher=str(tmp_path / "t.pt"), lambda_teacher=2.0))
    before = {k: v.clone() for k, v in run.teacher.state_dict().items()}
    run.fit()
    assert run.loss_cfg.lambda_teacher == 2.0
    rows = list(csv.DictReader(open(tmp_path / "run" / "scalars.csv")))
    values = [float(r["G/loss_teacher"]) for r in rows if r.get("G/loss_teacher")]
    assert values and all(v > 0 for v in values)
    assert all(torch.equal(before[k], v) for k, v in run.teacher.state_dict().items())
    assert not run.teacher.training



def test_a_negative_teacher_weight_is_refused():
    from fexsdk.training.presets import LossConfig

    with pytest.raises(ValueError, match="lambda_teacher must be >= 0, got -1"):
        LossConfig(lambda_teacher=-1.0).validate()
