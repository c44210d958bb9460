"""Evaluation metrics against hand-computed values, and `fex eval` end to end on tiny artefacts."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

from fexsdk.metadata import ONNX_KEY, ModelMetadata  # noqa: E402
from fexsdk.training.classifier import (ClassifierTrainConfig, ResNet18, confusion, export_classifier,  # noqa: E402
                                 load_classifier, train_classifier)
from fexsdk.training.data import FaceDataset  # noqa: E402
from fexsdk.training.evaluate import (accuracy, class_balanced_weights, evaluate, frechet_distance,  # noqa: E402
                                     markdown_table, per_class_accuracy)


def test_accuracy_and_confusion_on_a_fixed_example():
    labels = np.array([0, 0, 1, 3, 3, 3, 6])
    preds = np.array([0, 1, 1, 3, 3, 0, 6])
    assert accuracy(labels, preds) == pytest.approx(5 / 7)
    m = confusion(labels, preds)
    assert m[0, 0] == 1 and m[0, 1] == 1 and m[1, 1] == 1 and m[3, 3] == 2 and m[3, 0] == 1 and m[6, 6] == 1
    assert m.sum() == 7
    pc = per_class_accuracy(labels, preds)
    assert pc["angry"] == 0.5 and pc["happy"] == pytest.approx(2 / 3) and pc["neutral"] == 1.0
    assert np.isnan(pc["fear"])  # no fear images: undefined, not 0


def test_frechet_distance_of_known_gaussians():
    rng = np.random.default_rng(0)
    d, n = 4, 500
    z = rng.normal(size=(n, d))
    z -= z.mean(0)
    z = z @ np.linalg.inv(np.linalg.cholesky(np.cov(z, rowvar=False))).T  # exactly mean 0, covariance I
    mu = np.array([1.0, 2.0, 0.0, -1.0])
    assert frechet_distance(z, z) == pytest.approx(0.0, abs=1e-8)
    assert frechet_distance(z, z + mu) == pytest.approx(6.0)  # |mu|^2
    # N(0, I) vs N(mu, 4I): |mu|^2 + d * (1 + 4 - 2 * 2)
    assert frechet_distance(z, 2 * z + mu) == pytest.approx(6.0 + d)


def _identity_onnx(path):
    """An fexsdk model whose output is its input: the 'copies the input' failure mode."""
    from onnx import TensorProto, helper

    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 1, 48, 48])
    label = helper.make_tensor_value_info("label", TensorProto.FLOAT, ["batch", 7])
    out = helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 1, 48, 48])
    graph = helper.make_graph([helper.make_node("Identity", ["image"], ["output"])], "identity", [image, label], [out])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    entry = model.metadata_props.add()
    entry.key, entry.value = ONNX_KEY, ModelMetadata(preset="identity").to_json()
    onnx.save(model, path)
    return path


def test_identity_generator_scores(tmp_path):
    rng = np.random.default_rng(1)
    data = FaceDataset(rng.integers(0, 255, (20, 1, 48, 48), dtype=np.uint8), rng.integers(0, 7, 20), "tiny")
    clf = ResNet18().eval()
    result = evaluate(data, clf, str(_identity_onnx(tmp_path / "id.onnx")), seeds=[0, 1], progress=False)
    assert result.identity_self_l1 == 0.0 and result.identity_cycle_l1 == 0.0
    # Unchanged images match exactly one of the 7 targets each: 1/7, whatever the classifier says.
    assert result.accuracy_generated == pytest.approx(1 / 7)
    assert result.accuracy_generated_spread == 0.0
    assert result.seeds == [0]  # no dropout: a second seed would repeat the same images
    assert result.realism_fd == pytest.approx(0.0, abs=1e-3)


def test_mismatched_channels_are_a_clear_error(tmp_path):
    data = FaceDataset(np.zeros((4, 1, 48, 48), np.uint8), np.zeros(4, np.int64), "tiny")
    with pytest.raises(ValueError, match="classifier expects"):
        evaluate(data, ResNet18(in_channels=3), str(_identity_onnx(tmp_path / "id.onnx")), progress=False)


@pytest.fixture(scope="module")
def tiny_classifier(tmp_path_factory):
    from fexsdk.training.synthetic import make_synthetic

    root = tmp_path_factory.mktemp("clf")
    train, test = make_synthetic(96, seed=0), make_synthetic(32, seed=1)
    npz = root / "tiny.npz"
    np.savez(npz, images=np.concatenate([train.images, test.images])[:, 0],
             labels=np.concatenate([train.labels, test.labels]), usage=np.r_[np.zeros(96), np.ones(32)].astype(np.uint8))
    out = train_classifier(ClassifierTrainConfig(data=str(npz), out=str(root / "run"), epochs=2, batch_size=16,
                                                 progress=False, threads=1))
    path = export_classifier(out / "best.pt", root / "clf.safetensors", {"note": "test"})
    return path, npz


def test_classifier_export_round_trip(tiny_classifier):
    path, _ = tiny_classifier
    model = load_classifier(path)
    assert isinstance(model, ResNet18)
    assert json.loads(path.with_suffix(".json").read_text()) == {"note": "test"}
    with pytest.raises(FileNotFoundError):
        load_classifier(path.with_name("missing.safetensors"))


def test_fex_eval_end_to_end(tiny_classifier, tiny_onnx, tmp_path):
    clf, npz = tiny_classifier
    out = tmp_path / "tiny-run"
    cmd = [sys.executable, "-m", "fexsdk.cli", "eval", "--generator", str(tiny_onnx), "--classifier", str(clf),
           "--data", str(npz), "--seeds", "0", "1", "--out", str(out), "--name", "skip-dropout"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    res = json.loads((out / "results.json").read_text())
    assert res["n_images"] == 32 and res["seeds"] == [0, 1]
    assert 0 <= res["accuracy_generated"] <= 1 and res["realism_fd"] >= 0
    for name in ("results.md", "confusion_real.png", "confusion_generated.png"):
        assert (out / name).is_file()
    real = tmp_path / "real"
    proc = subprocess.run([sys.executable, "-m", "fexsdk.cli", "eval", "--classifier", str(clf), "--data", str(npz),
                           "--out", str(real)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    proc = subprocess.run([sys.executable, "-m", "fexsdk.cli", "eval", "--table", str(out), str(real)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[2].startswith("| real PublicTest") and lines[3].startswith("| skip-dropout")
    assert "72.828" in proc.stdout  # the paper's figure beside ours


def test_markdown_table_orders_rows_like_table2():
    from fexsdk.training.evaluate import EvalResult

    def row(name, gen):
        return EvalResult(name, gen, "", 1, [0], 0.5, {}, [], 0.4, 0.0, realism_fd=1.0, identity_self_l1=0.1,
                          identity_cycle_l1=0.2)

    text = markdown_table([row("skip-dropout", "b.onnx"), row("stargan", "a.onnx")])
    assert text.index("| stargan") < text.index("| skip-dropout")


def test_table2_budget_table_reads_training_speed(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "experiments"))  # outside the package
    from table2 import budget_table, training_speed

    run = tmp_path / "stargan"
    run.mkdir()
    (run / "scalars.csv").write_text("step,images_per_s\n50,100\n100,140\n150,150\n")
    assert training_speed(run) == 140.0
    assert np.isnan(training_speed(tmp_path / "missing"))
    table = budget_table(tmp_path, ["stargan", "missing"], 5.0)
    assert "| stargan | 5 | 140 |" in table and "| missing | 5 | nan |" in table


def test_evaluate_equals_a_plain_reference_computation(tiny_classifier, tiny_onnx):
    """The batched evaluation (noise drawn once per batch, self outputs reused) gives the plain loop's figures."""
    from fexsdk.backends import load_backend
    from fexsdk.training.classifier import predict, predict_with_features, to_input
    from fexsdk.training.evaluate import generated

    clf_path, npz = tiny_classifier
    data = np.load(npz)
    images, labels = data["images"][data["usage"] == 1][:, None], data["labels"][data["usage"] == 1]
    clf = load_classifier(clf_path)
    # batch 8 over 32 images: several batches, so the per-batch bookkeeping is exercised
    res = evaluate(FaceDataset(images, labels, "tiny"), clf, str(tiny_onnx), seeds=[0, 1], progress=False,
                   device="cpu", batch=8)

    backend, x = load_backend(tiny_onnx, device="cpu"), to_input(images).numpy()
    real_feats = predict_with_features(load_classifier(clf_path), torch.from_numpy(x))[1]
    accs, feats, cycles, selfs = [], [], [], []
    for seed in (0, 1):
        hits = []
        for k in range(7):
            fake = generated(backend, x, np.full(len(x), k), seed)
            hits.append(predict(load_classifier(clf_path), torch.from_numpy(fake)).argmax(1) == k)
            if seed == 0:
                feats.append(predict_with_features(load_classifier(clf_path), torch.from_numpy(fake))[1])
                cycles.append(np.abs(generated(backend, fake, labels, seed) - x).mean() / 2)
        accs.append(np.mean(hits))
        selfs.append(np.abs(generated(backend, x, labels, seed) - x).mean() / 2)
    assert res.accuracy_generated == pytest.approx(np.mean(accs), abs=1e-12)
    assert res.identity_cycle_l1 == pytest.approx(np.mean(cycles), rel=1e-5)
    assert res.identity_self_l1 == pytest.approx(np.mean(selfs), rel=1e-5)
    assert res.realism_fd == pytest.approx(frechet_distance(real_feats, np.concatenate(feats)), rel=1e-4, abs=1e-6)
    w = class_balanced_weights(labels)
    assert res.realism_fd_balanced == pytest.approx(frechet_distance(real_feats, np.concatenate(feats), w), rel=1e-4, abs=1e-6)


def test_balanced_fd_is_zero_for_real_faces_in_the_targets_equal_shares():
    """The generated set has every emotion in equal shares; the real one does not (FER2013: 1.6% disgust)."""
    rng = np.random.default_rng(0)
    means = rng.normal(0, 3, (7, 4))
    counts = np.array([400, 20, 400, 900, 600, 400, 600])
    labels = np.repeat(np.arange(7), counts)
    real = means[labels] + rng.normal(0, 1, (len(labels), 4))
    # A perfect generator: faces of each target exactly as real ones of that emotion, 500 per target.
    perfect = np.concatenate([means[k] + rng.normal(0, 1, (500, 4)) for k in range(7)])
    w = class_balanced_weights(labels)
    assert w.sum() == pytest.approx(1.0) and w[labels == 1].sum() == pytest.approx(1 / 7)
    assert frechet_distance(real, perfect, w) < 0.1
    assert frechet_distance(real, perfect) > 2.0  # the plain FD penalises reaching the rare targets
    # With weights all equal it is the plain FD.
    assert frechet_distance(real, perfect, np.ones(len(real))) == pytest.approx(frechet_distance(real, perfect))


def _fd_reference():
    import importlib.util

    from tests.conftest import REPO

    spec = importlib.util.spec_from_file_location("fd_reference", REPO / "benchmarks" / "fd_reference.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_fd_reference_generators_on_synthetic_classes():
    """benchmarks/fd_reference.py: copying scores 0, reaching every target costs the balanced FD."""
    ref = _fd_reference()
    rng = np.random.default_rng(1)
    counts = np.array([400, 20, 400, 900, 600, 400, 600])
    labels = np.repeat(np.arange(7), counts)
    feats = rng.normal(0, 3, (7, 4))[labels] + rng.normal(0, 1, (len(labels), 4))
    preds = labels.copy()
    preds[:100] = 3  # 100 angry faces read as happy: angry is 75% right, the rest 100%
    fds = [frechet_distance(feats, feats, ref.reach_weights(labels, b)) for b in (0.0, 0.5, 1.0)]
    assert fds[0] == pytest.approx(0.0, abs=1e-9)
    assert fds[0] < fds[1] < fds[2]
    assert fds[2] == pytest.approx(frechet_distance(feats, feats, class_balanced_weights(labels)))
    assert ref.reach_accuracy(labels, preds, 0.0) == pytest.approx(1 / 7)
    assert ref.reach_accuracy(labels, preds, 1.0) == pytest.approx((0.75 + 6) / 7)
    # 'mix' at natural shares: FD 0, disgust (20 of 3,320 faces) answered right 7 * 20/3320 of the time.
    w, acc, weakest = ref.mix_weights(preds, 0.0)
    assert frechet_distance(feats, feats, w) == pytest.approx(0.0, abs=1e-9)
    assert weakest == pytest.approx(7 * 20 / len(labels))
    w1, acc1, weakest1 = ref.mix_weights(preds, 1.0)
    assert acc1 == weakest1 == 1.0 and acc < acc1
    assert w1.sum() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="beta must be in"):
        ref.reach_weights(labels, 1.5)
